import pytest
import torch

from waferflow.models import create_model
from waferflow.train.strategies import (
    STRATEGIES,
    Phase,
    apply_phase,
    layer_groups,
    phase_epochs,
    set_train_mode,
)


@pytest.fixture
def r18():
    model, _ = create_model("resnet18", 3, pretrained="none", input_size=16)
    return model


def test_strategies_are_data():
    assert set(STRATEGIES) == {"scratch", "feature_extraction", "full_finetune", "gradual_unfreezing"}
    assert STRATEGIES["scratch"].init == "random"
    fe = STRATEGIES["feature_extraction"]
    assert [p.depth for p in fe.phases] == [0.0] and fe.phases[0].cached_features
    gu = [p.depth for p in STRATEGIES["gradual_unfreezing"].phases]
    assert gu == sorted(gu) and gu[0] == 0 and gu[-1] == 1 and len(gu) >= 3
    for s in STRATEGIES.values():
        eps = phase_epochs(s, 8)
        assert all(e >= 1 for e in eps)
        assert sum(e for e, p in zip(eps, s.phases) if p.epochs is None) == (8 if any(p.epochs is None for p in s.phases) else 0)


def test_layer_groups_resnet18(r18):
    g = layer_groups(r18)
    assert g.head == ["fc.bias", "fc.weight"]
    assert "conv1.weight" in g.backbone[0] and any(n.startswith("layer4") for n in g.backbone[-1])
    assert g.bn_modules["bn1"] == 0
    all_names = {n for grp in g.backbone for n in grp} | set(g.head)
    assert all_names == {n for n, _ in r18.named_parameters()}


def test_head_only_phase_freezes_backbone_and_bn(r18):
    g = layer_groups(r18)
    setup = apply_phase(r18, g, Phase("head", 0.0), lr=1e-3, lr_decay=0.5, weight_decay=0.01)
    trainable = {n for n, p in r18.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert setup.trainable_params == 512 * 3 + 3
    assert "bn1" in setup.frozen_bn and not setup.train_bn
    set_train_mode(r18, setup.frozen_bn)
    assert not r18.bn1.training and not r18.layer4[1].bn2.training
    before = r18.bn1.running_mean.clone()
    r18(torch.randn(4, 3, 16, 16) * 3 + 1)
    assert torch.equal(before, r18.bn1.running_mean)


def test_partial_phase_discriminative_lrs(r18):
    g = layer_groups(r18)
    setup = apply_phase(r18, g, Phase("top", 2 / len(g)), lr=1e-3, lr_decay=0.5, weight_decay=0.01)
    scales = {pg["name"]: pg["lr_scale"] for pg in setup.param_groups}
    top, second = f"group{len(g) - 1}", f"group{len(g) - 2}"
    assert scales == {"head": 1.0, top: 0.5, second: 0.25}
    assert not r18.conv1.weight.requires_grad and r18.layer4[0].conv1.weight.requires_grad
    # no weight decay on biases / norm weights
    for pg in setup.param_groups:
        if pg["weight_decay"]:
            assert all(p.ndim > 1 for p in pg["params"])
    set_train_mode(r18, setup.frozen_bn)
    assert r18.layer4[0].bn1.training and not r18.bn1.training
    full = apply_phase(r18, g, Phase("all", 1.0), lr=1e-3, lr_decay=0.5, weight_decay=0.0)
    assert full.trainable_params == sum(p.numel() for p in r18.parameters()) and not full.frozen_bn
