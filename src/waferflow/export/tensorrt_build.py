"""CUDA-only TensorRT code: the engine builder (the engine runner is
``waferflow.predictors.tensorrt_runner.TrtRunner``).

Imported only when a CUDA device and the ``tensorrt`` package exist (see ``trt.trt_skip``). INT8 is explicit
quantization: the network comes from a Q/DQ ONNX model (``trt.int8_qdq_source``) and is built strongly typed, so
the Q/DQ pairs alone decide what runs in INT8 and the rest runs in the model's FP32; no calibrator (TensorRT 10
deprecates implicit calibration). FP16 builds ``model.onnx`` with the FP16 builder flag (deprecated too since
TensorRT 10.12, still supported by the pinned 10.13). Everything around this module is tested on the CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import tensorrt as trt
import torch

from waferflow.config import atomic_write_bytes
from waferflow.errors import ModelFormatError
from waferflow.predictors.tensorrt_runner import TRT_LOGGER as _LOGGER
from waferflow.predictors.tensorrt_runner import TrtRunner  # noqa: F401  (re-exported)


def _network_flags(precision: str) -> int:
    """Strongly typed for a Q/DQ (INT8) model; the default (weakly typed, explicit batch) for FP16."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if precision == "int8" else 0


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str,
                 profile: tuple[int, int, int], workspace_gib: float = 4.0) -> dict:
    """Parse the ONNX model, build an FP16 or INT8 engine with a dynamic-batch profile, write it atomically.

    Returns:
        ``{"build_seconds", "size_bytes", "tensorrt_version", "device"}``.

    Raises:
        ModelFormatError: the parser or the builder fails.
    """
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(_network_flags(precision))
    parser = trt.OnnxParser(network, _LOGGER)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelFormatError(f"TensorRT cannot parse {onnx_path}: {errs}")
    inp = network.get_input(0)
    c, s = int(inp.shape[1]), int(inp.shape[2])
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    prof = builder.create_optimization_profile()
    prof.set_shape(inp.name, (profile[0], c, s, s), (profile[1], c, s, s), (profile[2], c, s, s))
    config.add_optimization_profile(prof)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelFormatError(f"TensorRT failed to build the {precision} engine from {onnx_path}; see the log")
    atomic_write_bytes(engine_path, bytes(blob))
    return {"build_seconds": round(time.perf_counter() - t0, 2), "size_bytes": Path(engine_path).stat().st_size,
            "tensorrt_version": trt.__version__, "device": torch.cuda.get_device_name(0)}
