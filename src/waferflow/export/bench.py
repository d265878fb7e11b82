"""Latency benchmark: every form side by side in one run, iterations interleaved round-robin."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from waferflow.errors import ConfigError
from waferflow.config import progress_enabled
from waferflow.evaluation import onnx_predictor, spec_field, torch_predictor
from waferflow.export.trt import SKIP_NO_CUDA


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean())}


def run_interleaved(forms: dict[str, Callable[[np.ndarray], Any]], x1: np.ndarray, xb: np.ndarray,
                    warmup: int, iters: int, batch_iters: int) -> dict[str, dict]:
    """Time single-map calls and batch calls of each form, round-robin so noise hits all forms alike."""
    from tqdm import tqdm

    single: dict[str, list[float]] = {k: [] for k in forms}
    batch: dict[str, float] = {k: 0.0 for k in forms}
    for i in tqdm(range(warmup + iters), desc="latency", disable=not progress_enabled()):
        for name, f in forms.items():
            t = time.perf_counter()
            f(x1)
            dt = (time.perf_counter() - t) * 1e3
            if i >= warmup:
                single[name].append(dt)
    for name, f in forms.items():  # one warm-up batch each
        f(xb)
    for _ in range(batch_iters):
        for name, f in forms.items():
            t = time.perf_counter()
            f(xb)
            batch[name] += time.perf_counter() - t
    return {name: {**_stats(single[name]),
                   "throughput_maps_per_s": float(len(xb) * batch_iters / batch[name]),
                   "batch_size": int(len(xb))} for name in forms}


def bench_latency(model_dir: str | os.PathLike, export_dir: str | os.PathLike | None = None, threads: int = 2,
                  warmup: int = 20, iters: int = 200, batch: int = 64, batch_iters: int | None = None,
                  trt_dir: str | os.PathLike | None = None, seed: int = 0) -> dict:
    """Latency of PyTorch eager FP32, ONNX Runtime FP32/INT8 (and TensorRT engines on CUDA) in one run.

    Args:
        model_dir: the model directory (PyTorch eager baseline).
        export_dir: an export dir with model.onnx / model.int8.onnx (forms absent there are not measured).
        threads: torch.set_num_threads and onnxruntime intra_op_num_threads.
        warmup, iters: single-map warm-up and timed iterations per form.
        batch: batch size for throughput; batch_iters: timed batch calls per form (default max(3, iters // 20)).
        trt_dir: a `waferflow compile-trt` output dir; its engines are timed where CUDA is present.
        seed: seed of the synthetic 0/1/2 input maps (latency does not depend on their content).

    Returns:
        ``{"forms": {name: {p50_ms, p95_ms, p99_ms, mean_ms, throughput_maps_per_s, batch_size, size_bytes}
        | {"skipped": ...}}, "threads", "input_size", "baseline": "torch_eager", "speedup_p99_vs_torch",
        "size_ratio_int8_vs_fp32", ...}``.
    """
    import onnxruntime as ort
    import torch

    from waferflow.export.exporter import FP32_NAME, INT8_NAME
    from waferflow.models import load_model_dir, preprocess

    if threads < 1 or iters < 1 or batch < 1 or warmup < 0:
        raise ConfigError("threads, iters and batch must be >= 1 and warmup >= 0")
    torch.set_num_threads(threads)
    model, spec = load_model_dir(model_dir)
    s = int(spec_field(spec, "input_size"))
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, 3, size=(batch, s, s), dtype=np.uint8)
    xb = np.ascontiguousarray(preprocess(maps, spec), dtype=np.float32)
    x1 = xb[:1].copy()
    forms: dict[str, Callable] = {"torch_eager": torch_predictor(model)}
    sizes = {"torch_eager": (Path(model_dir) / "weights.pt").stat().st_size}
    if export_dir is not None:
        for name, fname in (("onnx_fp32", FP32_NAME), ("onnx_int8", INT8_NAME)):
            p = Path(export_dir) / fname
            if p.is_file():
                forms[name] = onnx_predictor(p, threads=threads)
                sizes[name] = p.stat().st_size
    skipped: dict[str, dict] = {}
    from waferflow.export.trt import cuda_status

    cuda, why = cuda_status()
    for prec in ("fp16", "int8"):
        name = f"tensorrt_{prec}"
        engine = Path(trt_dir) / f"model.{prec}.engine" if trt_dir is not None else None
        if not cuda:
            skipped[name] = {"skipped": SKIP_NO_CUDA, "reason": why}
        elif engine is None or not engine.is_file():
            skipped[name] = {"skipped": f"skipped: no {prec} engine (run `waferflow compile-trt`)"}
        else:
            from waferflow.evaluation import tensorrt_predictor

            forms[name] = tensorrt_predictor(engine)
            sizes[name] = engine.stat().st_size
    res = run_interleaved(forms, x1, xb, warmup, iters, batch_iters or max(3, iters // 20))
    for name in res:
        res[name]["size_bytes"] = int(sizes[name])
    base = res["torch_eager"]["p99_ms"]
    out = {
        "forms": {**res, **skipped},
        "baseline": "torch_eager",
        "speedup_p99_vs_torch": {k: base / v["p99_ms"] for k, v in res.items()},
        "size_ratio_int8_vs_fp32": (sizes["onnx_int8"] / sizes["onnx_fp32"]
                                    if "onnx_int8" in sizes and "onnx_fp32" in sizes else None),
        "threads": threads, "input_size": s, "in_chans": int(spec_field(spec, "in_chans")),
        "backbone": spec_field(spec, "backbone"), "warmup": warmup, "iters": iters, "batch_size": batch,
        "interleaved": True,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count()},
    }
    return out
