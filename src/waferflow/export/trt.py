"""TensorRT compile: everything that runs without CUDA (skip path, calibration data and cache, metadata).

The CUDA-only code (builder, calibrator subclass, engine runner) is in ``tensorrt_build``, imported only
when a CUDA device and the ``tensorrt`` package are both present.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from waferflow import __version__
from waferflow.config import atomic_write_bytes, atomic_write_json
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError, ModelFormatError

log = logging.getLogger(__name__)

SKIP_NO_CUDA = "skipped: no CUDA device"
TRT_JSON = "tensorrt.json"
PRECISIONS = ("fp16", "int8")


def engine_name(precision: str) -> str:
    """File name of the engine for a precision (``model.fp16.engine``)."""
    return f"model.{precision}.engine"


def cache_name() -> str:
    """File name of the INT8 calibration cache, saved beside the engine."""
    return "calibration.cache"


def cuda_status() -> tuple[bool, str]:
    """``(usable, why)``: usable only when torch sees a CUDA device and ``tensorrt`` is importable."""
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup counts as no device
        has_cuda = False
    if not has_cuda:
        return False, "torch.cuda.is_available() is False"
    if importlib.util.find_spec("tensorrt") is None:
        return False, "the tensorrt package is not installed (pip install tensorrt==10.13.3.9)"
    return True, "ok"


def parse_precisions(precision: str) -> tuple[str, ...]:
    """``fp16`` | ``int8`` | ``both`` -> tuple of precisions."""
    if precision == "both":
        return PRECISIONS
    if precision in PRECISIONS:
        return (precision,)
    raise ConfigError(f"precision must be fp16, int8 or both, got {precision!r}")


class CalibrationBatches:
    """Fixed-size float32 calibration batches [B, C, S, S] for a TensorRT calibrator.

    TensorRT asks for batches of exactly ``batch_size``; a short last batch is dropped (calibration statistics
    do not need it), so ``len(self)`` is ``n_maps // batch_size``.
    """

    def __init__(self, ds: WaferDataset, spec: Any, n_maps: int, batch_size: int = 32, seed: int = 0) -> None:
        from waferflow.export.quantize import calibration_indices

        if batch_size < 1:
            raise ConfigError(f"calibration batch size must be >= 1, got {batch_size}")
        self.ds, self.spec, self.batch_size = ds, spec, int(batch_size)
        self.indices = calibration_indices(ds, n_maps, seed)
        if len(self.indices) < batch_size:
            raise DataError(f"INT8 calibration needs at least one full batch of {batch_size} maps; "
                            f"got {len(self.indices)}; pass more calibration maps or a smaller batch")

    def __len__(self) -> int:
        return len(self.indices) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        from waferflow.evaluation import batches_for

        usable = self.indices[: len(self) * self.batch_size]
        for _, x in batches_for(self.ds, self.spec, self.batch_size, indices=usable):
            yield x


class CalibrationCache:
    """The cache half of a TensorRT calibrator: reuse the cache file when present, write it atomically."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.cache_path = Path(path)

    def has_cache(self) -> bool:
        """A usable cache: the file exists and is non-empty (a crashed build can leave an empty one)."""
        return self.cache_path.is_file() and self.cache_path.stat().st_size > 0

    def read_calibration_cache(self) -> bytes | None:
        """The cached bytes when :meth:`has_cache` (TensorRT then skips calibration)."""
        if self.has_cache():
            log.info("reusing INT8 calibration cache %s", self.cache_path)
            return self.cache_path.read_bytes()
        return None

    def write_calibration_cache(self, cache: Any) -> None:
        """Save TensorRT's calibration table beside the engine."""
        atomic_write_bytes(self.cache_path, bytes(cache))


