"""TensorRT compile: everything that runs without CUDA (skip path, the Q/DQ INT8 source, metadata).

The FP16 engine is built from the export's ``model.onnx``; the INT8 engine from a Q/DQ model (explicit
quantization): the export's ``model.int8.onnx`` when TensorRT takes it as it is (symmetric INT8), else one
quantized for TensorRT from ``model.onnx`` with calibration maps of the training split. The CUDA-only builder is
in ``tensorrt_build``, the engine runner in ``waferflow.predictors.tensorrt_runner``; both are imported only when a
CUDA device and the ``tensorrt`` package are both present.
"""

from __future__ import annotations

import logging
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from waferflow import __version__
from waferflow.config import atomic_write_bytes, atomic_write_json
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError
from waferflow.export.trt_common import (  # noqa: F401  (re-exported: the public names of the TensorRT path)
    SKIP_NO_CUDA,
    SKIP_NO_TENSORRT,
    fold_int32_biases,
    load_engine_bytes,
    tensorrt_qdq_problem,
    trt_skip,
)
from waferflow.forms import INT8_NAME
from waferflow.predictors import ENGINE_PRECISIONS, FP32_NAME, engine_name, tensorrt_predictor

log = logging.getLogger(__name__)

TRT_JSON = "tensorrt.json"
PRECISIONS = ENGINE_PRECISIONS
# written into the compile output dir when the export's model.int8.onnx is not a Q/DQ model TensorRT takes
TRT_INT8_NAME = "model.int8.tensorrt.onnx"


def parse_precisions(precision: str) -> tuple[str, ...]:
    """``fp16`` | ``int8`` | ``both`` -> tuple of precisions."""
    if precision == "both":
        return PRECISIONS
    if precision in PRECISIONS:
        return (precision,)
    raise ConfigError(f"precision must be fp16, int8 or both, got {precision!r}")


def trt_metadata(source_onnx: Path | None, precision: str, profile: tuple[int, int, int], onnx_meta: dict,
                 engine_file: str | None, status: str, extra: dict | None = None) -> dict:
    """The JSON written beside an engine (and in ``tensorrt.json``); layout is tested on CPU."""
    return {
        "status": status,
        "precision": precision,
        "engine": engine_file,
        "source_onnx": str(Path(source_onnx).resolve()) if source_onnx is not None else None,
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


def int8_qdq_source(export_dir: Path, out_dir: Path, calib_ds: WaferDataset | None, spec: Any,
                    calibration_maps: int = 512, export_int8: dict | None = None) -> tuple[Path, str]:
    """``(Q/DQ ONNX file, how it was obtained)`` for the INT8 engine.

    The export's ``model.int8.onnx`` when it has symmetric INT8 activations (``int8_format`` s8s8): as it is, or,
    when onnxruntime quantized its biases to INT32, as ``out_dir/model.int8.tensorrt.onnx`` with those folded back
    into FP32 (:func:`fold_int32_biases`; the same activation and weight quantization). Otherwise (an export made on a
    VNNI CPU quantizes activations to asymmetric UINT8; a dynamic fallback has no Q/DQ pairs) ``model.onnx``
    quantized for TensorRT into the same file: symmetric INT8 activations, 8-bit per-channel weights, FP32 biases,
    calibrated on ``calibration_maps`` maps of ``calib_ds``, the export's FP32 layers kept. ``export_int8`` is
    ``export.json``'s ``int8`` record (its ``reduce_range`` and ``fp32_layers``).

    Raises:
        DataError: the export's INT8 model cannot be used and no calibration maps were given.
    """
    import onnx

    given, dst = export_dir / INT8_NAME, out_dir / TRT_INT8_NAME
    dst.unlink(missing_ok=True)  # never leave a model of an earlier export beside the new engine
    problem = f"{given} is missing"
    if given.is_file():
        model = onnx.load(str(given))
        folded = fold_int32_biases(model)
        problem = tensorrt_qdq_problem(model)
        bits = "7-bit" if (export_int8 or {}).get("reduce_range") else "8-bit"
        if problem is None and not folded:
            return given, f"export: {INT8_NAME} as written (symmetric INT8 Q/DQ, {bits} weights)"
        if problem is None:
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, model.SerializeToString())
            return dst, (f"export: {INT8_NAME} ({bits} weights, the quantization its CPU INT8 model was gated with) "
                         f"with its {folded} INT32 bias dequantizations folded into FP32 biases")
    if calib_ds is None:
        raise DataError(f"the INT8 engine is built from a Q/DQ model, and {INT8_NAME} cannot be used ({problem}); "
                        "pass calibration maps of the training split (--calib TRAIN.npz) to quantize one for "
                        "TensorRT, or build only fp16 (--precision fp16)")
    fp32_nodes = list(((export_int8 or {}).get("fp32_layers") or {}).get("nodes") or [])
    _quantize_for_tensorrt(export_dir, dst, calib_ds, spec, calibration_maps, fp32_nodes)
    return dst, f"requantized for TensorRT: symmetric INT8 activations, 8-bit weights ({INT8_NAME}: {problem})"


