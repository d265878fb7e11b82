"""Mixup in the training loop (TrainConfig.mixup_alpha): the loss, where it applies, and resume."""

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


class _Recorder(torch.nn.Module):
    """A linear model that keeps the input of its last call."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))

    def forward(self, x):
        self.seen = x.detach().clone()
        return self.fc(x)


class _Pool:
    """A consistency term with fixed unlabeled maps, targets and mask; its loss is the mean of its logits."""

    def __init__(self, maps):
        self.maps = maps

    def draw(self, n):
        return self.maps

    def targets(self, model, to_input, x_u):
        return torch.zeros(len(x_u), dtype=torch.long), torch.ones(len(x_u), dtype=torch.bool)

    def loss(self, logits, target, mask):
        return logits.mean()


def _fake_run(alpha):
    torch.manual_seed(0)
    return SimpleNamespace(cfg=SimpleNamespace(mixup_alpha=alpha, augment=False), model=_Recorder(),
                           device=torch.device("cpu"),
                           to_input=lambda x: (x.float().unsqueeze(1).repeat(1, 3, 1, 1) / 2 - 0.5).contiguous(
                               memory_format=torch.channels_last),
                           x_train=torch.randint(0, 3, (6, 4, 4), dtype=torch.uint8),
                           loss_fn=torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5])))


WHOLE = SimpleNamespace(cached=False, std_head=None, head_only=False)
IDX, YB = torch.tensor([0, 2, 3, 5]), torch.tensor([0, 1, 2, 1])
ORDER, LAM = torch.tensor([2, 0, 3, 1]), 0.3


def test_the_mixed_loss_is_the_two_labels_losses_weighted_by_lam(monkeypatch):
    """One lam per batch, the run's own (class-weighted) loss on both labels; the unlabeled maps of the
    consistency term share the forward pass unmixed, and their loss is added as it is."""
    run = _fake_run(0.2)
    monkeypatch.setattr(loop, "_mixup_draw", lambda alpha, n, gen: (ORDER, LAM))
    w = run.loss_fn.weight
    got = loop._step_loss(run, WHOLE, IDX, None, YB, None, torch.Generator())
    x = run.to_input(run.x_train[IDX])
    logits = run.model.fc(LAM * x + (1 - LAM) * x[ORDER])
    want = LAM * F.cross_entropy(logits, YB, weight=w) + (1 - LAM) * F.cross_entropy(logits, YB[ORDER], weight=w)
    assert torch.allclose(got, want, atol=1e-6)
    assert run.model.seen.is_contiguous(memory_format=torch.channels_last)  # mixed in place: the layout stays
    pool = torch.randint(0, 3, (3, 4, 4), dtype=torch.uint8)
    got = loop._step_loss(run, WHOLE, IDX, None, YB, _Pool(pool), torch.Generator())
    assert torch.equal(run.model.seen[4:], run.to_input(pool))  # the unlabeled rows are not mixed
    assert torch.allclose(run.model.seen[:4], LAM * x + (1 - LAM) * x[ORDER])
    assert torch.allclose(got, want + run.model.fc(run.to_input(pool)).mean(), atol=1e-6)


def test_no_mixup_draw_at_alpha_0_or_in_head_only_steps(monkeypatch):
    """alpha 0 draws nothing from the run's generator (the run trains as it did before mixup existed), and steps
    that train only the head on cached or frozen features do not mix."""
    monkeypatch.setattr(loop, "_mixup_draw", lambda *a: pytest.fail("a mixup was drawn"))
    loop._step_loss(_fake_run(0.0), WHOLE, IDX, None, YB, None, torch.Generator())
    run = _fake_run(0.2)
    run.feature_cache = lambda: {"train": torch.randn(6, 8)}
    run.model = SimpleNamespace(get_classifier=lambda: torch.nn.Linear(8, 3))
    run.cfg.drop_rate = 0.0
    loop._step_loss(run, SimpleNamespace(cached=True, std_head=None, head_only=True), IDX, None, YB, None,
                    torch.Generator())


def test_mixup_trains_other_weights_and_leaves_head_only_training_alone(tmp_path, make_lines, r18_file, caplog):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    caplog.set_level("INFO", logger="waferflow.train.loop")
    for strategy, epochs in (("full_finetune", 2), ("feature_extraction", 1)):
        for alpha in (0, 0.4):
            caplog.clear()
            train(_cfg(strategy=strategy, epochs=epochs, patience=0, mixup_alpha=alpha), tr, va,
                  tmp_path / f"{strategy}{alpha}", weights=r18_file)
            said = "trains only the head: no mixup in its epochs" in caplog.text
            assert said == (strategy == "feature_extraction" and alpha > 0)
    assert not _same(_weights(tmp_path / "full_finetune0"), _weights(tmp_path / "full_finetune0.4"))
    assert _same(_weights(tmp_path / "feature_extraction0"), _weights(tmp_path / "feature_extraction0.4"))
    for bad in (-0.1, float("inf")):
        with pytest.raises(ConfigError, match="mixup_alpha must be a finite number >= 0"):
            _cfg(mixup_alpha=bad)


def test_a_killed_run_with_mixup_resumes_to_the_uninterrupted_run(tmp_path, make_lines, r18_file,
                                                                   killed_after_first_epoch, assert_same_run):
    """Killed after epoch 1 and resumed: the same run bit for bit (the draws depend on no state the checkpoint
    does not restore); resuming with another alpha is refused."""
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    cfg = _cfg(strategy="full_finetune", epochs=3, patience=0, mixup_alpha=0.4)
    train(cfg, tr, va, tmp_path / "whole", weights=r18_file)
    with killed_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        train(cfg, tr, va, tmp_path / "cut", weights=r18_file)
    with pytest.raises(ConfigError, match="mixup_alpha"):
        train(_cfg(strategy="full_finetune", epochs=3, patience=0, mixup_alpha=0.2), tr, va, tmp_path / "cut",
              weights=r18_file, resume=True)
    train(cfg, tr, va, tmp_path / "cut", weights=r18_file, resume=True)
    assert_same_run(tmp_path / "whole", tmp_path / "cut")
