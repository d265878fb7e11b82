"""CUDA-only: a serialized TensorRT engine as a predictor (device buffers are torch CUDA tensors, no pycuda).

Imported only by ``predictors.tensorrt.tensorrt_predictor`` (which reads the engine file) after ``trt_skip`` said CUDA and the ``tensorrt``
package are both present.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import tensorrt as trt
import torch

from waferflow.errors import ModelFormatError

TRT_LOGGER = trt.Logger(trt.Logger.WARNING)


class TrtRunner:
    """A predictor around a serialized engine: float32 [B, C, S, S] -> logits [B, K] (numpy on the host)."""

    def __init__(self, engine_bytes: bytes, engine_path: str | os.PathLike = "<engine bytes>") -> None:
        if not torch.cuda.is_available():
            raise ModelFormatError("a TensorRT engine needs a CUDA device; torch sees none")
        self.runtime = trt.Runtime(TRT_LOGGER)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelFormatError(f"TensorRT engine {engine_path} cannot be deserialized (corrupt, or built "
                                   "by another TensorRT version / GPU); rebuild it with `waferflow compile-trt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.in_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.out_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.in_name, 0)[2][0])
        self.stream = torch.cuda.Stream()

    def _run(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).cuda()
        self.context.set_input_shape(self.in_name, tuple(t.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.out_name)), dtype=torch.float32, device="cuda")
        self.context.set_tensor_address(self.in_name, int(t.data_ptr()))
        self.context.set_tensor_address(self.out_name, int(out.data_ptr()))
        torch.cuda.current_stream().synchronize()
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise ModelFormatError("TensorRT execution failed")
        self.stream.synchronize()
        return out.cpu().numpy()

    def __call__(self, x: np.ndarray) -> Any:
        if len(x) <= self.max_batch:
            return self._run(x)
        return np.concatenate([self._run(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)])
