import numpy as np
import pytest
import torch
import torch.nn.functional as F

from waferflow.errors import ConfigError
from waferflow.train.losses import FocalLoss, balanced_sample_weights, build_loss, class_weights


def test_class_weights():
    y = np.array([0] * 90 + [1] * 10)
    assert class_weights(y, 3, "none") is None
    inv = class_weights(y, 3, "inverse")
    sq = class_weights(y, 3, "sqrt")
    assert inv[2] == 0 and sq[2] == 0  # absent class
    assert inv[1] / inv[0] == pytest.approx(9.0) and sq[1] / sq[0] == pytest.approx(3.0)
    assert inv[:2].mean() == pytest.approx(1.0)
    with pytest.raises(ConfigError):
        class_weights(y, 3, "log")


def test_focal_reduces_to_ce_and_downweights_easy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 4), torch.randint(0, 4, (16,))
    w = torch.tensor([1.0, 2.0, 0.5, 1.5])
    assert FocalLoss(0.0)(logits, y) == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert FocalLoss(0.0, weight=w)(logits, y) == pytest.approx(float(F.cross_entropy(logits, y, weight=w)), rel=1e-5)
    assert FocalLoss(0.0, label_smoothing=0.1)(logits, y) == pytest.approx(
        float(F.cross_entropy(logits, y, label_smoothing=0.1)), rel=1e-5)
    easy = torch.tensor([[8.0, 0, 0, 0]])
    assert FocalLoss(2.0)(easy, torch.tensor([0])) < 0.01 * F.cross_entropy(easy, torch.tensor([0]))
    with pytest.raises(ConfigError):
        build_loss("hinge", None)


def test_balanced_sampler_draws_classes_equally():
    y = np.array([0] * 95 + [1] * 5)
    w = balanced_sample_weights(y, 2)
    draws = y[torch.multinomial(w, 20000, replacement=True, generator=torch.Generator().manual_seed(0)).numpy()]
    assert abs(draws.mean() - 0.5) < 0.02