def _quantize_for_tensorrt(export_dir: Path, dst: Path, calib_ds: WaferDataset, spec: Any, n_maps: int,
                           fp32_nodes: list[str]) -> None:
    """``model.onnx`` -> ``dst``: static Q/DQ with symmetric INT8 activations, FP32 biases (written atomically)."""
    from waferflow.export.quantize import calibration_batches, preprocess_for_quant, static_qdq

    calib = list(calibration_batches(calib_ds, spec, n_maps, batch_size=32))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".wf-trt-qdq-", dir=dst.parent) as td:
        pre = preprocess_for_quant(export_dir / FP32_NAME, Path(td) / "pre.onnx")
        static_qdq(pre, Path(td) / dst.name, calib, "minmax", reduce_range=False,
                   fp32_nodes=fp32_nodes, int8_format="s8s8", quantize_bias=False)
        os.replace(Path(td) / dst.name, dst)


def _skipped(export_dir: Path, out_dir: Path, precisions: tuple[str, ...], profile: tuple[int, int, int],
             onnx_meta: dict, status: str, why: str) -> dict:
    """Record the skip in ``out_dir/tensorrt.json``; no engine file is written."""
    result = {"status": status, "reason": why, "precisions": list(precisions),
              "engines": {p: trt_metadata(export_dir / FP32_NAME if p == "fp16" else None, p, profile, onnx_meta,
                                          None, status) for p in precisions}}
    atomic_write_json(out_dir / TRT_JSON, result)
    log.warning("compile-trt %s (%s); no engine written", status, why)
    return result


def compile_trt(export_dir: str | os.PathLike, out_dir: str | os.PathLike, precision: str = "both",
                calib_ds: WaferDataset | None = None, eval_ds: WaferDataset | None = None,
                calibration_maps: int = 512, profile: tuple[int, int, int] = (1, 32, 256),
                bench: bool = True, model_dir: str | os.PathLike | None = None, threads: int = 2) -> dict:
    """Build TensorRT engines (FP16 from ``model.onnx``, INT8 from a Q/DQ model), then evaluate and time them.

    Without CUDA, or without the tensorrt package, nothing is built: ``out_dir/tensorrt.json`` records
    ``{"status": "skipped: no CUDA device" | "skipped: tensorrt not installed", ...}`` and no engine file is
    written. That is a successful outcome.

    Args:
        export_dir: a `waferflow export` dir. out_dir: where engines + JSON go.
        precision: fp16, int8 or both. calib_ds: training-split maps, used only when the export's INT8 model is not
            one TensorRT takes (:func:`int8_qdq_source`). eval_ds: labeled maps for accuracy.
        calibration_maps: maps quantizing that model. profile: (min, opt, max) batch of the optimization profile.
        bench: also time the engines with ``bench_latency`` (needs ``model_dir``).

    Returns:
        The ``tensorrt.json`` dict: ``status``, ``engines`` {precision: metadata}, optional ``metrics`` and
        ``latency``.
    """
    from waferflow.export.exporter import verify_export_dir
    from waferflow.export.onnx_export import onnx_spec, read_onnx_metadata

    export_dir, out_dir = Path(export_dir), Path(out_dir)
    precisions = parse_precisions(precision)
    export_record = verify_export_dir(export_dir)  # the files are the export's (sha256): fails fast even when skipping
    onnx_meta = read_onnx_metadata(export_dir / FP32_NAME)
    if not (profile[0] >= 1 and profile[0] <= profile[1] <= profile[2]):
        raise ConfigError(f"profile must satisfy 1 <= min <= opt <= max, got {profile}")
    skip = trt_skip()
    if skip is not None:
        return _skipped(export_dir, out_dir, precisions, profile, onnx_meta, *skip)

    from waferflow.evaluation import evaluate
    from waferflow.export.tensorrt_build import build_engine

    spec = onnx_spec(onnx_meta)
    for p in precisions:  # an engine of an earlier run is never left beside this run's record
        for stale in (out_dir / engine_name(p), (out_dir / engine_name(p)).with_suffix(".json")):
            stale.unlink(missing_ok=True)
    # every source before any build: a missing INT8 source fails before minutes of FP16 building
    sources = {p: ((export_dir / FP32_NAME, "export: FP32 with FP16 kernels allowed") if p == "fp16"
                   else int8_qdq_source(export_dir, out_dir, calib_ds, spec, calibration_maps,
                                        export_record.get("int8") or {})) for p in precisions}
    engines: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    for p, (source, how) in sources.items():
        engine_path = out_dir / engine_name(p)
        built = build_engine(source, engine_path, p, profile)
        meta = trt_metadata(source, p, profile, onnx_meta, engine_path.name, "built", {**built, "qdq": how})
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
