"""CUDA-only TensorRT code: engine builder and INT8 entropy calibrator
(the engine runner is ``waferflow.predictors.tensorrt_runner.TrtRunner``).

Imported only when a CUDA device and the ``tensorrt`` package exist (see ``trt.cuda_status``). Device
buffers are torch CUDA tensors (no pycuda). Everything around this module is tested on the CPU.
Note: TensorRT 10.1+ marks implicit INT8 calibration (IInt8EntropyCalibrator2) deprecated in favour of
explicit QDQ quantization; it is still supported by the pinned tensorrt 10.13.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import tensorrt as trt
import torch

from waferflow.config import atomic_write_bytes
from waferflow.errors import ModelFormatError
from waferflow.export.trt_common import CalibrationBatches, CalibrationCache
from waferflow.predictors.tensorrt_runner import TRT_LOGGER as _LOGGER
from waferflow.predictors.tensorrt_runner import TrtRunner  # noqa: F401  (re-exported)


class EntropyCalibrator(CalibrationCache, trt.IInt8EntropyCalibrator2):
    """IInt8EntropyCalibrator2 fed from ``CalibrationBatches``; cache file beside the engine is reused."""

    def __init__(self, batches: CalibrationBatches | None, cache_path: str | os.PathLike, batch_size: int) -> None:
        trt.IInt8EntropyCalibrator2.__init__(self)
        CalibrationCache.__init__(self, cache_path)
        self._batches = batches
        self._it = iter(batches) if batches is not None else iter(())
        self._batch_size = batch_size
        self._current: torch.Tensor | None = None

    def get_batch_size(self) -> int:
        return self._batch_size

    def get_batch(self, names: list[str]) -> list[int] | None:
        x = next(self._it, None)
        if x is None:
            return None
        self._current = torch.from_numpy(x).cuda().contiguous()  # kept alive until the next call
        return [int(self._current.data_ptr())]


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str,
                 profile: tuple[int, int, int], batches: CalibrationBatches | None,
                 cache_path: str | os.PathLike, calib_batch: int, workspace_gib: float = 4.0) -> dict:
    """Parse the ONNX model, build an FP16 or INT8 engine with a dynamic-batch profile, write it atomically.

    Returns:
        ``{"build_seconds", "size_bytes", "tensorrt_version", "calibration": "cache"|"calibrated"|None}``.

    Raises:
        ModelFormatError: the parser or the builder fails.
    """
    builder = trt.Builder(_LOGGER)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
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
    config.set_flag(trt.BuilderFlag.FP16)  # INT8 layers fall back to FP16, not FP32
    calib_mode = None
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        cprof = builder.create_optimization_profile()
        cprof.set_shape(inp.name, *[(calib_batch, c, s, s)] * 3)
        config.set_calibration_profile(cprof)
        calibrator = EntropyCalibrator(batches, cache_path, calib_batch)
        calib_mode = "cache" if calibrator.has_cache() else "calibrated"
        config.int8_calibrator = calibrator
    t0 = time.perf_counter()
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise ModelFormatError(f"TensorRT failed to build the {precision} engine from {onnx_path}; see the log")
    atomic_write_bytes(engine_path, bytes(blob))
    return {"build_seconds": round(time.perf_counter() - t0, 2), "size_bytes": Path(engine_path).stat().st_size,
            "tensorrt_version": trt.__version__, "calibration": calib_mode,
            "device": torch.cuda.get_device_name(0)}
