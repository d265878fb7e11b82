"""Mixup in the training loop (TrainConfig.mixup_alpha): the loss, where it applies, and resume."""

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import waferflow.train.loop as loop
from waferflow.config import load_config
from waferflow.errors import ConfigError
from waferflow.train import TrainConfig, train

TINY = ["input_size=16", "batch_size=16", "eval_batch_size=64", "num_threads=1", "backbone=resnet18"]


def _cfg(**kw):
    return load_config(TrainConfig, overrides=[*TINY, *(f"{k}={v}" for k, v in kw.items())])


def _weights(path):
    return torch.load(path / "weights.pt", weights_only=True)


def _same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_mixed_loss_is_the_two_labels_losses_weighted_by_lam(monkeypatch):
    """Inputs mixed after preprocessing, one lam per batch, the run's own (class-weighted) loss on both labels."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    w = torch.tensor([1.0, 2.0, 0.5])
    run = SimpleNamespace(cfg=SimpleNamespace(mixup_alpha=0.2, augment=False), model=net,
                          to_input=lambda x: x.float().unsqueeze(1).repeat(1, 3, 1, 1) / 2,
                          x_train=torch.randint(0, 3, (6, 4, 4), dtype=torch.uint8),
                          loss_fn=torch.nn.CrossEntropyLoss(weight=w))
    pr = SimpleNamespace(cached=False, std_head=None)
    idx, yb = torch.tensor([0, 2, 3, 5]), torch.tensor([0, 1, 2, 1])
    order, lam = torch.tensor([2, 0, 3, 1]), 0.3
    monkeypatch.setattr(loop, "_mixup_draw", lambda alpha, n, gen: (order, lam))
    got = loop._step_loss(run, pr, idx, None, yb, None, torch.Generator())
    x = run.to_input(run.x_train[idx])
    logits = net(lam * x + (1 - lam) * x[order])
    want = lam * F.cross_entropy(logits, yb, weight=w) + (1 - lam) * F.cross_entropy(logits, yb[order], weight=w)
    assert torch.allclose(got, want, atol=1e-6)
    # head-only steps (cached or frozen features) do not mix
    head = SimpleNamespace(cached=True, std_head=None)
    feats = torch.randn(6, 8)
    run.feature_cache = lambda: {"train": feats}
    run.model = SimpleNamespace(get_classifier=lambda: torch.nn.Linear(8, 3))
    run.cfg.drop_rate = 0.0
    monkeypatch.setattr(loop, "_mixup_draw", lambda *a: pytest.fail("a head-only step drew a mixup"))
    loop._step_loss(run, head, idx, None, yb, None, torch.Generator())


def test_mixup_trains_other_weights_leaves_head_only_training_alone_and_resumes(tmp_path, make_lines, r18_file,
                                                                                 request):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    for strategy, epochs in (("full_finetune", 3), ("feature_extraction", 1)):
        for alpha in (0, 0.4):
            train(_cfg(strategy=strategy, epochs=epochs, patience=0, mixup_alpha=alpha), tr, va,
                  tmp_path / f"{strategy}{alpha}", weights=r18_file)
    assert not _same(_weights(tmp_path / "full_finetune0"), _weights(tmp_path / "full_finetune0.4"))
    assert _same(_weights(tmp_path / "feature_extraction0"), _weights(tmp_path / "feature_extraction0.4"))
    # the draws come from the checkpointed generator: killed after epoch 1 and resumed, the same run bit for bit
    cfg = _cfg(strategy="full_finetune", epochs=3, patience=0, mixup_alpha=0.4)
    resume_normally = request.getfixturevalue("killed_after_first_epoch")  # after the full run
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tr, va, tmp_path / "cut", weights=r18_file)
    resume_normally()
    with pytest.raises(ConfigError, match="mixup_alpha"):
        train(_cfg(strategy="full_finetune", epochs=3, patience=0, mixup_alpha=0.2), tr, va, tmp_path / "cut",
              weights=r18_file, resume=True)
    train(cfg, tr, va, tmp_path / "cut", weights=r18_file, resume=True)
    for name in ("checkpoints/last.pt", "weights.pt"):
        whole, cut = (torch.load(tmp_path / d / name, weights_only=True) for d in ("full_finetune0.4", "cut"))
        assert _same(whole.get("model", whole), cut.get("model", cut)), name
    hist = [json.loads((tmp_path / d / "history.json").read_text()) for d in ("full_finetune0.4", "cut")]
    assert [[{k: v for k, v in r.items() if k != "seconds"} for r in h] for h in hist][0] == \
        [{k: v for k, v in r.items() if k != "seconds"} for r in hist[1]]
    with pytest.raises(ConfigError, match="mixup_alpha must be >= 0"):
        _cfg(mixup_alpha=-0.1)
