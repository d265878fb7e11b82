"""INT8 quantization with onnxruntime (static QDQ S8S8 or U8S8 per-channel; dynamic as the recorded fallback) and pruning.

Which layers stay FP32 is chosen by measured sensitivity in :mod:`waferflow.export.sensitivity`.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError
from waferflow.predictors import batches_for
from waferflow.predictors.int8_host import REQUIRES_KEY, requires_for

log = logging.getLogger(__name__)


def calibration_indices(ds: WaferDataset, n: int, seed: int = 0) -> np.ndarray:
    """``n`` map indices for calibration, stratified by class when labeled (every class present is drawn).

    Raises:
        DataError: ``n`` < 1 or the dataset is empty.
    """
    if n < 1:
        raise DataError(f"calibration_maps must be >= 1, got {n}")
    if len(ds) == 0:
        raise DataError("the calibration dataset is empty; pass maps from the training split")
    rng = np.random.default_rng(seed)
    n = min(n, len(ds))
    if not ds.labeled:
        return np.sort(rng.choice(len(ds), n, replace=False))
    # proportional allocation with at least one per class present, then trim/fill at random
    picked: list[int] = []
    for c in np.unique(ds.labels):
        members = np.flatnonzero(ds.labels == c)
        k = max(1, int(round(n * len(members) / len(ds))))
        picked.extend(rng.choice(members, min(k, len(members)), replace=False).tolist())
    picked_arr = np.unique(np.asarray(picked))
    if len(picked_arr) > n:
        picked_arr = rng.choice(picked_arr, n, replace=False)
    elif len(picked_arr) < n:
        rest = np.setdiff1d(np.arange(len(ds)), picked_arr)
        picked_arr = np.concatenate([picked_arr, rng.choice(rest, n - len(picked_arr), replace=False)])
    return np.sort(picked_arr)


def calibration_batches(ds: WaferDataset, spec: Any, n: int, batch_size: int = 32, seed: int = 0
                        ) -> Iterator[np.ndarray]:
    """Preprocessed float32 batches [B, C, S, S] of ``n`` calibration maps (the last batch may be smaller)."""
    idx = calibration_indices(ds, n, seed)
    for _, x in batches_for(ds, spec, batch_size, indices=idx):
        yield x


def held_out_batches(ds: WaferDataset, spec: Any, n_calib: int, n: int, batch_size: int = 64, seed: int = 0
                     ) -> Iterator[np.ndarray]:
    """Preprocessed batches of up to ``n`` maps of ``ds`` that the calibration (same ``n_calib``, ``seed``) skips."""
    rest = np.setdiff1d(np.arange(len(ds)), calibration_indices(ds, n_calib, seed))
    if len(rest) == 0:
        return
    idx = np.sort(np.random.default_rng(seed + 1).choice(rest, min(n, len(rest)), replace=False))
    for _, x in batches_for(ds, spec, batch_size, indices=idx):
        yield x


def _reader(batches: list[np.ndarray], input_name: str) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict | None:
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self) -> None:
            self._it = iter(batches)

    return _Reader()


CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
INT8_FORMATS = {"s8s8": "QDQ, S8S8 (symmetric int8 activations, per-channel int8 weights)",
                "u8s8": "QDQ, U8S8 (asymmetric uint8 activations, per-channel int8 weights)"}


def _calib_method(calibration: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    if calibration not in CALIBRATION_METHODS:
        raise ConfigError(f"int8 calibration must be one of {list(CALIBRATION_METHODS)}, got {calibration!r}")
    return {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
            "entropy": CalibrationMethod.Entropy}[calibration]


def preprocess_for_quant(fp32_path: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """``quant_pre_process`` (shape inference + graph cleanup); FP32-node names refer to this graph."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(fp32_path), str(out_path), skip_symbolic_shape=False)
    return Path(out_path)


