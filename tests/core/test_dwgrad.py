"""The faster depthwise weight gradient: the same forward and input gradient, the weight gradient to float32
precision, and the model left as it was on exit."""

import pytest
import torch
import torch.nn.functional as F
from timm.layers import create_conv2d
from torch import nn

from waferflow.models.dwgrad import depthwise_weight_grad, fast_depthwise_grad


def _aten_grads(g, x, w, stride, padding, dilation):
    return torch.ops.aten.convolution_backward(g, x, w, None, list(stride), list(padding), list(dilation), False,
                                               [0, 0], w.shape[0], [True, True, False])[:2]


@pytest.mark.parametrize("size,k,stride,dilation", [(2, 5, 1, 1), (4, 5, 1, 1), (4, 5, 2, 1), (5, 3, 2, 1),
                                                    (9, 3, 1, 2), (3, 3, 1, 1), (12, 5, 1, 1)])
def test_weight_grad_matches_onednn(size, k, stride, dilation):
    torch.manual_seed(0)
    c = 24
    x = torch.randn(8, c, size, size).contiguous(memory_format=torch.channels_last)
    w = torch.randn(c, 1, k, k)
    pad = dilation * (k // 2)
    out = F.conv2d(x, w, None, stride, pad, dilation, c)
    g = torch.randn_like(out)
    conf = (stride,) * 2, (pad,) * 2, (dilation,) * 2
    exact = _aten_grads(g.double(), x.double(), w.double(), *conf)[1]  # float64: the reference for both
    onednn = _aten_grads(g, x, w, *conf)[1]
    got = depthwise_weight_grad(x, g, (k, k), *conf)
    assert got.shape == exact.shape and got.dtype == torch.float32
    err, err_onednn = (got.double() - exact).abs().max(), (onednn.double() - exact).abs().max()
    assert err <= max(2 * err_onednn, 1e-5 * exact.abs().max())


def _grads(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    y.square().sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("size", [4, 16])
def test_block_changes_only_small_maps_weight_grads(size):
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False),  # 4x4 output under a 5x5 kernel: the fast path
        create_conv2d(8, 8, 3, stride=2, padding="same", depthwise=True),  # timm's Conv2dSame
        nn.Conv2d(8, 4, 1),
    ).to(memory_format=torch.channels_last)
    assert type(model[1]).__name__ == "Conv2dSame"
    x = torch.randn(6, 8, size, size).contiguous(memory_format=torch.channels_last)
    y0, gx0, gp0 = _grads(model, x)
    model.zero_grad()
    with fast_depthwise_grad(model) as n:
        assert n == 2
        y1, gx1, gp1 = _grads(model, x)
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)  # forward and input gradient: the same oneDNN calls
    assert torch.equal(gp0["2.weight"], gp1["2.weight"]) and torch.equal(gp0["2.bias"], gp1["2.bias"])
    for name in ("0.weight", "1.weight"):
        torch.testing.assert_close(gp1[name], gp0[name], rtol=1e-5, atol=1e-5)
    if size == 16:  # 16x16 and 8x8 outputs are larger than the kernels: oneDNN's weight gradient, bit for bit
        assert torch.equal(gp0["0.weight"], gp1["0.weight"]) and torch.equal(gp0["1.weight"], gp1["1.weight"])
    else:
        assert not torch.equal(gp0["0.weight"], gp1["0.weight"])  # the path did run


def test_model_is_restored_on_exit_and_on_error():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 3, padding=1))
    with fast_depthwise_grad(model) as n:
        assert n == 1 and "forward" in model[0].__dict__ and "forward" not in model[1].__dict__
    assert all("forward" not in m.__dict__ for m in model.modules())
    with pytest.raises(RuntimeError, match="boom"):
        with fast_depthwise_grad(model):
            raise RuntimeError("boom")
    assert all("forward" not in m.__dict__ for m in model.modules())
    with fast_depthwise_grad(model, enabled=False) as n:
        assert n == 0 and "forward" not in model[0].__dict__


def test_bias_grad_and_no_grad_forward():
    torch.manual_seed(2)
    conv = nn.Conv2d(6, 6, 5, padding=2, groups=6, bias=True)
    x = torch.randn(3, 6, 3, 3)
    _, gx0, gp0 = _grads(conv, x)
    conv.zero_grad()
    with fast_depthwise_grad(conv):
        _, gx1, gp1 = _grads(conv, x)
        with torch.no_grad():
            assert torch.equal(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 2, 1, 6))
    torch.testing.assert_close(gp1["bias"], gp0["bias"])
    torch.testing.assert_close(gp1["weight"], gp0["weight"], rtol=1e-5, atol=1e-5)
    assert torch.equal(gx0, gx1)


def test_lite0_small_stages_take_the_path():
    import timm

    model = timm.create_model("tf_efficientnet_lite0", num_classes=3, pretrained=False)
    with fast_depthwise_grad(model) as n:
        assert n == sum(1 for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1)


def test_frozen_input_small_map():
    """Gradual unfreezing's first phases: the layer trains, its input (a frozen block's output) needs no gradient."""
    torch.manual_seed(3)
    conv = nn.Conv2d(8, 8, 5, padding=2, groups=8, bias=False)
    x = torch.randn(2, 8, 2, 2)
    conv(x).square().sum().backward()
    ref = conv.weight.grad.clone()
    conv.zero_grad()
    with fast_depthwise_grad(conv):
        conv(x).square().sum().backward()
    torch.testing.assert_close(conv.weight.grad, ref, rtol=1e-5, atol=1e-5)
