"""FixMatch-style consistency on unlabeled maps (waferflow.train.consistency): the term, the loop, the students."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from waferflow.config import load_config
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError
from waferflow.models import load_model_dir
from waferflow.profiles import get_profile
from waferflow.train import TrainConfig, train
from waferflow.train.consistency import Consistency

TINY = ["input_size=16", "batch_size=16", "eval_batch_size=64", "num_threads=1", "backbone=resnet18"]


def _cfg(**kw):
    return load_config(TrainConfig, overrides=[*TINY, *(f"{k}={v}" for k, v in kw.items())])


class _Fixed(torch.nn.Module):
    """Logits read off the map: class 0 scores the count of fail dies in the first row, class 1 scores 3, so the
    weak view's prediction is known; records the mode of each call."""

    def __init__(self):
        super().__init__()
        self.modes = []
        self.frozen_bn = torch.nn.BatchNorm2d(1).eval()  # a frozen group's BN: stays in eval mode

    def forward(self, x):
        self.modes.append(self.training)
        first_row = (x[:, 0, 0, :] == 2).float().sum(1)
        return torch.stack([first_row, torch.full_like(first_row, 3.0)], 1)


def test_targets_come_from_the_weak_view_in_eval_mode_and_the_loss_is_masked_weighted_and_averaged():
    maps = torch.ones(4, 8, 8, dtype=torch.uint8)
    maps[0, 0, :] = 2  # 8 fails in row 0: class 0, confident
    maps[1, 0, :3] = 2  # 3 fails: a tie, p = 0.5 (class 0, not confident); no fails: class 1, p = 0.95
    g = torch.Generator().manual_seed(0)
    c = Consistency(maps, (), weight=0.5, threshold=0.9, ratio=2, class_weight=torch.tensor([2.0, 1.0]), generator=g)
    model = _Fixed().train()
    model.frozen_bn.eval()
    target, mask = c.targets(model, lambda x: x[:, None].float(), maps)
    # eval mode for the targets, then every module's mode back as it was
    assert model.modes == [False] and model.training and not model.frozen_bn.training
    assert target.tolist() == [0, 0, 1, 1] and mask.tolist() == [1.0, 0.0, 1.0, 1.0]
    logits = torch.tensor([[0.0, 1.0], [3.0, 0.0], [0.0, 0.0], [1.0, 2.0]])
    want = 0.5 * (2.0 * F.cross_entropy(logits[:1], target[:1]) + F.cross_entropy(logits[2:3], target[2:3])
                  + F.cross_entropy(logits[3:], target[3:])) / 4
    assert torch.isclose(c.loss(logits, target, mask), want)
    assert c.take_rate() == 0.75 and c.take_rate() is None
    assert c.draw(3).shape == (6, 8, 8)  # ratio 2: two unlabeled maps per labeled one


def test_training_with_unlabeled_maps_uses_their_pixels_only_and_reports_the_confident_share(tmp_path, make_lines,
                                                                                                 r18_file,
                                                                                                 monkeypatch):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    pool = make_lines(40, seed=7)
    on = _cfg(strategy="full_finetune", epochs=2, symmetries="hflip,vflip", unlabeled_weight=1.0,
              unlabeled_threshold=0.5)
    train(on, tr, va, tmp_path / "a", weights=r18_file, unlabeled=pool)
    # the pool's labels (and class names) play no part: other labels give the same weights bit for bit
    relabeled = replace(pool, labels=np.zeros(len(pool), dtype=np.int64), class_names=("x", "y"))
    train(on, tr, va, tmp_path / "b", weights=r18_file, unlabeled=relabeled)
    train(_cfg(strategy="full_finetune", epochs=2, symmetries="hflip,vflip"), tr, va, tmp_path / "off",
          weights=r18_file, unlabeled=pool)
    w = {d: torch.load(tmp_path / d / "weights.pt", weights_only=True) for d in ("a", "b", "off")}
    assert all(torch.equal(w["a"][k], w["b"][k]) for k in w["a"])
    assert any(not torch.equal(w["a"][k], w["off"][k]) for k in w["a"] if w["a"][k].is_floating_point())
    # the term itself moves the weights: the same draws and views with its loss held at 0 train other weights
    monkeypatch.setattr(Consistency, "loss", lambda self, logits, target, mask: 0.0 * logits.sum())
    train(on, tr, va, tmp_path / "zero", weights=r18_file, unlabeled=pool)
    zero = torch.load(tmp_path / "zero" / "weights.pt", weights_only=True)
    assert any(not torch.equal(w["a"][k], zero[k]) for k in zero if zero[k].is_floating_point())
    hist = json.loads((tmp_path / "a" / "history.json").read_text())
    assert all(h["unlabeled_confident"] == 1.0 for h in hist)  # 2 classes: every top probability reaches 0.5
    assert "unlabeled_confident" not in json.loads((tmp_path / "off" / "history.json").read_text())[0]
    _, spec = load_model_dir(tmp_path / "a")
    assert spec.extra["train"]["consistency"] == {"unlabeled_maps": 40, "weight": 1.0, "threshold": 0.5,
                                                     "ratio": 1}


