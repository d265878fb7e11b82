"""``waferflow export | bench latency | compile-trt``: the deployment artifacts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from waferflow.forms import FP32_NAME, INT8_NAME


def _data_pair(data: str | None, calib: str | None) -> tuple[str | None, str | None]:
    """``--data DIR`` (a split dir) means DIR/test.npz for parity and DIR/train.npz for calibration."""
    if data and Path(data).is_dir():
        d = Path(data)
        return str(d / "test.npz"), calib or str(d / "train.npz")
    return data, calib


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``export``, ``bench`` and ``compile-trt`` to the ``waferflow`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "export", help="export a model dir to ONNX FP32 (+ INT8) with a parity check", formatter_class=fmt,
        description=f"Export to DIR/{FP32_NAME} (opset >= 17, dynamic batch, metadata), check parity against PyTorch\n"
                    f"on real maps (fails beyond tolerance), quantize to DIR/{INT8_NAME} (static QDQ per-channel in the\n"
                    "format this CPU computes exactly and fastest: U8S8 8-bit with VNNI, S8S8 7-bit without; calibrated\n"
                    "on training maps, the most quantization-sensitive layers kept in FP32;\n"
                    "dynamic as a recorded fallback) and write DIR/export.json.",
        epilog="example: waferflow export --model runs/m1 --data data/split --out runs/m1/export\n"
               "         (a split dir means test.npz for parity and train.npz for calibration)",
    )
    p.add_argument("--model", required=True, help="model dir")
    p.add_argument("--out", required=True, help="export dir to write (replaced when it exists)")
    p.add_argument("--data", required=True, help="test maps .npz for parity (or a split dir with test/train.npz)")
    p.add_argument("--calib", help="training-split maps .npz for INT8 calibration")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help=f"also write {INT8_NAME} (default on)")
    p.add_argument("--int8-method", choices=("static", "dynamic"), default="static")
    p.add_argument("--calibration", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="activation-range calibration of static INT8 (default minmax)")
    p.add_argument("--calibration-maps", type=int, default=256, help="calibration maps (default 256)")
    p.add_argument("--fp32-layers", default="auto",
                   help="layers kept in FP32 in the INT8 model: auto (by measured sensitivity, the default), none, "
                        "or comma-separated node names (e.g. a previous export.json's int8.fp32_layers.nodes)")
    p.add_argument("--int8-target-agreement", type=float, default=0.995,
                   help="auto FP32 layers: stop when INT8 agrees with FP32 on this share of held-out training maps")
    p.add_argument("--int8-format", choices=("auto", "s8s8", "u8s8"), default="auto",
                   help="auto (default): u8s8 with 8-bit weights on an x86 CPU with VNNI (exact, about 2x faster "
                        "than ONNX FP32), s8s8 with 7-bit weights elsewhere; s8s8: symmetric int8 activations; "
                        "u8s8: asymmetric uint8 activations")
    p.add_argument("--reduce-range", action=argparse.BooleanOptionalAction, default=None,
                   help="7-bit INT8 weights, exact on every CPU (default: on unless this CPU has VNNI; a model with "
                        "8-bit weights is refused on an x86 CPU without VNNI, where it would compute wrongly)")
    p.add_argument("--prune", type=float, default=None, help="L1 magnitude pruning amount in (0, 1) before export")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--exporter", choices=("torchscript", "dynamo"), default="torchscript")
    p.add_argument("--min-agreement", type=float, default=0.999, help="parity: min argmax agreement")
    p.add_argument("--max-rel-diff", type=float, default=1e-3,
                   help="parity: max |logit diff| / max(1, max |logit|) (default 1e-3)")
    p.add_argument("--max-abs-diff", type=float, default=None, help="parity: optional bound on max |logit diff|")
    p.add_argument("--tta", action="store_true",
                   help="also write model.tta.onnx (and model.int8.tta.onnx): test-time augmentation over the "
                        "model's training symmetries inside the ONNX graph (forms onnx_fp32_tta / onnx_int8_tta)")
    p.add_argument("--tta-rotations", type=float, nargs="+", default=(), metavar="DEG",
                   help="with --tta: also average those views of each map turned by each angle, as training's free "
                        "rotation turns maps (the real profile: 45; needs rot90 among the model's symmetries)")
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=run_export)

    b = sub.add_parser("bench", help="benchmarks (latency)", formatter_class=fmt)
    bsub = b.add_subparsers(dest="bench_command", metavar="BENCH")
    bsub.required = True
    lat = bsub.add_parser(
        "latency", help="single-map p50/p95/p99 and batch throughput per model form", formatter_class=fmt,
        description="Time PyTorch eager FP32, ONNX Runtime FP32 and INT8 (and TensorRT engines on CUDA) in one run,\n"
                    "each form alone in its own process (one after the other, so no other form's thread pool\n"
                    "competes), with fixed thread counts. --interleaved times them round-robin in one process\n"
                    "instead (their pools then compete and every figure is inflated). JSON on stdout; also written\n"
                    "to EXPORT/latency.json (or --out).",
        epilog="example: waferflow bench latency --model runs/m1 --export runs/m1/export --threads 2",
    )
    lat.add_argument("--model", required=True, help="model dir (the PyTorch baseline)")
    lat.add_argument("--export", help=f"export dir with {FP32_NAME} / {INT8_NAME}")
    lat.add_argument("--trt", help="compile-trt output dir (timed only on CUDA)")
    lat.add_argument("--threads", type=int, default=2)
    lat.add_argument("--warmup", type=int, default=20)
    lat.add_argument("--iters", type=int, default=200)
    lat.add_argument("--batch", type=int, default=64)
    lat.add_argument("--rounds", type=int, default=1,
                     help="repeat the sequence of forms N times and pool the samples (default 1)")
    lat.add_argument("--forms", help="comma-separated forms to time (default: every form present)")
    lat.add_argument("--interleaved", action="store_true",
                     help="time all forms round-robin in this one process (the old, inflated measurement)")
    lat.add_argument("--out", help="write the JSON here (default EXPORT/latency.json when --export is given)")
    lat.set_defaults(func=run_bench_latency)

    t = sub.add_parser(
        "compile-trt", help="build TensorRT FP16/INT8 engines (skipped without CUDA)", formatter_class=fmt,
        description=f"Build TensorRT engines (dynamic-batch profile): FP16 from EXPORT/{FP32_NAME}, INT8 from the Q/DQ\n"
                    f"model EXPORT/{INT8_NAME} when it has symmetric INT8 activations, else from one quantized for\n"
                    "TensorRT with --calib maps (OUT/model.int8.tensorrt.onnx); then evaluate and time them. Without\n"
                    "a CUDA device (or the tensorrt package) it records 'skipped: ...' in OUT/tensorrt.json, writes\n"
                    "no engine, exits 0.",
        epilog="example: waferflow compile-trt --export runs/m1/export --out runs/m1/trt --calib data/split/train.npz",
    )
    t.add_argument("--export", required=True, help=f"export dir ({FP32_NAME})")
    t.add_argument("--out", required=True, help="output dir for engines and tensorrt.json")
    t.add_argument("--precision", choices=("fp16", "int8", "both"), default="both")
    t.add_argument("--calib", help="training-split maps .npz, to quantize an INT8 model for TensorRT when the "
                   f"export's {INT8_NAME} has asymmetric (UINT8) activations")
    t.add_argument("--data", help="labeled test maps .npz to evaluate the engines")
    t.add_argument("--model", help="model dir, to time the engines against PyTorch and ONNX Runtime")
    t.add_argument("--calibration-maps", type=int, default=512, help="maps of --calib that quantize it")
    t.add_argument("--profile", default="1,32,256", help="min,opt,max batch of the optimization profile")
    t.set_defaults(func=run_compile_trt)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``waferflow export``."""
    from waferflow.data.contract import load_dataset
    from waferflow.export import export_onnx

    data, calib = _data_pair(args.data, args.calib)
    parity_ds = load_dataset(data, require_labels=args.int8)
    calib_ds = load_dataset(calib) if (calib and args.int8) else None
    info = export_onnx(args.model, args.out, calib_ds=calib_ds, parity_ds=parity_ds, int8=args.int8,
                       calibration_maps=args.calibration_maps, prune=args.prune, opset=args.opset,
                       exporter=args.exporter, int8_method=args.int8_method, calibration=args.calibration,
                       fp32_layers=(args.fp32_layers if args.fp32_layers in ("auto", "none")
                                    else [n for n in args.fp32_layers.split(",") if n]),
                       reduce_range=args.reduce_range, int8_target_agreement=args.int8_target_agreement,
                       int8_format=args.int8_format,
                       min_agreement=args.min_agreement,
                       max_rel_diff=args.max_rel_diff, max_abs_diff=args.max_abs_diff, threads=args.threads,
                       tta=args.tta, tta_rotations=args.tta_rotations)
    print(json.dumps({k: info[k] for k in ("parity", "int8", "prune", "tta", "sizes", "metrics")}, indent=2))
    return 0


