"""Latency acceptance: ONNX Runtime INT8 vs PyTorch eager FP32 (the baseline), measured in the same run.

Prints JSON: the full `waferflow bench latency` result plus an ``acceptance`` block:
INT8 single-map p99 at least 5x faster than PyTorch eager, INT8 file at most 1/3 of the FP32 file, and the
margin of the INT8 p99 against the 50 ms production requirement.

Usage: python benchmarks/bench_latency.py --model MODEL_DIR --export EXPORT_DIR [--threads 2] [--iters 200]
"""

from __future__ import annotations

import argparse
import json
import sys

REQUIREMENT_MS = 50.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--export", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)

    from waferflow.export import bench_latency

    res = bench_latency(args.model, args.export, threads=args.threads, warmup=args.warmup, iters=args.iters,
                        batch=args.batch)
    f = res["forms"]
    speedup = f["torch_eager"]["p99_ms"] / f["onnx_int8"]["p99_ms"]
    ratio = res["size_ratio_int8_vs_fp32"]
    res["acceptance"] = {
        "int8_p99_speedup_vs_torch": speedup, "int8_p99_speedup_target": 5.0, "speedup_ok": speedup >= 5.0,
        "int8_size_ratio": ratio, "int8_size_ratio_target": 1 / 3, "size_ok": ratio <= 1 / 3,
        "int8_p99_ms": f["onnx_int8"]["p99_ms"], "requirement_ms": REQUIREMENT_MS,
        "margin_x_vs_requirement": REQUIREMENT_MS / f["onnx_int8"]["p99_ms"],
        "torch_p99_margin_x_vs_requirement": REQUIREMENT_MS / f["torch_eager"]["p99_ms"],
    }
    print(json.dumps(res, indent=2))
    return 0 if res["acceptance"]["speedup_ok"] and res["acceptance"]["size_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
