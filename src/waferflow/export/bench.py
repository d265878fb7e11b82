"""Latency benchmark: each form timed alone in its own process by default; round-robin in one process as an option.

Timing PyTorch and onnxruntime in one process makes their thread pools compete for the cores: on a 2-core CPU
that inflated every figure, and unevenly (ONNX FP32 p50 6.2 ms interleaved against 1.09 ms alone). So by default
every form runs in a fresh process (``waferflow.export.latency_worker``), one after the other, while the other
forms' pools do not exist. ``rounds`` > 1 repeats the sequence and pools the samples, so slow machine noise is
spread over all forms alike.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from waferflow.config import progress_enabled
from waferflow.errors import ConfigError
from waferflow.predictors import spec_field
from waferflow.predictors.int8_host import cpu_flags

WORKER_TIMEOUT_S = 1800


def _stats(ms: list[float], batch_seconds: list[float], batch: int, cpu_ms: list[float] | None = None) -> dict:
    a = np.asarray(ms)
    out = {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
           "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()),
           "throughput_maps_per_s": float(batch * len(batch_seconds) / sum(batch_seconds)),
           "batch_size": int(batch)}
    if cpu_ms:
        out["p50_cpu_ms"] = float(np.percentile(cpu_ms, 50))
    return out


def run_interleaved(forms: dict[str, Callable[[np.ndarray], Any]], x1: np.ndarray, xb: np.ndarray,
                    warmup: int, iters: int, batch_iters: int) -> dict[str, dict]:
    """Time every form in this process, iterations round-robin (their thread pools compete; see the module doc)."""
    from tqdm import tqdm

    single: dict[str, list[float]] = {k: [] for k in forms}
    batch: dict[str, list[float]] = {k: [] for k in forms}
    for i in tqdm(range(warmup + iters), desc="latency", disable=not progress_enabled()):
        for name, f in forms.items():
            t = time.perf_counter()
            f(x1)
            dt = (time.perf_counter() - t) * 1e3
            if i >= warmup:
                single[name].append(dt)
    for f in forms.values():  # one warm-up batch each
        f(xb)
    for _ in range(batch_iters):
        for name, f in forms.items():
            t = time.perf_counter()
            f(xb)
            batch[name].append(time.perf_counter() - t)
    return {name: _stats(single[name], batch[name], len(xb)) for name in forms}


def run_isolated(forms: dict[str, tuple[str, str]], x1: np.ndarray, xb: np.ndarray, threads: int, warmup: int,
                 iters: int, batch_iters: int, rounds: int = 1) -> dict[str, dict]:
    """Time each form alone in a fresh process, one process at a time; ``rounds`` repeats and pools the samples.

    Args:
        forms: ``{name: (form, path)}``: a form of ``waferflow.predictors.FORMS`` and its file (or model dir).
        x1, xb: one preprocessed map and a batch.
        threads: intra-op threads of each form.
        warmup, iters, batch_iters: per form and round.
        rounds: how many times the whole sequence of forms runs.

    Returns:
        ``{name: {p50_ms, ..., throughput_maps_per_s, batch_size, p50_cpu_ms, pids, torch_imported}}``.

    Raises:
        WaferflowError: a form cannot be loaded (the worker's own error class and message, e.g.
            ModelFormatError for a corrupt file).
        RuntimeError: a worker process crashed otherwise (its stderr tail is in the message).
    """
    from tqdm import tqdm

    single: dict[str, list[float]] = {k: [] for k in forms}
    cpu: dict[str, list[float]] = {k: [] for k in forms}
    batch: dict[str, list[float]] = {k: [] for k in forms}
    pids: dict[str, list[int]] = {k: [] for k in forms}
    torch_in: dict[str, bool] = {k: False for k in forms}
    with tempfile.TemporaryDirectory(prefix="wf-latency-") as td:
        np.save(Path(td) / "x1.npy", x1)
        np.save(Path(td) / "xb.npy", xb)
        jobs = [(r, name) for r in range(rounds) for name in forms]
        for r, name in tqdm(jobs, desc="latency (each form alone)", disable=not progress_enabled()):
            form, path = forms[name]
            job = {"form": form, "path": str(path), "threads": threads, "warmup": warmup, "iters": iters,
                   "batch_iters": batch_iters, "x1": str(Path(td) / "x1.npy"), "xb": str(Path(td) / "xb.npy")}
            jf = Path(td) / f"job-{r}-{name}.json"
            jf.write_text(json.dumps(job))
            res = _run_worker(name, jf)
            single[name] += res["single_ms"]
            cpu[name] += res["single_cpu_ms"]
            batch[name] += res["batch_seconds"]
            pids[name].append(int(res["pid"]))
            torch_in[name] |= bool(res["torch_imported"])
    return {name: {**_stats(single[name], batch[name], len(xb), cpu[name]), "pids": pids[name],
                   "torch_imported": torch_in[name]} for name in forms}


def _run_worker(name: str, job_file: Path) -> dict:
    env = {**os.environ, "WAFERFLOW_PROGRESS": "0"}
    p = subprocess.run([sys.executable, "-m", "waferflow.export.latency_worker", str(job_file)],
                       capture_output=True, text=True, env=env, timeout=WORKER_TIMEOUT_S)
    last = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "{}"
    if p.returncode == 3:  # a waferflow error with its own message (a corrupt model file, say)
        import waferflow.errors as errors

        err = json.loads(last)
        raise getattr(errors, err["error"], errors.WaferflowError)(f"timing {name} alone: {err['message']}")
    if p.returncode != 0:
        raise RuntimeError(f"timing {name} alone failed (exit {p.returncode}): {p.stderr.strip()[-1500:]}")
    return json.loads(last)


def _form_files(model_dir: Path, export_dir: str | os.PathLike | None, trt_dir: str | os.PathLike | None
                ) -> tuple[dict[str, tuple[str, str]], dict[str, dict]]:
    """``({name: (form, path)}, {name: skipped entry})`` for every form present (files from the one table)."""
    from waferflow.forms import EXPORT_FORMS
    from waferflow.predictors import ENGINE_PRECISIONS, FORMS, trt_skip

    forms = {"torch_eager": ("torch", str(model_dir))}
    if export_dir is not None:
        for name in EXPORT_FORMS:
            if (Path(export_dir) / FORMS[name].file).is_file():
                forms[name] = (name, str(Path(export_dir) / FORMS[name].file))
    skipped: dict[str, dict] = {}
    skip = trt_skip()
    for prec in ENGINE_PRECISIONS:
        name = f"tensorrt_{prec}"
        engine = Path(trt_dir) / FORMS[name].file if trt_dir is not None else None
        if skip is not None:
            skipped[name] = {"skipped": skip[0], "reason": skip[1]}
        elif engine is None or not engine.is_file():
            skipped[name] = {"skipped": f"skipped: no {prec} engine (run `waferflow compile-trt`)"}
        else:
            forms[name] = (name, str(engine))
    return forms, skipped


def _size(form: str, path: str) -> int:
    from waferflow.predictors import form_file

    return form_file(form, path).stat().st_size


def bench_latency(model_dir: str | os.PathLike, export_dir: str | os.PathLike | None = None, threads: int = 2,
                  warmup: int = 20, iters: int = 200, batch: int = 64, batch_iters: int | None = None,
                  trt_dir: str | os.PathLike | None = None, seed: int = 0, isolate: bool = True, rounds: int = 1,
                  forms: list[str] | None = None) -> dict:
    """Latency of PyTorch eager FP32, ONNX Runtime FP32/INT8 (and TensorRT engines on CUDA).

    Args:
        model_dir: the model directory (PyTorch eager baseline).
        export_dir: an export dir with model.onnx / model.int8.onnx / the TTA graphs (forms absent there are not
            measured; a TTA form's single-map latency is one map through all its views).
        threads: torch.set_num_threads and onnxruntime intra_op_num_threads.
        warmup, iters: single-map warm-up and timed iterations per form (and round).
        batch: batch size for throughput; batch_iters: timed batch calls per form (default max(3, iters // 20)).
        trt_dir: a `waferflow compile-trt` output dir; its engines are timed where CUDA is present.
        seed: seed of the synthetic 0/1/2 input maps (latency does not depend on their content).
        isolate: time each form alone in its own process (default); False interleaves all forms in this process.
        rounds: with ``isolate``, how many times the sequence of forms runs (samples pooled).
        forms: measure only these form names (default: every form present).

    Returns:
        ``{"forms": {name: {p50_ms, p95_ms, p99_ms, mean_ms, throughput_maps_per_s, batch_size, size_bytes}
        | {"skipped": ...}}, "isolation": "process" | "interleaved", "threads", "input_size", "baseline":
        "torch_eager", "speedup_p99_vs_torch", "size_ratio_int8_vs_fp32", ...}``.

    Raises:
        ConfigError: bad counts, or ``forms`` names a form that is not present.
    """
    import onnxruntime as ort

    from waferflow.models import preprocess, read_spec

    if threads < 1 or iters < 1 or batch < 1 or warmup < 0 or rounds < 1:
        raise ConfigError("threads, iters, batch and rounds must be >= 1 and warmup >= 0")
    spec = read_spec(model_dir)
    s = int(spec_field(spec, "input_size"))
    maps = np.random.default_rng(seed).integers(0, 3, size=(batch, s, s), dtype=np.uint8)
    xb = np.ascontiguousarray(preprocess(maps, spec), dtype=np.float32)
    x1 = xb[:1].copy()
    files, skipped = _form_files(Path(model_dir), export_dir, trt_dir)
    if forms is not None:
        unknown = sorted(set(forms) - set(files))
        if unknown:
            raise ConfigError(f"latency forms {unknown} are not present (present: {sorted(files)}); pass --export "
                              "for onnx_*, --trt on a CUDA machine for tensorrt_*")
        files = {k: v for k, v in files.items() if k in forms}
    n_batch = batch_iters or max(3, iters // 20)
    if isolate:
        res = run_isolated(files, x1, xb, threads, warmup, iters, n_batch, rounds)
    else:
        from waferflow.export.latency_worker import make_predictor

        res = run_interleaved({k: make_predictor(form, p, threads) for k, (form, p) in files.items()},
                              x1, xb, warmup, iters, n_batch)
    for name, (form, path) in files.items():
        res[name]["size_bytes"] = _size(form, path)
    base = res["torch_eager"]["p99_ms"] if "torch_eager" in res else None
    sizes = {k: v["size_bytes"] for k, v in res.items()}
    return {
        "forms": {**res, **skipped},
        "isolation": "process" if isolate else "interleaved",
        "rounds": rounds if isolate else 1,
        "baseline": "torch_eager",
        "speedup_p99_vs_torch": {k: base / v["p99_ms"] for k, v in res.items()} if base else None,
        "size_ratio_int8_vs_fp32": (sizes["onnx_int8"] / sizes["onnx_fp32"]
                                    if "onnx_int8" in sizes and "onnx_fp32" in sizes else None),
        "threads": threads, "input_size": s, "in_chans": int(spec_field(spec, "in_chans")),
        "backbone": spec_field(spec, "backbone"), "warmup": warmup, "iters": iters, "batch_size": batch,
        "versions": {"onnxruntime": ort.__version__, **_torch_version()},
        "host": {"machine": platform.machine(), "processor": platform.processor(), "cpus": os.cpu_count(),
                 "cpu_flags": cpu_flags() or []},
    }


def _torch_version() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return {"torch": version("torch")}
    except PackageNotFoundError:
        return {}
