"""A faster weight gradient for depthwise convolutions whose output is smaller than their kernel (CPU training).

oneDNN computes the weight gradient of a depthwise convolution slowly when the feature map is smaller than the
kernel, so that most of each window is padding: EfficientNet-Lite0's last stages at 64 px (2x2 and 4x4 maps under
5x5 and 3x3 kernels) took 14-28 ms each per 64-map step on a 2-core AVX2 host, against 1-4 ms summed over the
kernel's offsets here (161 ms against 21 ms over the nine layers, ``benchmarks/bench_dwgrad.py --layers``). :func:`fast_depthwise_grad` routes such layers' weight
gradient through :func:`depthwise_weight_grad` while it is active; their forward pass and input gradient, and
every other layer, are computed exactly as before (the same oneDNN calls). The weight gradient itself agrees with
oneDNN's to about 1e-6 relative (another summation order), so a run trained with it is deterministic but not
bit-identical to one trained without it (``TrainConfig.fast_depthwise_grad``).
"""

from __future__ import annotations

import contextlib
import types
from typing import Iterator

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from timm.layers.padding import pad_same
from torch import nn


def depthwise_weight_grad(x: torch.Tensor, grad_out: torch.Tensor, kernel: tuple[int, int],
                          stride: tuple[int, int], padding: tuple[int, int],
                          dilation: tuple[int, int]) -> torch.Tensor:
    """Weight gradient [C, 1, kh, kw] of a depthwise convolution, summed offset by offset over the kernel."""
    kh, kw = kernel
    (sh, sw), (dh, dw) = stride, dilation
    ho, wo = grad_out.shape[-2:]
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0])).permute(0, 2, 3, 1)  # N H W C
    g = grad_out.permute(0, 2, 3, 1)
    out = x.new_empty(kh, kw, x.shape[1])
    for a in range(kh):
        for b in range(kw):
            xs = xp[:, a * dh: a * dh + sh * (ho - 1) + 1: sh, b * dw: b * dw + sw * (wo - 1) + 1: sw, :]
            out[a, b] = (xs * g).sum((0, 1, 2))
    return out.permute(2, 0, 1).unsqueeze(1)


class _DepthwiseConv(torch.autograd.Function):
    """F.conv2d forward; oneDNN input gradient; the weight gradient by offsets where the output is small."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.conf = (stride, padding, dilation, bias is not None)
        return F.conv2d(x, weight, bias, stride, padding, dilation, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_out):
        x, weight = ctx.saved_tensors
        stride, padding, dilation, has_bias = ctx.conf
        kernel = tuple(weight.shape[-2:])
        small = grad_out.shape[-2] < kernel[0] and grad_out.shape[-1] < kernel[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        mask = [need_x, need_w and not small, need_b and has_bias]
        gx, gw, gb = torch.ops.aten.convolution_backward(
            grad_out, x, weight, [weight.shape[0]] if has_bias else None, list(stride), list(padding),
            list(dilation), False, [0, 0], weight.shape[0], mask)
        if need_w and small:
            gw = depthwise_weight_grad(x, grad_out, kernel, stride, padding, dilation)
        return gx, gw, gb, None, None, None


def _is_depthwise(m: nn.Module) -> bool:
    return (type(m) in (nn.Conv2d, Conv2dSame) and m.groups > 1 and m.groups == m.in_channels == m.out_channels
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


def _forward(self: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    padding = self.padding
    if type(self) is not nn.Conv2d:  # timm's Conv2dSame: TF "same" padding, asymmetric where needed
        x, padding = pad_same(x, self.weight.shape[-2:], self.stride, self.dilation), (0, 0)
    return _DepthwiseConv.apply(x, self.weight, self.bias, self.stride, padding, self.dilation)


@contextlib.contextmanager
def fast_depthwise_grad(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, ``model``'s depthwise convolutions take the faster weight gradient; yields how many.

    Only the instance's ``forward`` is replaced, and it is removed again on exit (also on an error), so a model that
    leaves the block exports and pickles as before.
    """
    mods = [m for m in model.modules() if _is_depthwise(m)] if enabled else []
    for m in mods:
        m.forward = types.MethodType(_forward, m)
    try:
        yield len(mods)
    finally:
        for m in mods:
            del m.forward
