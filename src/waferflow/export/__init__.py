"""Deployment artifacts: ONNX export with parity, INT8, latency benchmark, TensorRT compile.

Free functions fail fast; ``export_onnx`` orchestrates. TensorRT is imported lazily (``export.tensorrt_build``).
"""

from waferflow.export.bench import bench_latency
from waferflow.export.exporter import EXPORT_JSON, FP32_NAME, INT8_NAME, export_onnx, verify_export_dir
from waferflow.export.onnx_export import read_onnx_metadata, sha256_file
from waferflow.export.quantize import prune_model, quantize_int8
from waferflow.export.trt import SKIP_NO_CUDA, SKIP_NO_TENSORRT, compile_trt

__all__ = [
    "EXPORT_JSON", "FP32_NAME", "INT8_NAME", "SKIP_NO_CUDA", "SKIP_NO_TENSORRT", "bench_latency", "compile_trt", "export_onnx",
    "prune_model", "quantize_int8", "read_onnx_metadata", "sha256_file", "verify_export_dir",
]