def trt_metadata(export_dir: Path, precision: str, profile: tuple[int, int, int], onnx_meta: dict,
                 engine_file: str | None, status: str, extra: dict | None = None) -> dict:
    """The JSON written beside an engine (and in ``tensorrt.json``); layout is tested on CPU."""
    return {
        "status": status,
        "precision": precision,
        "engine": engine_file,
        "source_onnx": str((export_dir / "model.onnx").resolve()),
        "input": "input", "output": "logits",
        "profile": {"min": [profile[0]], "opt": [profile[1]], "max": [profile[2]], "axis": "batch"},
        "class_names": onnx_meta.get("class_names"),
        "input_size": onnx_meta.get("input_size"),
        "in_chans": onnx_meta.get("in_chans"),
        "mean": onnx_meta.get("mean"), "std": onnx_meta.get("std"),
        "waferflow_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }


def compile_trt(export_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "both",
                calib_ds: WaferDataset | None = None, eval_ds: WaferDataset | None = None,
                calibration_maps: int = 512, calib_batch: int = 32, profile: tuple[int, int, int] = (1, 32, 256),
                bench: bool = True, model_dir: str | os.PathLike | None = None, threads: int = 2) -> dict:
    """Build TensorRT engines from ``export_dir/model.onnx``, then evaluate and time them.

    Without CUDA (or without the tensorrt package) nothing is built: ``out_dir/tensorrt.json`` records
    ``{"status": "skipped: no CUDA device", ...}`` and no engine file is written. That is a successful outcome.

    Args:
        export_dir: a `waferflow export` dir. out_dir: where engines + JSON go.
        precision: fp16, int8 or both. calib_ds: training-split maps for the INT8 calibrator (not needed
            when ``out_dir/calibration.cache`` exists). eval_ds: labeled maps for accuracy.
        calibration_maps, calib_batch: calibration size. profile: (min, opt, max) batch of the optimization profile.
        bench: also time the engines with ``bench_latency`` (needs ``model_dir``).

    Returns:
        The ``tensorrt.json`` dict: ``status``, ``engines`` {precision: metadata}, optional ``metrics`` and
        ``latency``.
    """
    from waferflow.export.onnx_export import onnx_spec, read_onnx_metadata

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    precisions = parse_precisions(precision)
    onnx_path = export_dir / "model.onnx"
    onnx_meta = read_onnx_metadata(onnx_path)  # fails fast on a bad export dir even when skipping
    if not (profile[0] >= 1 and profile[0] <= profile[1] <= profile[2]):
        raise ConfigError(f"profile must satisfy 1 <= min <= opt <= max, got {profile}")
    ok, why = cuda_status()
    if not ok:
        result = {"status": SKIP_NO_CUDA, "reason": why, "precisions": list(precisions),
                  "engines": {p: trt_metadata(export_dir, p, profile, onnx_meta, None, SKIP_NO_CUDA)
                              for p in precisions}}
        atomic_write_json(out_dir / TRT_JSON, result)
        log.warning("compile-trt %s (%s); no engine written", SKIP_NO_CUDA, why)
        return result

    from waferflow.evaluation import evaluate, tensorrt_predictor
    from waferflow.export.tensorrt_build import build_engine

    spec = onnx_spec(onnx_meta)
    engines: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    for p in precisions:
        batches = None
        cache = out_dir / cache_name()
        if p == "int8" and not CalibrationCache(cache).has_cache():
            if calib_ds is None:
                raise DataError("INT8 engine needs calibration maps (--calib FILE.npz) or an existing "
                                f"{cache}")
            batches = CalibrationBatches(calib_ds, spec, calibration_maps, calib_batch)
        engine_path = out_dir / engine_name(p)
        info = build_engine(onnx_path, engine_path, p, profile, batches, cache, calib_batch)
        meta = trt_metadata(export_dir, p, profile, onnx_meta, engine_path.name, "built", info)
        atomic_write_json(engine_path.with_suffix(".json"), meta)
        engines[p] = meta
        if eval_ds is not None:
            m = evaluate(tensorrt_predictor(engine_path), eval_ds, spec, batch_size=profile[2],
                         form=f"tensorrt_{p}")
            metrics[f"tensorrt_{p}"] = m["overall"]
    result: dict[str, Any] = {"status": "built", "precisions": list(precisions), "engines": engines,
                              "metrics": metrics or None}
    if bench and model_dir is not None:
        from waferflow.export.bench import bench_latency

        result["latency"] = bench_latency(model_dir, export_dir, threads=threads, trt_dir=out_dir)
    atomic_write_json(out_dir / TRT_JSON, result)
    return result


def load_engine_bytes(path: str | os.PathLike) -> bytes:
    """Engine bytes, with a clear error for a missing or empty file."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise ModelFormatError(f"TensorRT engine {p} is missing or empty; run `waferflow compile-trt`")
    return p.read_bytes()
