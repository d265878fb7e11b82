"""The TensorRT engine as a predictor; refuses clearly, and never falls back, without CUDA.

Importable without TensorRT or CUDA: the runner (``tensorrt_runner``) is imported only when both are present.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from waferflow.errors import ConfigError, ModelFormatError


SKIP_NO_CUDA = "skipped: no CUDA device"
SKIP_NO_TENSORRT = "skipped: tensorrt not installed"


def trt_skip() -> tuple[str, str] | None:
    """``None`` when TensorRT can run here; else ``(status, reason)``: no CUDA device, or CUDA without the
    ``tensorrt`` package (a GPU machine is then not called a machine without one)."""
    try:
        import torch

        has_cuda = bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA setup counts as no device
        has_cuda = False
    if not has_cuda:
        return SKIP_NO_CUDA, "torch.cuda.is_available() is False"
    if importlib.util.find_spec("tensorrt") is None:
        return SKIP_NO_TENSORRT, "a CUDA device is present but the tensorrt package is not (pip install .[gpu])"
    return None


def load_engine_bytes(path: str | os.PathLike) -> bytes:
    """Engine bytes, with a clear error for a missing or empty file."""
    p = Path(path)
    if not p.is_file() or p.stat().st_size == 0:
        raise ModelFormatError(f"TensorRT engine {p} is missing or empty; run `waferflow compile-trt`")
    return p.read_bytes()


def tensorrt_predictor(engine_path: str | os.PathLike):
    """A predictor (``waferflow.predictors.Predictor``) around a serialized TensorRT engine (needs CUDA and the tensorrt package).

    Raises:
        ConfigError: no CUDA device or no tensorrt package (never falls back to another form).
        ModelFormatError: the engine is missing or cannot be deserialized.
    """
    skip = trt_skip()
    if skip is not None:
        raise ConfigError(f"a TensorRT engine needs a CUDA device and the tensorrt package: {skip[1]}; "
                          "evaluate the ONNX forms on this machine instead")
    from waferflow.predictors.tensorrt_runner import TrtRunner

    return TrtRunner(load_engine_bytes(engine_path), engine_path)
