"""Test-time augmentation as an ONNX graph: one deployable file that averages the model over label-preserving views.

``wrap_tta(src, dst, symmetries)`` takes an exported model (``model.onnx`` or ``model.int8.onnx``: input ``input``
[N, C, S, S], output ``logits`` [N, K]) and writes the same graph with a head and a tail around it::

    input -> [each angle of ``rotations``: Reshape [N, C, S*S] -> Gather -> Where(outside, off-wafer) -> Reshape]
          -> V views of each (Slice with step -1 = flip, Transpose = swap H/W) -> Concat [V*N, C, S, S]
          -> the model, unchanged -> Softmax -> Reshape [V, N, K] -> ReduceMean over views -> Max(., 1e-12) -> Log

so its ``logits`` are log(mean probability over the views): the same numbers as
``waferflow.predictors.tta_predictor`` around the source model (the exporter checks that on the test maps), and
argmax / softmax of them are the averaged prediction. The views are ``tta_views(symmetries)``: only the flips and
rotations the taxonomy allows (8 for WM-811K classes, 4 for seed20), of the map as it is and, with ``rotations``, of
the map turned by each further angle exactly as training's free rotation turns maps (``waferflow.predictors.rotation``:
a fixed gather per angle). Because the views live in the graph, everything
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


def _rotated(nodes: list, inits: list, in_name: str, angle: float, size: int, pad: Sequence[float], i: int) -> str:
    """Nodes turning ``in_name`` [N, C, S, S] by ``angle`` as training does: a Gather of the flattened pixels, with
    the pixels from outside the map set to ``pad`` (the preprocessed off-wafer value per channel)."""
    import numpy as np
    from onnx import helper, numpy_helper

    from waferflow.predictors.rotation import gather_index

    idx = gather_index(size, angle)
    outside = (idx == size * size).reshape(1, 1, -1)
    p = f"{PREFIX}r{i}"
    inits += [numpy_helper.from_array(np.minimum(idx, size * size - 1).astype(np.int64), f"{p}_index"),
              numpy_helper.from_array(outside, f"{p}_outside"),
              numpy_helper.from_array(np.asarray(pad, np.float32).reshape(1, -1, 1), f"{p}_pad")]
    nodes += [helper.make_node("Reshape", [in_name, "tta_flat_shape"], [f"{p}_flat"]),
              helper.make_node("Gather", [f"{p}_flat", f"{p}_index"], [f"{p}_gathered"], axis=2),
              helper.make_node("Where", [f"{p}_outside", f"{p}_pad", f"{p}_gathered"], [f"{p}_turned"]),
              helper.make_node("Reshape", [f"{p}_turned", "tta_map_shape"], [p])]
    return p


def _head(in_name: str, views: list[tuple[int, bool, bool]], rotations: Sequence[float] = (), size: int = 0,
          pad: Sequence[float] = ()) -> tuple[list, list, str]:
    """Nodes (and initializers) from ``in_name`` to the concatenated views of the map and of each turned map, and
    the name of their output."""
    from onnx import helper

    nodes: list = []
    inits: list = []
    sources = [in_name] + [_rotated(nodes, inits, in_name, a, size, pad, i) for i, a in enumerate(rotations)]
    outs = []
    for s, src in enumerate(sources):
        for i, view in enumerate(views):
            cur = src
            for j, op in enumerate(_view_ops(view)):
                name = f"{PREFIX}s{s}v{i}_{j}"
                cur = _transpose(nodes, cur, name) if op == "T" else _flip(nodes, cur, 3 if op == "W" else 2, name)
            if cur == in_name:  # the identity view
                cur = f"{PREFIX}v{i}"
                nodes.append(helper.make_node("Identity", [in_name], [cur]))
            outs.append(cur)
    nodes.append(helper.make_node("Concat", outs, [f"{PREFIX}views"], axis=0))
    return nodes, inits, f"{PREFIX}views"


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


def _constants(n_views: int, n_classes: int, size: int = 0) -> list:
    import numpy as np
    from onnx import numpy_helper

    consts = {"tta_start": [-1], "tta_end": [_INT64_MIN], "tta_axis2": [2], "tta_axis3": [3], "tta_step": [-1],
              "tta_shape": [n_views, -1, n_classes], "tta_mean_axes": [0]}
    if size:  # the turned maps' Reshapes
        consts.update(tta_flat_shape=[0, 0, -1], tta_map_shape=[0, 0, size, size])
    out = [numpy_helper.from_array(np.asarray(v, dtype=np.int64), k) for k, v in consts.items()]
    out.append(numpy_helper.from_array(np.asarray(1e-12, dtype=np.float32), "tta_floor"))
    return out


def _rewire(graph, old: str, new: str) -> None:
    """Every node input named ``old`` now reads ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _square_size(g, src: Path) -> int:
    """The fixed S of the graph's input [N, C, S, S] (a free rotation needs it)."""
    dims = [d.dim_value for d in g.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[2] <= 0 or dims[2] != dims[3]:
        raise ModelFormatError(f"{src}: TTA rotations need a fixed square input [N, C, S, S]; found {dims}")
    return int(dims[2])


def wrap_tta(src: str | os.PathLike, dst: str | os.PathLike, symmetries: Sequence[str],
             rotations: Sequence[float] = (), pad: Sequence[float] | None = None) -> dict:
    """Write ``dst``: ``src`` with test-time augmentation over ``symmetries`` inside the graph (module doc), and over
    the map turned by each angle of ``rotations`` (degrees) with ``pad`` (the preprocessed off-wafer value per
    channel, ``rotation_pad(spec)``) where the turn reads outside the map.

    Returns:
        ``{"file", "source", "symmetries", "rotations", "views"}`` for ``export.json``.

    Raises:
        ConfigError: the symmetries give one view only (nothing to average) or are unknown; bad rotations.
        ModelFormatError: ``src`` is not a waferflow export (one input, one [N, K] output), or the result is invalid.
    """
    import onnx
    from onnx import helper

    from waferflow.predictors.rotation import check_rotations

    rotations = check_rotations(rotations, symmetries)
    if rotations and pad is None:
        raise ConfigError("wrap_tta: rotations need pad, the preprocessed off-wafer value per channel")
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
    size = _square_size(g, src) if rotations else 0
    head, head_inits, views_name = _head(in_name, views, rotations, size, pad or ())
    _rewire(g, in_name, views_name)
    nodes = head + list(g.node) + _tail(view_logits, out_name, opset)
    del g.node[:]
    g.node.extend(nodes)
    n_views = len(views) * (1 + len(rotations))
    g.initializer.extend(_constants(n_views, n_classes, size) + head_inits)
    helper.set_model_props(m, {**{p.key: p.value for p in m.metadata_props},
                               "tta_symmetries": json.dumps(list(symmetries)), "tta_views": str(n_views),
                               "tta_rotations": json.dumps(list(rotations)), "tta_source": src.name})
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        raise ModelFormatError(f"the TTA graph around {src} is invalid: {e}") from None
    tmp = dst.with_name(f".{dst.name}.tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, dst)
    return {"file": dst.name, "source": src.name, "symmetries": list(symmetries), "rotations": list(rotations),
            "views": n_views}
