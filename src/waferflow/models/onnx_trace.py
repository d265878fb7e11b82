"""A torch module traced to an ONNX graph: the one place that calls ``torch.onnx.export``.

Both the export stage (``waferflow.export.onnx_export``, a file with metadata and a parity check) and the in-memory
onnxruntime predictor of a live model (``waferflow.predictors.runtime.onnxruntime_model_predictor``) trace through
:func:`trace_to_onnx`, so the two see the same graph. It lives with the models because the predictors layer may not
import ``export``.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import warnings
from typing import Any, Iterator

from waferflow.errors import ConfigError

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_OPSET = 17


def _static_same_conv(mod: Any, pads: tuple[int, int, int, int], x: Any) -> Any:
    import torch.nn.functional as F

    return F.conv2d(F.pad(x, pads), mod.weight, mod.bias, mod.stride, 0, mod.dilation, mod.groups)


@contextlib.contextmanager
def static_same_padding(model: Any, example: Any) -> Iterator[int]:
    """Within the block, timm's ``Conv2dSame`` layers pad by constants computed for ``example``'s spatial size.

    ``Conv2dSame`` (TF "SAME" padding, the ``tf_*`` backbones) computes its padding from the input shape on every
    call; traced, that is about 30 Shape/Gather/Ceil/... ops per layer around each Pad, run on every inference.
    The exported model's spatial size is fixed (only the batch is dynamic), so the padding is a constant.
    Yields the number of layers changed; their own ``forward`` is back after the block.
    """
    import torch
    from timm.layers.conv2d_same import Conv2dSame
    from timm.layers.padding import get_same_padding

    sizes: dict[Any, tuple[int, int]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: sizes.__setitem__(mod, tuple(args[0].shape[-2:])))
             for m in model.modules() if isinstance(m, Conv2dSame)]
    try:
        if hooks:
            with torch.no_grad():
                model(example)
    finally:
        for h in hooks:
            h.remove()
    for m, (ih, iw) in sizes.items():
        (kh, kw), (sh, sw), (dh, dw) = m.weight.shape[-2:], m.stride, m.dilation
        ph, pw = get_same_padding(int(ih), kh, sh, dh), get_same_padding(int(iw), kw, sw, dw)
        m.forward = functools.partial(_static_same_conv, m, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    try:
        yield len(sizes)
    finally:
        for m in sizes:
            del m.forward


def trace_to_onnx(model: Any, dummy: Any, f: str | os.PathLike | io.BytesIO, opset: int,
                  exporter: str = "torchscript") -> None:
    """Export ``model`` (CPU, float32, eval) for inputs shaped like ``dummy`` with a dynamic batch axis to ``f``.

    Input ``input``, output ``logits``, Conv2dSame padding made constant (:func:`static_same_padding`). ``f`` is a
    path, or a ``BytesIO`` for the TorchScript exporter.

    Raises:
        ConfigError: an unknown exporter, or the dynamo exporter with a ``BytesIO``.
    """
    import torch

    if exporter not in ("torchscript", "dynamo"):
        raise ConfigError(f"exporter must be 'torchscript' or 'dynamo', got {exporter!r}")
    if exporter == "dynamo" and isinstance(f, io.BytesIO):
        raise ConfigError("the dynamo exporter writes to a file path, not to memory")
    target = f if isinstance(f, io.BytesIO) else str(f)
    with warnings.catch_warnings(), static_same_padding(model, dummy):
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
        if exporter == "torchscript":
            torch.onnx.export(model, (dummy,), target, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False, do_constant_folding=True,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
        else:
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(model, (dummy,), target, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=max(opset, 18), dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch},), verbose=False)