def run_bench_latency(args: argparse.Namespace) -> int:
    """Handler of ``waferflow bench latency``."""
    from waferflow.config import atomic_write_json
    from waferflow.export import bench_latency

    res = bench_latency(args.model, args.export, threads=args.threads, warmup=args.warmup, iters=args.iters,
                        batch=args.batch, trt_dir=args.trt, isolate=not args.interleaved, rounds=args.rounds,
                        forms=[f for f in args.forms.split(",") if f] if args.forms else None)
    out = args.out or (str(Path(args.export) / "latency.json") if args.export else None)
    if out:
        atomic_write_json(out, res)
    print(json.dumps(res, indent=2))
    return 0


def run_compile_trt(args: argparse.Namespace) -> int:
    """Handler of ``waferflow compile-trt``."""
    from waferflow.data.contract import load_dataset
    from waferflow.errors import ConfigError
    from waferflow.export import compile_trt

    try:
        profile = tuple(int(v) for v in args.profile.split(","))
        assert len(profile) == 3
    except (ValueError, AssertionError):
        raise ConfigError(f"--profile must be three integers min,opt,max; got {args.profile!r}") from None
    calib = load_dataset(args.calib) if args.calib else None
    data = load_dataset(args.data, require_labels=True) if args.data else None
    res = compile_trt(args.export, args.out, precision=args.precision, calib_ds=calib, eval_ds=data,
                      calibration_maps=args.calibration_maps, profile=profile, model_dir=args.model)
    print(json.dumps(res, indent=2))
    return 0