def static_qdq(pre_path: str | os.PathLike, out_path: str | os.PathLike, calib: list[np.ndarray],
               calibration: str = "minmax", reduce_range: bool = True, fp32_nodes: Sequence[str] = (),
               input_name: str = "input", int8_format: str = "s8s8", quantize_bias: bool = True) -> None:
    """Static QDQ quantization of a pre-processed model, per-channel int8 weights; ``fp32_nodes`` stay in FP32.

    ``s8s8``: symmetric int8 activations. ``u8s8``: asymmetric uint8 activations, about 2x faster on x86 (and,
    with 8-bit weights on a VNNI CPU, the most accurate form measured; ``waferflow.predictors.int8_host``); the
    ReLU6 ``Clip`` nodes are kept (``QDQKeepRemovableActivations``): removed, as the quantizer does by default for
    asymmetric activations, the BN-folded EfficientNet-Lite0 lost 50-70 points even with graph optimizations off.
    ``reduce_range`` (7-bit weights) keeps the int16 pair sums of x86 INT8 kernels without VNNI (AVX2
    ``vpmaddubsw``) from saturating: with 8-bit weights a real-map champion lost 59.6 points on an AVX2-only CPU.
    ``quantize_bias=False`` keeps biases in FP32 (no INT32 dequantization), as TensorRT's Q/DQ needs.

    Raises:
        ConfigError: an unknown ``int8_format``.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if int8_format not in INT8_FORMATS:
        raise ConfigError(f"int8 format must be one of {sorted(INT8_FORMATS)}, got {int8_format!r}")
    u8 = int8_format == "u8s8"
    quantize_static(str(pre_path), str(out_path), _reader(calib, input_name), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=reduce_range,
                    activation_type=QuantType.QUInt8 if u8 else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=_calib_method(calibration),
                    nodes_to_exclude=list(fp32_nodes),
                    extra_options={"ActivationSymmetric": not u8, "QDQKeepRemovableActivations": True,
                                   "QuantizeBias": bool(quantize_bias)})


def quantizable_nodes(pre_path: str | os.PathLike) -> dict[str, int]:
    """``{node name: weight parameter count}`` of the Conv/Gemm/MatMul nodes of a pre-processed model."""
    import onnx

    g = onnx.load(str(pre_path)).graph
    inits = {i.name: int(np.prod(i.dims)) for i in g.initializer}
    return {n.name: inits.get(n.input[1], 0) for n in g.node
            if n.op_type in ("Conv", "Gemm", "MatMul") and len(n.input) > 1}


def output_layers(pre_path: str | os.PathLike) -> list[str]:
    """The last Conv/Gemm/MatMul nodes before each graph output: the classifier, which the ``auto`` choice keeps FP32.

    Walks back from the outputs through weightless ops, so an ensemble's heads (``LogSoftmax`` -> ``ReduceLogSumExp``
    after them) count as well as a single model's, whose classifier writes the output itself. On a real-map champion,
    quantizing the classifier alone cost 0.37 of a 0.74-point drop (U8S8, 8-bit weights, 6,225 development maps),
    for 0.3% of the weights and almost none of the time.
    """
    import onnx

    g = onnx.load(str(pre_path)).graph
    known = quantizable_nodes(pre_path)
    producer = {t: n for n in g.node for t in n.output}
    found, seen, todo = set(), set(), [o.name for o in g.output]
    while todo:
        node = producer.get(todo.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.name in known:
            found.add(node.name)
        else:
            todo.extend(node.input)
    return [n.name for n in g.node if n.name in found]


def check_fp32_nodes(pre_path: str | os.PathLike, fp32_nodes: Sequence[str]) -> list[str]:
    """The names, validated against the model's quantizable nodes.

    Raises:
        ConfigError: a name is not a Conv/Gemm/MatMul node of the model (onnxruntime would silently ignore it).
    """
    known = quantizable_nodes(pre_path)
    unknown = [n for n in fp32_nodes if n not in known]
    if unknown:
        raise ConfigError(f"FP32 layers {unknown[:5]} are not Conv/Gemm/MatMul nodes of this model (it has "
                          f"{len(known)}, e.g. {sorted(known)[:3]}); pass names from export.json int8.fp32_layers, "
                          "or 'auto' / 'none'")
    return list(fp32_nodes)


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib: list[np.ndarray] | None,
                  method: str = "static", input_name: str = "input", calibration: str = "minmax",
                  reduce_range: bool = True, fp32_nodes: Sequence[str] = (), int8_format: str = "s8s8") -> dict:
    """Quantize an ONNX model to INT8.

    ``static``: ``quant_pre_process`` then :func:`static_qdq` (QDQ, per-channel QInt8 weights with
    ``reduce_range``, ``int8_format`` activations calibrated on ``calib``; ``fp32_nodes`` stay FP32). If static
    quantization raises, dynamic quantization (``quantize_dynamic``, per-channel) is used and the reason is
    recorded. ``dynamic`` asks for it directly.

    ``calibration`` picks how static quantization sets activation ranges: ``minmax`` (the observed range),
    ``percentile`` (99.999th percentile of |x|, clips rare outliers) or ``entropy`` (KL-optimal threshold).

    Returns:
        ``{"method": "static_qdq_per_channel" | "dynamic_per_channel", "fallback_reason": str | None,
        "calibration_batches": int, "calibration": str, "format", "reduce_range", "fp32_nodes"}``. Metadata of
        the FP32 model is copied to the INT8 model.

    Raises:
        ConfigError: unknown method or calibration, or an FP32 node the model does not have.
        DataError: static without calibration data.
    """
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_path = Path(out_path)
    if method not in ("static", "dynamic"):
        raise ConfigError(f"int8 method must be 'static' or 'dynamic', got {method!r}")
    if int8_format not in INT8_FORMATS:
        raise ConfigError(f"int8 format must be one of {sorted(INT8_FORMATS)}, got {int8_format!r}")
    _calib_method(calibration)
    reason = None
    used = None
    with tempfile.TemporaryDirectory(prefix="wf-quant-") as td:
        if method == "static":
            if not calib:
                raise DataError("static INT8 quantization needs calibration maps from the training split")
            pre = preprocess_for_quant(fp32_path, Path(td) / "pre.onnx")
            fp32_nodes = check_fp32_nodes(pre, fp32_nodes)
            try:
                static_qdq(pre, out_path, calib, calibration, reduce_range, fp32_nodes, input_name, int8_format)
                used = "static_qdq_per_channel"
            except Exception as e:  # record why, then use the documented fallback
                reason = f"static quantization failed ({type(e).__name__}: {str(e)[:300]})"
                log.warning("%s; falling back to dynamic quantization", reason)
        if used is None:
            quantize_dynamic(str(fp32_path), str(out_path), per_channel=True, weight_type=QuantType.QInt8,
                             reduce_range=reduce_range)
            used = "dynamic_per_channel"
    # keep the deployment metadata with the INT8 file too
    src = onnx.load(str(fp32_path))
    q = onnx.load(str(out_path))
    del q.metadata_props[:]
    props = {p.key: p.value for p in src.metadata_props}
    props["quantization"] = used
    if requires_for(reduce_range):  # 8-bit weights: onnx_session refuses the file on an x86 CPU without VNNI
        props[REQUIRES_KEY] = requires_for(reduce_range)
    onnx.helper.set_model_props(q, props)
    onnx.save(q, str(out_path))
    static = used.startswith("static")
    return {"method": used, "fallback_reason": reason, "calibration_batches": len(calib or []),
            "calibration": calibration if static else None, "format": INT8_FORMATS[int8_format] if static else "dynamic",
            "reduce_range": bool(reduce_range), "fp32_nodes": list(fp32_nodes) if static else []}


def prune_model(model: Any, amount: float) -> dict:
    """Magnitude pruning in place: ``l1_unstructured`` on every Conv/Linear weight, then ``prune.remove``.

    Returns:
        ``{"amount", "pruned_params", "total_params", "sparsity"}`` (sparsity over the pruned tensors).
    """
    import torch
    from torch.nn.utils import prune

    if not 0.0 < amount < 1.0:
        raise ConfigError(f"prune amount must be in (0, 1), got {amount}")
    zeros = total = 0
    # l1_unstructured flattens weights with .view(-1): needs contiguous (not channels-last) tensors
    model.to(memory_format=torch.contiguous_format)
    for mod in model.modules():
        if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
            prune.l1_unstructured(mod, name="weight", amount=amount)
            prune.remove(mod, "weight")
            zeros += int((mod.weight == 0).sum())
            total += mod.weight.numel()
    if total == 0:
        raise ConfigError("prune: the model has no Conv2d/Linear weights to prune")
    return {"amount": float(amount), "pruned_params": zeros, "total_params": total, "sparsity": zeros / total}
