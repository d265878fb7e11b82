"""TensorRT compile: everything that runs without CUDA (skip path, calibration data and cache, metadata).

The CUDA-only code (builder, calibrator subclass) is in ``tensorrt_build``, the engine runner in
``waferflow.predictors.tensorrt_runner``; both are imported only when a CUDA device and the ``tensorrt`` package
are both present.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


from waferflow import __version__
from waferflow.config import atomic_write_json
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError
from waferflow.export.trt_common import (  # noqa: F401  (re-exported: the public names of the TensorRT path)
    SKIP_NO_CUDA,
    CalibrationBatches,
    CalibrationCache,
    cuda_status,
    load_engine_bytes,
)
from waferflow.predictors import ENGINE_PRECISIONS, FP32_NAME, engine_name, tensorrt_predictor

log = logging.getLogger(__name__)

TRT_JSON = "tensorrt.json"
PRECISIONS = ENGINE_PRECISIONS


def cache_name() -> str:
    """File name of the INT8 calibration cache, saved beside the engine."""
    return "calibration.cache"


def parse_precisions(precision: str) -> tuple[str, ...]:
    """``fp16`` | ``int8`` | ``both`` -> tuple of precisions."""
    if precision == "both":
        return PRECISIONS
    if precision in PRECISIONS:
        return (precision,)
    raise ConfigError(f"precision must be fp16, int8 or both, got {precision!r}")


def trt_metadata(export_dir: Path, precision: str, profile: tuple[int, int, int], onnx_meta: dict,
                 engine_file: str | None, status: str, extra: dict | None = None) -> dict:
    """The JSON written beside an engine (and in ``tensorrt.json``); layout is tested on CPU."""
    return {
        "status": status,
        "precision": precision,
        "engine": engine_file,
        "source_onnx": str((export_dir / FP32_NAME).resolve()),
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
    onnx_path = export_dir / FP32_NAME
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

    from waferflow.evaluation import evaluate
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
