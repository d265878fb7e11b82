"""GPU check: build, evaluate and time TensorRT FP16/INT8 engines in one short run; prints JSON.

On a CUDA machine with tensorrt installed:
  1. takes --model DIR, or builds one quickly: tf_efficientnet_lite0 (offline ImageNet weights, --weights) at
     64 px, fine-tuned for --epochs epochs on synthetic maps on the GPU;
  2. exports ONNX FP32 + INT8 (parity check on the test maps);
  3. compiles TensorRT FP16 and INT8 engines (entropy calibrator on training maps; cache beside the engine);
  4. evaluates every form with the shared evaluator and times them with the shared latency bench.
Without CUDA or tensorrt it prints {"status": "skipped: no CUDA device", ...} and exits 3 (nothing to check).

Usage: python scripts/gpu_check.py [--model DIR] [--out DIR] [--n 3000] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def quick_model(out: Path, train, val, epochs: int, weights: str) -> Path:
    """Fine-tune Lite0 on the GPU for a few epochs (bf16 autocast) and save a model dir."""
    import torch

    from waferflow.evaluation import evaluate
    from waferflow.models import create_model, preprocess, save_model_dir
    from waferflow.predictors import torch_predictor

    model, spec = create_model("tf_efficientnet_lite0", train.num_classes, pretrained=weights, input_size=64,
                               class_names=train.class_names)
    model = model.cuda().to(memory_format=torch.channels_last)
    x = torch.from_numpy(preprocess(train.resized(64), spec)).cuda()
    y = torch.from_numpy(train.labels).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    steps = epochs * ((len(x) + 127) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), device="cuda")
        for i in range(0, len(x), 128):
            b = perm[i:i + 128]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(x[b]), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model = model.eval().float().to(memory_format=torch.contiguous_format)
    val_acc = evaluate(torch_predictor(model, "cuda"), val, spec)["overall"]["accuracy"]
    print(f"quick model: val accuracy {val_acc:.4f}", file=sys.stderr)
    return save_model_dir(model.cpu(), spec.replace(strategy="gpu_check_quick_finetune"), out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="an existing model dir (default: build one quickly)")
    ap.add_argument("--out", default="gpu_check_out")
    ap.add_argument("--n", type=int, default=3000, help="synthetic maps to generate (train/val/test split)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--weights", default="offline")
    ap.add_argument("--iters", type=int, default=200)
    args = ap.parse_args(argv)

    from waferflow.export.trt import SKIP_NO_CUDA, cuda_status

    ok, why = cuda_status()
    if not ok:
        print(json.dumps({"status": SKIP_NO_CUDA, "reason": why}))
        return 3

    import numpy as np
    import torch

    from waferflow.data.synth import generate
    from waferflow.evaluation import evaluate
    from waferflow.export import bench_latency, compile_trt, export_onnx
    from waferflow.models import load_model_dir
    from waferflow.predictors import create_predictor

    t0 = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = generate(args.n, size=64, seed=0)
    idx = np.random.default_rng(0).permutation(len(ds))
    n_tr, n_va = int(0.7 * len(ds)), int(0.1 * len(ds))
    train, val, test = ds.subset(idx[:n_tr]), ds.subset(idx[n_tr:n_tr + n_va]), ds.subset(idx[n_tr + n_va:])
    model_dir = Path(args.model) if args.model else quick_model(out / "model", train, val, args.epochs, args.weights)
    t_model = time.perf_counter() - t0

    export = export_onnx(model_dir, out / "export", calib_ds=train, parity_ds=test, calibration_maps=256)
    trt_res = compile_trt(out / "export", out / "trt", precision="both", calib_ds=train, eval_ds=test,
                          calibration_maps=512, bench=False)
    model, spec = load_model_dir(model_dir)
    metrics = {
        "torch_cuda": evaluate(create_predictor("torch", model, device="cuda"), test, spec, form="torch_cuda")["overall"],
        "onnx_fp32_cpu": export["metrics"]["onnx_fp32"],
        "onnx_int8_cpu": export["int8"]["metrics"],
        **(trt_res.get("metrics") or {}),
    }
    try:
        metrics["onnx_fp32_cuda"] = evaluate(create_predictor("onnx_fp32", out / "export", device="cuda"),
                                             test, spec, form="onnx_fp32_cuda")["overall"]
    except Exception as e:  # onnxruntime-gpu may be absent from the image; say so instead of hiding it
        metrics["onnx_fp32_cuda"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    latency = bench_latency(model_dir, out / "export", threads=2, iters=args.iters, trt_dir=out / "trt")
    result = {
        "status": "ok", "device": torch.cuda.get_device_name(0), "tensorrt": trt_res["engines"]["fp16"].get(
            "tensorrt_version"), "n_test": len(test), "model_seconds": round(t_model, 1),
        "parity": export["parity"], "int8_onnx": {k: export["int8"][k] for k in ("method", "accuracy_drop")},
        "engines": {p: {k: e.get(k) for k in ("engine", "build_seconds", "size_bytes", "calibration")}
                    for p, e in trt_res["engines"].items()},
        "metrics": metrics,
        "trt_accuracy_drop_vs_torch": {k: metrics["torch_cuda"]["accuracy"] - v["accuracy"]
                                       for k, v in metrics.items() if k.startswith("tensorrt_")},
        "latency": {k: {m: v.get(m) for m in ("p50_ms", "p99_ms", "throughput_maps_per_s", "size_bytes", "skipped")}
                    for k, v in latency["forms"].items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    # second build reuses the INT8 calibration cache written beside the engine
    again = compile_trt(out / "export", out / "trt", precision="int8", calib_ds=None, bench=False)
    result["int8_rebuild_from_cache"] = again["engines"]["int8"].get("calibration")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
