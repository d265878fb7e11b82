"""INT8 accuracy acceptance: export a model dir (FP32 + INT8) and compare the forms with the shared evaluator.

The FP32 ONNX model in the same run is the baseline; the target is an accuracy drop of at most 0.5 points and a
macro-F1 drop of at most 0.01. ``--compare-previous`` also quantizes the same FP32 model the way exports did before
(S8S8, 8-bit weights, every layer INT8) and scores it on the same maps, so the gain of 7-bit weights and the FP32 layers
chosen by sensitivity is measured in one run. Prints JSON (parity, metrics of every form, drops, FP32 layers, sizes).

Usage: python benchmarks/bench_int8.py --model MODEL_DIR --train TRAIN.npz --test TEST.npz --out EXPORT_DIR
       [--calibration-maps 256] [--calibration minmax|percentile|entropy] [--int8-format auto|s8s8|u8s8]
       [--reduce-range|--no-reduce-range] [--fp32-layers auto|none|NODES] [--int8-target-agreement 0.995]
       [--max-drop 0.005] [--max-f1-drop 0.01] [--prune 0.3] [--compare-previous]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def previous_default(export_dir: Path, train, test, spec, maps: int, fp32_overall: dict, threads: int) -> dict:
    """INT8 as exports made it before: S8S8 QDQ, 8-bit weights, no FP32 layers; scored on the same maps.

    (Before, the ReLU6 Clip nodes were also removed when possible, which S8S8's symmetric ranges never allow.)
    """
    from waferflow.evaluation import evaluate
    from waferflow.export.quantize import calibration_batches, quantize_int8
    from waferflow.predictors import FP32_NAME, onnx_predictor

    calib = list(calibration_batches(train, spec, maps, batch_size=32, seed=0))
    with tempfile.TemporaryDirectory(prefix="wf-int8-prev-") as td:
        out = Path(td) / "prev.int8.onnx"
        quantize_int8(export_dir / FP32_NAME, out, calib, reduce_range=False, int8_format="s8s8")
        m = evaluate(onnx_predictor(out, threads), test, spec, form="onnx_int8")["overall"]
    return {"metrics": m, "accuracy_drop_points": 100 * (fp32_overall["accuracy"] - m["accuracy"]),
            "macro_f1_drop": fp32_overall["macro_f1"] - m["macro_f1"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="training split (calibration maps are drawn from it)")
    ap.add_argument("--test", required=True, help="labeled test maps (parity and accuracy)")
    ap.add_argument("--out", required=True, help="export dir to write")
    ap.add_argument("--calibration-maps", type=int, default=256)
    ap.add_argument("--fp32-layers", default="auto", help="auto | none | comma-separated node names")
    ap.add_argument("--int8-format", choices=("auto", "s8s8", "u8s8"), default="auto")
    ap.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                    help="7-bit INT8 weights (default: unless this CPU has VNNI; 8-bit weights are exact only there)")
    ap.add_argument("--calibration", choices=("minmax", "percentile", "entropy"), default="minmax")
    ap.add_argument("--int8-target-agreement", type=float, default=0.995,
                    help="auto FP32 layers: stop when INT8 agrees with FP32 on this share of held-out training maps")
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--max-f1-drop", type=float, default=0.01)
    ap.add_argument("--prune", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-previous", action="store_true",
                    help="also score INT8 quantized the previous way (8-bit weights, no FP32 layers)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args(argv)

    import torch

    from waferflow.data.contract import load_dataset
    from waferflow.export import export_onnx
    from waferflow.models import read_spec
    from waferflow.predictors import FP32_NAME, INT8_NAME

    torch.set_num_threads(args.threads)
    train = load_dataset(args.train, require_labels=False)
    test = load_dataset(args.test, require_labels=True)
    layers = args.fp32_layers if args.fp32_layers in ("auto", "none") else args.fp32_layers.split(",")
    t0 = time.perf_counter()
    info = export_onnx(args.model, args.out, calib_ds=train, parity_ds=test, int8=True, fp32_layers=layers,
                       int8_format=args.int8_format, reduce_range=args.reduce_range,
                       calibration=args.calibration, int8_target_agreement=args.int8_target_agreement,
                       calibration_maps=args.calibration_maps, prune=args.prune, threads=args.threads)
    q = info["int8"]
    out = {
        "model": args.model, "test": args.test, "n_test": len(test), "calibration_maps": q["calibration_maps"],
        "parity": info["parity"], "metrics": {**info["metrics"], "onnx_int8": q["metrics"]},
        "int8_method": q["method"], "int8_format": q["format"], "reduce_range": q["reduce_range"],
        "int8_host": q["host"],
        "fallback_reason": q["fallback_reason"], "fp32_layers": q["fp32_layers"],
        "accuracy_drop_points": 100 * q["accuracy_drop"], "macro_f1_drop": q["macro_f1_drop"],
        "argmax_agreement_int8_vs_fp32": q["argmax_agreement_vs_fp32"],
        "prune": info["prune"], "sizes": info["sizes"],
        "size_ratio_int8_vs_fp32": info["sizes"][INT8_NAME] / info["sizes"][FP32_NAME],
        "acceptance": {"max_drop_points": 100 * args.max_drop, "drop_ok": q["accuracy_drop"] <= args.max_drop,
                       "max_macro_f1_drop": args.max_f1_drop, "f1_ok": q["macro_f1_drop"] <= args.max_f1_drop,
                       "parity_ok": info["parity"]["argmax_agreement"] >= 0.999},
    }
    if args.compare_previous:
        out["previous_default"] = previous_default(Path(args.out), train, test, read_spec(args.model),
                                                   args.calibration_maps, info["metrics"]["onnx_fp32"], args.threads)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    emit(out, args.json_out)
    a = out["acceptance"]
    return 0 if a["drop_ok"] and a["f1_ok"] and a["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
