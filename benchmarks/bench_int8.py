"""INT8 accuracy acceptance: export a model dir (FP32 + static INT8) and compare both with the shared evaluator.

The FP32 ONNX model in the same run is the baseline; the target is an accuracy drop of at most 0.5 points.
Prints JSON (parity, FP32/INT8 overall metrics, drops, timings, sizes).

Usage: python benchmarks/bench_int8.py --model MODEL_DIR --train TRAIN.npz --test TEST.npz --out EXPORT_DIR
       [--calibration-maps 256] [--max-drop 0.005] [--prune 0.3]
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--train", required=True, help="training split (calibration maps are drawn from it)")
    ap.add_argument("--test", required=True, help="labeled test maps (parity and accuracy)")
    ap.add_argument("--out", required=True, help="export dir to write")
    ap.add_argument("--calibration-maps", type=int, default=256)
    ap.add_argument("--max-drop", type=float, default=0.005)
    ap.add_argument("--prune", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from waferflow.data.contract import load_dataset
    from waferflow.export import export_onnx

    torch.set_num_threads(args.threads)
    train = load_dataset(args.train, require_labels=False)
    test = load_dataset(args.test, require_labels=True)
    t0 = time.perf_counter()
    info = export_onnx(args.model, args.out, calib_ds=train, parity_ds=test, int8=True,
                       calibration_maps=args.calibration_maps, prune=args.prune, threads=args.threads)
    q = info["int8"]
    out = {
        "model": args.model, "test": args.test, "n_test": len(test), "calibration_maps": q["calibration_maps"],
        "parity": info["parity"], "metrics": {**info["metrics"], "onnx_int8": q["metrics"]},
        "int8_method": q["method"], "fallback_reason": q["fallback_reason"],
        "accuracy_drop_points": 100 * q["accuracy_drop"], "macro_f1_drop": q["macro_f1_drop"],
        "argmax_agreement_int8_vs_fp32": q["argmax_agreement_vs_fp32"],
        "prune": info["prune"], "sizes": info["sizes"], "seconds": round(time.perf_counter() - t0, 1),
        "acceptance": {"max_drop_points": 100 * args.max_drop, "drop_ok": q["accuracy_drop"] <= args.max_drop,
                       "parity_ok": info["parity"]["argmax_agreement"] >= 0.999},
    }
    print(json.dumps(out, indent=2))
    return 0 if out["acceptance"]["drop_ok"] and out["acceptance"]["parity_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
