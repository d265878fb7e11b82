"""GPU check: the project's CUDA paths in one short run; prints JSON (and writes it to --out).

On a CUDA machine (``scripts/gpu_check.sh``):
  1. **training** through the project's own loop (``waferflow.train.train``: adaptive BN, bf16 autocast,
     channels-last, early stopping, checkpoints) on ``--device`` (default ``cuda``): tf_efficientnet_lite0 from the
     offline ImageNet weights, ``full_finetune`` on synthetic WM-811K-taxonomy maps, a budget of ``--steps``
     optimizer steps; the baseline in the same run is the same config for ``--cpu-steps`` steps on this machine's
     CPU (throughput in maps/s, so the speed-up is measured, not assumed);
  2. **evaluation** of the trained model with torch on the device and on the CPU (accuracy, argmax agreement,
     largest logit difference), and self-training's pseudo-labelling teacher on the device;
  3. **export** to ONNX FP32 + INT8 (the export's parity check on the test maps);
  4. **TensorRT**: an FP16 engine from ``model.onnx`` and an INT8 engine from the QDQ INT8 model, both evaluated on
     the test maps and timed. Without a CUDA device or without the ``tensorrt`` package this part records
     ``skipped: ...`` with the reason; nothing is faked.

``--device cpu`` rehearses the whole script on a machine without a GPU (the JSON says ``device: cpu``).
Without CUDA and without ``--device cpu`` it prints ``{"status": "skipped: no CUDA device"}`` and exits 3.

Usage: python scripts/gpu_check.py [--out DIR] [--n 6000] [--steps 600] [--cpu-steps 60] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def split(n: int, size: int):
    """Synthetic WM-811K-taxonomy maps: 70/10/20 train/val/test."""
    import numpy as np

    from waferflow.data.synth import generate

    ds = generate(n, size=size, seed=0, taxonomy="wm811k")
    idx = np.random.default_rng(0).permutation(len(ds))
    n_tr, n_va = int(0.7 * len(ds)), int(0.1 * len(ds))
    return ds.subset(idx[:n_tr]), ds.subset(idx[n_tr:n_tr + n_va]), ds.subset(idx[n_tr + n_va:])


def train_on(device: str, steps: int, train, val, out: Path, weights: str) -> dict:
    """One ``full_finetune`` training through ``waferflow.train.train`` on ``device``; its summary."""
    import torch

    from waferflow.train import TrainConfig, train as train_model

    cfg = TrainConfig(strategy="full_finetune", pretrained=weights, input_size=64, steps=steps, patience=0,
                      adapt_bn=True, device=device, batch_size=64, num_threads=0)
    t0 = time.perf_counter()
    res = train_model(cfg, train, val, out)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"device": device, "steps": steps, "epochs_run": len(res.history),
            "seconds": round(time.perf_counter() - t0, 1), "train_seconds": round(res.train_seconds, 1),
            "throughput_maps_per_s": round(res.throughput_maps_per_s, 1),
            "val_accuracy": round(res.best_val["accuracy"], 4), "val_macro_f1": round(res.best_val["macro_f1"], 4),
            "adapt_bn": res.spec.extra.get("train", {}).get("adapt_bn"),
            "model_dir": str(res.model_dir)}


def device_vs_cpu(model_dir: Path, test, device: str) -> dict:
    """The same weights run with torch on ``device`` and on the CPU: metrics of each and their agreement."""
    import numpy as np

    from waferflow.evaluation import metrics_from_logits
    from waferflow.models import load_model_dir
    from waferflow.predictors import create_predictor, predict_dataset

    model, spec = load_model_dir(model_dir)
    logits = {d: predict_dataset(create_predictor("torch", model_dir, device=d), test, spec, 256, desc=f"torch {d}")
              for d in dict.fromkeys((device, "cpu"))}
    a, b = logits[device], logits["cpu"]
    return {**{f"torch_{d}": metrics_from_logits(test.labels, z, list(spec.class_names))["overall"]
               for d, z in logits.items()},
            "argmax_agreement": float((a.argmax(1) == b.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(a - b).max()), "params": int(sum(p.numel() for p in model.parameters()))}


def pseudo_labels_on(device: str, model_dir: Path, unlabeled, labeled) -> dict:
    """Self-training's teacher on ``device`` (TTA, caps); the pool's hidden labels only score the result."""
    from waferflow.train.selftrain import pseudo_label

    t0 = time.perf_counter()
    _, report = pseudo_label(model_dir, unlabeled, labeled, threshold=0.9, device=device)
    return {**{k: report.get(k) for k in ("engine", "kept", "unlabeled_maps", "tta_views", "pseudo_label_accuracy")},
            "seconds": round(time.perf_counter() - t0, 1)}


def tensorrt_part(model_dir: Path, out: Path, train, test, iters: int) -> dict:
    """TensorRT engines (FP16 from model.onnx, INT8 from the QDQ model), evaluated and timed; or why not."""
    from waferflow.export import bench_latency, compile_trt

    res = compile_trt(out / "export", out / "trt", precision="both", calib_ds=train, eval_ds=test, bench=False)
    if not res["status"].startswith("built"):
        return {"status": res["status"], "reason": res.get("reason")}
    latency = bench_latency(model_dir, out / "export", threads=2, iters=iters, trt_dir=out / "trt")
    return {"status": res["status"], "tensorrt": res["engines"]["fp16"].get("tensorrt_version"),
            "engines": {p: {k: e.get(k) for k in ("engine", "source_onnx", "qdq", "build_seconds", "size_bytes")}
                        for p, e in res["engines"].items()},
            "metrics": res.get("metrics"),
            "latency": {k: {m: v.get(m) for m in ("p50_ms", "p99_ms", "throughput_maps_per_s", "skipped")}
                        for k, v in latency["forms"].items()}}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--n", type=int, default=6000, help="synthetic maps to generate (train/val/test split)")
    ap.add_argument("--steps", type=int, default=600, help="optimizer steps of the device training")
    ap.add_argument("--cpu-steps", type=int, default=60, help="steps of the CPU baseline training (0: none)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a rehearsal without a GPU)")
    ap.add_argument("--weights", default="offline")
    ap.add_argument("--iters", type=int, default=200, help="timed single-map calls per form")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from waferflow.export import export_onnx
    from waferflow.host import describe_host

    if args.device == "cuda" and not torch.cuda.is_available():
        print(json.dumps({"status": "skipped: no CUDA device", "reason": "torch.cuda.is_available() is False"}))
        return 3
    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, val, test = split(args.n, 64)
    result: dict = {"status": "ok", "device": args.device, "host": describe_host(args.device),
                    "torch": torch.__version__, "n_train_val_test": [len(train), len(val), len(test)]}
    result["training"] = train_on(args.device, args.steps, train, val, out / "model", args.weights)
    if args.cpu_steps and args.device != "cpu":
        base = train_on("cpu", args.cpu_steps, train, val, out / "model_cpu", args.weights)
        result["training_cpu_baseline"] = base
        result["training_speedup_maps_per_s"] = round(
            result["training"]["throughput_maps_per_s"] / max(base["throughput_maps_per_s"], 1e-9), 1)
    model_dir = out / "model"
    result["evaluation"] = device_vs_cpu(model_dir, test, args.device)
    result["pseudo_labels"] = pseudo_labels_on(args.device, model_dir, test, train)
    export = export_onnx(model_dir, out / "export", calib_ds=train, parity_ds=test, calibration_maps=256)
    result["export"] = {"parity": export["parity"], "onnx_fp32": export["metrics"]["onnx_fp32"],
                        "int8": {k: export["int8"].get(k) for k in ("method", "format", "accuracy_drop")}}
    result["tensorrt"] = tensorrt_part(model_dir, out, train, test, args.iters)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(result, indent=2, default=str)
    (out / "gpu_check.json").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
