"""What every part of the TensorRT path shares and can import without TensorRT: the skip statuses, the CUDA check,
engine bytes (re-exported from ``waferflow.predictors.tensorrt``), and the check that a Q/DQ ONNX model is one
TensorRT builds an INT8 engine from. ``trt`` (the compile step) and ``tensorrt_build`` (CUDA-only) build on it;
it imports neither of them.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from waferflow.predictors.tensorrt import (  # noqa: F401  (re-exported)
    SKIP_NO_CUDA,
    SKIP_NO_TENSORRT,
    load_engine_bytes,
    trt_skip,
)

# operators of dynamic or operator-format (QOperator) quantization: TensorRT builds from Q/DQ pairs only
_NOT_QDQ_OPS = ("DynamicQuantizeLinear", "ConvInteger", "MatMulInteger", "QLinearConv", "QLinearMatMul")


def _load(model_or_path: Any) -> Any:
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        return onnx.load(str(model_or_path), load_external_data=False)
    return model_or_path


def tensorrt_qdq_problem(model_or_path: Any) -> str | None:
    """``None`` when the model (or file) is a Q/DQ model TensorRT builds an INT8 engine from as it is; else why not.

    TensorRT's quantization is symmetric and signed: every QuantizeLinear / DequantizeLinear needs an INT8 zero
    point of 0 (a missing zero point means UINT8 in ONNX), and INT32 dequantization (onnxruntime's quantized
    biases; :func:`fold_int32_biases` removes them) is refused. Dynamic quantization and QOperator nodes are
    refused too. The file is read without running anything, so this is checked on any machine.
    """
    import onnx
    from onnx import numpy_helper

    model = _load(model_or_path)
    ops = Counter(n.op_type for n in model.graph.node)
    other = [op for op in _NOT_QDQ_OPS if ops[op]]
    if other:
        return f"it holds {', '.join(other)} (dynamic or operator-format quantization), not Q/DQ pairs"
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        return "it holds no QuantizeLinear/DequantizeLinear nodes"
    inits = {t.name: t for t in model.graph.initializer}
    for n in qdq:
        zp_name = n.input[2] if len(n.input) > 2 else ""
        if zp_name and zp_name not in inits:
            return f"{n.op_type} {n.name!r} takes its zero point from {zp_name!r}, not a constant initializer"
        zp = inits.get(zp_name)
        x = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if x is not None and x.data_type != onnx.TensorProto.INT8:
            dtype = onnx.TensorProto.DataType.Name(x.data_type)
            return f"{n.op_type} {n.name!r} dequantizes {dtype}; TensorRT's Q/DQ needs INT8"
        if zp is None:
            if x is not None:
                continue  # INT8 weights with no zero point: symmetric, as TensorRT needs
            return (f"{n.op_type} {n.name!r} has no zero point: its quantized type is then UINT8 (QuantizeLinear) or "
                    "that of its input (DequantizeLinear), and TensorRT needs INT8")
        if zp.data_type != onnx.TensorProto.INT8:
            dtype = onnx.TensorProto.DataType.Name(zp.data_type)
            return f"{n.op_type} {n.name!r} quantizes to {dtype}; TensorRT's Q/DQ needs INT8"
        if numpy_helper.to_array(zp).any():
            return f"{n.op_type} {n.name!r} has a non-zero zero point; TensorRT's quantization is symmetric"
    return None


def fold_int32_biases(model: Any) -> int:
    """Replace each DequantizeLinear of a constant INT32 tensor (onnxruntime's quantized conv/gemm biases) by the
    FP32 constant it computes, ``(x - zero_point) * scale``, in place; returns how many were folded.

    TensorRT adds biases in floating point and takes INT8 Q/DQ only; the values are those onnxruntime's INT8 model
    dequantizes (to float32 rounding), so the activation and weight quantization of the export's model is kept as
    it is. A node whose scale or zero point is not a constant initializer is left alone (the Q/DQ check then names
    it). The folded nodes' own inputs are removed only when nothing else in the graph uses them.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    folded = []
    for n in model.graph.node:
        x = inits.get(n.input[0]) if n.op_type == "DequantizeLinear" else None
        if x is None or x.data_type != onnx.TensorProto.INT32 or any(i and i not in inits for i in n.input[1:]):
            continue
        q = numpy_helper.to_array(x).astype(np.float64)
        scale = numpy_helper.to_array(inits[n.input[1]]).astype(np.float64)
        zp = (numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
              if len(n.input) > 2 and n.input[2] else np.zeros_like(scale))
        if scale.ndim == 1 and q.ndim > 1:  # per-axis: broadcast along the node's axis
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % q.ndim
            shape = [1] * q.ndim
            shape[axis] = -1
            scale, zp = scale.reshape(shape), zp.reshape(shape)
        model.graph.initializer.append(numpy_helper.from_array(((q - zp) * scale).astype(np.float32), n.output[0]))
        folded.append(n)
    for n in folded:
        model.graph.node.remove(n)
    _drop_unused(model, {i for n in folded for i in n.input if i})
    return len(folded)


def _names_used(graph: Any) -> set[str]:
    """Every tensor name a node of ``graph`` or of its subgraphs reads, and its inputs and outputs."""
    used = {i.name for i in graph.input} | {o.name for o in graph.output}
    for n in graph.node:
        used.update(n.input)
        for a in n.attribute:
            for g in [a.g] if a.HasField("g") else list(a.graphs):
                used |= _names_used(g)
    return used


def _drop_unused(model: Any, candidates: set[str]) -> None:
    """Remove the initializers named in ``candidates`` that nothing in the model uses any more."""
    gone = candidates - _names_used(model.graph)
    keep = [t for t in model.graph.initializer if t.name not in gone]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
