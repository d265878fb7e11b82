"""Latency acceptance: PyTorch eager FP32 (the baseline), ONNX Runtime FP32 and INT8, each form timed alone.

Every form runs in its own process, one after the other (``waferflow bench latency``'s default), ``--rounds``
times, samples pooled. Prints JSON: the full result plus an ``acceptance`` block: INT8 single-map p50 at most the
ONNX FP32 p50, INT8 p99 at least 5x faster than PyTorch eager, INT8 file at most 1/3 of the FP32 file, and the
margin of the INT8 p99 against the 50 ms production requirement. ``--also-interleaved`` adds the old round-robin
measurement (all forms in one process) from the same run, to show how much it inflates each figure.

Usage: python benchmarks/bench_latency.py --model MODEL_DIR --export EXPORT_DIR [--threads 2] [--iters 300]
       [--rounds 3] [--also-interleaved]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

REQUIREMENT_MS = 50.0


def acceptance(forms: dict, size_ratio: float) -> dict:
    """The acceptance block of one isolated result."""
    eager, fp32, int8 = forms["torch_eager"], forms["onnx_fp32"], forms["onnx_int8"]
    speedup = eager["p99_ms"] / int8["p99_ms"]
    return {
        "int8_p50_ms": int8["p50_ms"], "fp32_p50_ms": fp32["p50_ms"],
        "int8_p50_vs_fp32": int8["p50_ms"] / fp32["p50_ms"], "int8_not_slower_than_fp32": int8["p50_ms"] <= fp32["p50_ms"],
        "int8_throughput_vs_fp32": int8["throughput_maps_per_s"] / fp32["throughput_maps_per_s"],
        "int8_p99_speedup_vs_torch": speedup, "int8_p99_speedup_target": 5.0, "speedup_ok": speedup >= 5.0,
        "int8_size_ratio": size_ratio, "int8_size_ratio_target": 1 / 3, "size_ok": size_ratio <= 1 / 3,
        "int8_p99_ms": int8["p99_ms"], "requirement_ms": REQUIREMENT_MS,
        "margin_x_vs_requirement": REQUIREMENT_MS / int8["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--also-interleaved", action="store_true",
                    help="also time the forms round-robin in one process (the old measurement) in the same run")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import os

    from waferflow.export import bench_latency

    os.environ.setdefault("WAFERFLOW_PROGRESS", "0")
    kw = dict(threads=args.threads, warmup=args.warmup, iters=args.iters, batch=args.batch)
    res = bench_latency(args.model, args.export, rounds=args.rounds, **kw)
    res["acceptance"] = acceptance(res["forms"], res["size_ratio_int8_vs_fp32"])
    if args.also_interleaved:
        inter = bench_latency(args.model, args.export, isolate=False, **kw)
        res["interleaved"] = {k: {m: v[m] for m in ("p50_ms", "p99_ms", "throughput_maps_per_s")}
                              for k, v in inter["forms"].items() if "p50_ms" in v}
        res["interleaved_inflation_p50"] = {k: v["p50_ms"] / res["forms"][k]["p50_ms"]
                                            for k, v in res["interleaved"].items()}
    res["load_average"] = list(os.getloadavg())
    emit(res, args.out)
    a = res["acceptance"]
    return 0 if a["speedup_ok"] and a["size_ok"] and a["int8_not_slower_than_fp32"] else 1


if __name__ == "__main__":
    sys.exit(main())
