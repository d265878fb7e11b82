"""INT8 variants of one exported model, side by side (the table in docs/DEPLOYMENT.md).

Quantizes the FP32 ``model.onnx`` of an export dir with onnxruntime static QDQ in several ways and measures each
INT8 model's accuracy drop against the FP32 ONNX model on the same maps (the baseline, in the same run):
calibration method and size, moving-average calibration, asymmetric activations, and nodes kept in FP32 (chosen by
operator type or by ``onnxruntime.quantization.qdq_loss_debug``'s per-tensor signal-to-quantization-noise ratio).
Prints one JSON object.

    python benchmarks/bench_int8_variants.py --model RUN/select-best/best --export RUN/export-model/onnx \
        --train RUN/split-data/train/data.npz --test RUN/split-data/test/data.npz [--extra-maps 3500]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model dir (its spec gives the preprocessing)")
    ap.add_argument("--export", required=True, help="export dir holding model.onnx")
    ap.add_argument("--train", required=True, help="training split .npz (calibration maps)")
    ap.add_argument("--test", required=True, help="labeled test maps .npz")
    ap.add_argument("--extra-maps", type=int, default=0,
                    help="add N fresh synthetic maps of the model's taxonomy (seed 777) to the evaluation maps")
    ap.add_argument("--taxonomy", default="seed20")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    os.environ.setdefault("WAFERFLOW_PROGRESS", "0")

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching,
        modify_model_output_intermediate_tensors,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from waferflow.data.contract import concat_datasets, load_dataset
    from waferflow.data.synth import generate
    from waferflow.predictors import FP32_NAME, onnx_predictor, predict_dataset
    from waferflow.export.quantize import _reader, calibration_batches
    from waferflow.models import read_spec

    spec = read_spec(args.model)
    train, test = load_dataset(args.train), load_dataset(args.test, require_labels=True)
    if args.extra_maps:
        test = concat_datasets([test, generate(args.extra_maps, size=int(test.map_shapes()[0][0]), seed=777,
                                               taxonomy=args.taxonomy)])
    y = test.labels
    fp32 = predict_dataset(onnx_predictor(Path(args.export) / FP32_NAME), test, spec, 256)
    acc32 = float((fp32.argmax(1) == y).mean())
    td = Path(tempfile.mkdtemp(prefix="wf-int8-variants-"))
    pre = str(td / "pre.onnx")
    quant_pre_process(str(Path(args.export) / FP32_NAME), pre, skip_symbolic_shape=False)
    calib = {n: list(calibration_batches(train, spec, n, batch_size=32, seed=0)) for n in (256, 1024)}

    def run(name: str, maps: int = 256, exclude=(), symmetric: bool = True, act=QuantType.QInt8,
            method=CalibrationMethod.MinMax, extra: dict | None = None) -> dict:
        out = td / f"{len(rows)}.onnx"
        quantize_static(pre, str(out), _reader(calib[maps], "input"), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=act, weight_type=QuantType.QInt8,
                        calibrate_method=method, nodes_to_exclude=list(exclude),
                        extra_options={"ActivationSymmetric": symmetric, **(extra or {})})
        lg = predict_dataset(onnx_predictor(out), test, spec, 256)
        row = {"variant": name, "fp32_nodes": len(exclude),
               "accuracy_drop_points": round(100 * (acc32 - float((lg.argmax(1) == y).mean())), 3),
               "argmax_agreement_vs_fp32": round(float((lg.argmax(1) == fp32.argmax(1)).mean()), 4),
               "size_mb": round(out.stat().st_size / 1e6, 2)}
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
        return row

    graph = onnx.load(pre).graph
    convs = [n for n in graph.node if n.op_type == "Conv"]
    depthwise = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    stem, head_conv = convs[0].name, convs[-1].name
    classifier = [n.name for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    rows: list[dict] = []
    run("default: symmetric QInt8, per-channel, MinMax, 256 maps")
    run("MinMax, 1024 maps", maps=1024)
    run("entropy", method=CalibrationMethod.Entropy)
    run("percentile 99.999", method=CalibrationMethod.Percentile)
    run("MinMax, moving average", extra={"CalibMovingAverage": True})
    run("asymmetric QInt8 activations", symmetric=False)
    run("asymmetric QUInt8 activations", symmetric=False, act=QuantType.QUInt8)
    run("depthwise convs in FP32", exclude=depthwise)
    run("stem + classifier in FP32", exclude=[stem, *classifier])
    run("stem, classifier, head conv, depthwise in FP32", exclude=[stem, *classifier, head_conv, *depthwise])

    # per-tensor error of the default INT8 model (two calibration batches), worst Conv outputs first
    modify_model_output_intermediate_tensors(pre, str(td / "aug_f.onnx"))
    quantize_static(pre, str(td / "q.onnx"), _reader(calib[256], "input"), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": True})
    modify_model_output_intermediate_tensors(str(td / "q.onnx"), str(td / "aug_q.onnx"))
    err = compute_activation_error(create_activation_matching(
        collect_activations(str(td / "aug_q.onnx"), _reader(calib[256][:2], "input")),
        collect_activations(str(td / "aug_f.onnx"), _reader(calib[256][:2], "input"))))
    producer = {o: n.name for n in convs for o in n.output}
    worst = sorted((v["qdq_err"], producer[k]) for k, v in err.items() if k in producer)[:4]
    for k in (1, 2, 3, 4):
        run(f"{k} worst-SQNR conv(s) in FP32", exclude=[n for _, n in worst[:k]])
    emit({"benchmark": "int8_variants", "eval_maps": int(len(y)), "fp32_accuracy": acc32,
          "worst_sqnr_convs_db": [[n, round(float(s), 1)] for s, n in worst], "variants": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
