"""Test-time augmentation as an ONNX graph: one deployable file that averages the model over label-preserving views.

``wrap_tta(src, dst, symmetries)`` takes an exported model (``model.onnx`` or ``model.int8.onnx``: input ``input``
[N, C, S, S], output ``logits`` [N, K]) and writes the same graph with a head and a tail around it::

    input -> V views (Slice with step -1 = flip, Transpose = swap H/W) -> Concat [V*N, C, S, S]
          -> the model, unchanged -> Softmax -> Reshape [V, N, K] -> ReduceMean over views -> Max(., 1e-12) -> Log

so its ``logits`` are log(mean probability over the views): the same numbers as
``waferflow.predictors.tta_predictor`` around the source model (the exporter checks that on the test maps), and
argmax / softmax of them are the averaged prediction. The views are ``tta_views(symmetries)``: only the flips and
rotations the taxonomy allows (8 for WM-811K classes, 4 for seed20). Because the views live in the graph, everything
that runs an ONNX file (onnxruntime, the raw-map pyfunc, ``mlflow models serve``, the latency benchmark) runs the
augmented model with no other code, and the latency gate times what is deployed: V maps per request.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from waferflow.errors import ConfigError, ModelFormatError
from waferflow.predictors import tta_views

_INT64_MIN = -(2**63) + 1  # Slice's "to the start" end for a negative step
PREFIX = "tta_"


def _flip(nodes: list, src: str, axis: int, out: str) -> str:
    from onnx import helper

    nodes.append(helper.make_node("Slice", [src, "tta_start", "tta_end", f"tta_axis{axis}", "tta_step"], [out]))
    return out


def _transpose(nodes: list, src: str, out: str) -> str:
    from onnx import helper

    nodes.append(helper.make_node("Transpose", [src], [out], perm=[0, 1, 3, 2]))
    return out


def _view_ops(view: tuple[int, bool, bool]) -> list[str]:
    """The ops of one view ``(rot90 k, hflip, vflip)`` in numpy's order: ``np.rot90(x, k, axes=(-2, -1))``
    (k=1: flip W then transpose; k=2: flip H and W; k=3: transpose then flip W), then hflip (W), then vflip (H)."""
    k, h, v = view
    ops = {0: [], 1: ["W", "T"], 2: ["H", "W"], 3: ["T", "W"]}[k]
    return ops + (["W"] if h else []) + (["H"] if v else [])


def _head(in_name: str, views: list[tuple[int, bool, bool]]) -> tuple[list, str]:
    """Nodes from ``in_name`` to the concatenated views, and the name of their output."""
    from onnx import helper

    nodes: list = []
    outs = []
    for i, view in enumerate(views):
        cur = in_name
        for j, op in enumerate(_view_ops(view)):
            name = f"{PREFIX}v{i}_{j}"
            cur = _transpose(nodes, cur, name) if op == "T" else _flip(nodes, cur, 3 if op == "W" else 2, name)
        if cur == in_name:  # the identity view
            cur = f"{PREFIX}v{i}"
            nodes.append(helper.make_node("Identity", [in_name], [cur]))
        outs.append(cur)
    nodes.append(helper.make_node("Concat", outs, [f"{PREFIX}views"], axis=0))
    return nodes, f"{PREFIX}views"


def _tail(view_logits: str, out_name: str, opset: int) -> list:
    """Nodes from the views' logits [V*N, K] to log(mean softmax) [N, K] named ``out_name``."""
    from onnx import helper

    mean_inputs = [f"{PREFIX}by_view", "tta_mean_axes"] if opset >= 18 else [f"{PREFIX}by_view"]
    mean_attrs = {"keepdims": 0} if opset >= 18 else {"keepdims": 0, "axes": [0]}
    return [
        helper.make_node("Softmax", [view_logits], [f"{PREFIX}probs"], axis=1),
        helper.make_node("Reshape", [f"{PREFIX}probs", "tta_shape"], [f"{PREFIX}by_view"]),
        helper.make_node("ReduceMean", mean_inputs, [f"{PREFIX}mean"], **mean_attrs),
        helper.make_node("Max", [f"{PREFIX}mean", "tta_floor"], [f"{PREFIX}floored"]),
        helper.make_node("Log", [f"{PREFIX}floored"], [out_name]),
    ]


def _constants(n_views: int, n_classes: int) -> list:
    import numpy as np
    from onnx import numpy_helper

    consts = {"tta_start": [-1], "tta_end": [_INT64_MIN], "tta_axis2": [2], "tta_axis3": [3], "tta_step": [-1],
              "tta_shape": [n_views, -1, n_classes], "tta_mean_axes": [0]}
    out = [numpy_helper.from_array(np.asarray(v, dtype=np.int64), k) for k, v in consts.items()]
    out.append(numpy_helper.from_array(np.asarray(1e-12, dtype=np.float32), "tta_floor"))
    return out


def _rewire(graph, old: str, new: str) -> None:
    """Every node input named ``old`` now reads ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def wrap_tta(src: str | os.PathLike, dst: str | os.PathLike, symmetries: Sequence[str]) -> dict:
    """Write ``dst``: ``src`` with test-time augmentation over ``symmetries`` inside the graph (module doc).

    Returns:
        ``{"file", "source", "symmetries", "views"}`` for ``export.json``.

    Raises:
        ConfigError: the symmetries give one view only (nothing to average) or are unknown.
        ModelFormatError: ``src`` is not a waferflow export (one input, one [N, K] output), or the result is invalid.
    """
    import onnx
    from onnx import helper

    views = tta_views(symmetries)
    if len(views) < 2:
        raise ConfigError(f"TTA needs label-preserving symmetries; {list(symmetries)} give one view, nothing to "
                          "average. Train with symmetries (train.symmetries) or export without --tta")
    src, dst = Path(src), Path(dst)
    m = onnx.load(str(src))
    g = m.graph
    if len(g.input) != 1 or len(g.output) != 1:
        raise ModelFormatError(f"{src}: TTA wraps a model with one input and one output, found {len(g.input)} and "
                               f"{len(g.output)}; pass a model written by `waferflow export`")
    in_name, out_name = g.input[0].name, g.output[0].name
    dims = g.output[0].type.tensor_type.shape.dim
    n_classes = dims[1].dim_value if len(dims) == 2 else 0
    if n_classes <= 0:
        raise ModelFormatError(f"{src}: output {out_name!r} must be [batch, classes] with a fixed class count")
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    view_logits = f"{PREFIX}view_logits"
    for node in g.node:  # the model's own output becomes an intermediate
        for i, name in enumerate(node.output):
            if name == out_name:
                node.output[i] = view_logits
    _rewire(g, out_name, view_logits)
    head, views_name = _head(in_name, views)
    _rewire(g, in_name, views_name)
    nodes = head + list(g.node) + _tail(view_logits, out_name, opset)
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(_constants(len(views), n_classes))
    helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props},
                               "tta_symmetries": json.dumps(list(symmetries)), "tta_views": str(len(views)),
                               "tta_source": src.name})
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        raise ModelFormatError(f"the TTA graph around {src} is invalid: {e}") from None
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, dst)
    return {"file": dst.name, "source": src.name, "symmetries": list(symmetries), "views": len(views)}