def test_head_only_epochs_leave_the_unlabeled_maps_alone(tmp_path, make_lines, r18_file):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    cfg = _cfg(strategy="feature_extraction", epochs=1, unlabeled_weight=1.0)
    train(cfg, tr, va, tmp_path / "fe", weights=r18_file, unlabeled=make_lines(16, seed=7))
    assert json.loads((tmp_path / "fe" / "history.json").read_text())[0]["unlabeled_confident"] is None


def test_unlabeled_weight_without_unlabeled_maps_or_in_the_wrong_place_is_refused(tmp_path, make_lines):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    empty = WaferDataset(class_names=(), maps=np.zeros((0, 16, 16), np.uint8))
    for pool in (None, empty):
        with pytest.raises(ConfigError, match="given none"):
            train(_cfg(strategy="scratch", pretrained="none", epochs=1, unlabeled_weight=1.0), tr, va,
                  tmp_path / "x", unlabeled=pool)
        assert not (tmp_path / "x" / "weights.pt").exists()
    for bad, msg in ((["unlabeled_weight=-1"], "unlabeled_weight must be >= 0"),
                     (["unlabeled_threshold=0"], "unlabeled_threshold"), (["unlabeled_ratio=0"], "unlabeled_ratio")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TrainConfig, overrides=bad)
    # a pipeline run gives the pool to self-training's students only, and checks their settings before training
    for where in ("train", "source.train"):
        with pytest.raises(ConfigError, match="self_training.train.unlabeled_weight instead"):
            get_profile("real", [f"{where}.unlabeled_weight=1"])
    with pytest.raises(ConfigError, match="self_training.train: unknown config key"):
        get_profile("real", ["self_training.train.unlabeled_wieght=1"])
    assert get_profile("real", ["self_training.train.unlabeled_weight=1"]).self_training["train"][
        "unlabeled_weight"] == 1


def test_students_get_the_pool_only_with_unlabeled_weight(tmp_path, monkeypatch, make_lines):
    import waferflow.train.loop as loop
    from waferflow.train.selftrain import self_train

    seen = []

    def fake_train(cfg, joined, val_ds, out, weights=None, unlabeled=None):
        seen.append(unlabeled)
        raise RuntimeError("stop")

    monkeypatch.setattr(loop, "train", fake_train)
    monkeypatch.setattr("waferflow.train.selftrain.pseudo_label", lambda *a, **k: (make_lines(4, seed=3), {"kept": 4}))
    tr, va, pool = make_lines(48, seed=0), make_lines(16, seed=1), make_lines(20, seed=7)
    for weight in (0.0, 1.0):
        with pytest.raises(RuntimeError, match="stop"):
            self_train(_cfg(strategy="full_finetune", epochs=1, unlabeled_weight=weight), tmp_path / "t", tr, va,
                       pool, tmp_path / "s")
    assert seen[0] is None and seen[1] is pool


def test_a_killed_run_with_the_term_on_resumes_to_the_uninterrupted_weights(tmp_path, make_lines, r18_file,
                                                                               killed_after_first_epoch,
                                                                               assert_same_run):
    """A run killed after its first epoch and resumed ends with the uninterrupted run's weights and history, bit
    for bit: the term's draws and views depend on no state that the checkpoint does not restore. Resuming with
    other unlabeled_* settings is refused."""
    tr, va, pool = make_lines(48, seed=0), make_lines(16, seed=1), make_lines(40, seed=7)
    cfg = _cfg(strategy="full_finetune", epochs=3, patience=0, symmetries="hflip,vflip", unlabeled_weight=1.0,
               unlabeled_threshold=0.5)
    train(cfg, tr, va, tmp_path / "whole", weights=r18_file, unlabeled=pool)
    with killed_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        train(cfg, tr, va, tmp_path / "cut", weights=r18_file, unlabeled=pool)
    assert not (tmp_path / "cut" / "weights.pt").exists()
    with pytest.raises(ConfigError, match="unlabeled_threshold"):
        train(_cfg(strategy="full_finetune", epochs=3, patience=0, symmetries="hflip,vflip", unlabeled_weight=1.0,
                   unlabeled_threshold=0.9), tr, va, tmp_path / "cut", weights=r18_file, unlabeled=pool, resume=True)
    train(cfg, tr, va, tmp_path / "cut", weights=r18_file, unlabeled=pool, resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
    assert len(json.loads((tmp_path / "cut" / "history.json").read_text())) == 3
