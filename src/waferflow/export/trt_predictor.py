"""The TensorRT engine as a predictor; refuses clearly, and never falls back, without CUDA."""

from __future__ import annotations

import os

from waferflow.errors import ConfigError
from waferflow.export.trt_common import cuda_status


def tensorrt_predictor(engine_path: str | os.PathLike):
    """A predictor (``waferflow.evaluation.Predictor``) around a serialized TensorRT engine (needs CUDA and the tensorrt package).

    Raises:
        ConfigError: no CUDA device or no tensorrt package (never falls back to another form).
        ModelFormatError: the engine is missing or cannot be deserialized.
    """
    ok, why = cuda_status()
    if not ok:
        raise ConfigError(f"a TensorRT engine needs a CUDA device and the tensorrt package: {why}; "
                          "evaluate the ONNX forms on this machine instead")
    from waferflow.export.tensorrt_build import TrtRunner

    return TrtRunner(engine_path)
