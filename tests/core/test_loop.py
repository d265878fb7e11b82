import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from waferflow.cli import main
from waferflow.config import load_config
from waferflow.data.contract import save_dataset
from waferflow.errors import ConfigError
from waferflow.models import load_model_dir
from waferflow.selection import choose_best
from waferflow.train import TrainConfig, train

TINY = ["input_size=16", "batch_size=16", "eval_batch_size=64", "num_threads=1"]


def _cfg(**kw):
    return load_config(TrainConfig, overrides=[*TINY, *(f"{k}={v}" for k, v in kw.items())])


def test_train_writes_model_dir_and_checkpoints(tmp_path, make_lines):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    r = train(_cfg(strategy="scratch", backbone="resnet18", epochs=2, pretrained="none"), tr, va, tmp_path / "m")
    d = tmp_path / "m"
    for f in ("model.json", "weights.pt", "config.yaml", "history.json", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (d / f).is_file(), f
    hist = json.loads((d / "history.json").read_text())
    assert [h["epoch"] for h in hist] == [1, 2]
    assert {"epoch", "phase", "train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr", "seconds"} <= set(hist[0])
    ck = torch.load(d / "checkpoints/last.pt", weights_only=True)
    assert ck["epoch"] == 2 and {"model", "optimizer", "scheduler", "rng_torch", "rng_gen"} <= set(ck)
    model, spec = load_model_dir(d)
    assert spec.strategy == "scratch" and spec.weights_source == "random" and spec.data_hash
    assert r.trainable_params == r.total_params and r.throughput_maps_per_s > 0
    assert r.best_val["macro_f1"] == max(h["val_macro_f1"] for h in hist)
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(strategy="scratch", backbone="resnet18", epochs=2, pretrained="none"), tr, va, d)


def test_feature_extraction_cached_trains_head_only(tmp_path, make_lines, r18_file):
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    r = train(_cfg(strategy="feature_extraction", backbone="resnet18", epochs=3, adapt_bn="true"), tr, va,
              tmp_path / "fe",
              weights=r18_file)
    src = torch.load(r18_file, weights_only=True)
    model, spec = load_model_dir(tmp_path / "fe")
    assert spec.weights_source.startswith("file:")
    # backbone weights untouched, only the head trained; BN statistics re-estimated on the train maps (adapt_bn)
    for k, v in model.named_parameters():
        if not k.startswith("fc."):
            assert torch.equal(v, src[k]), k
    assert not torch.equal(model.bn1.running_mean, src["bn1.running_mean"])
    assert spec.extra["train"]["adapt_bn"]["n_maps"] == 48
    assert spec.extra["train"]["host"]["torch_threads"] == torch.get_num_threads()  # waferflow.host
    assert r.trainable_params == 512 * 2 + 2
    assert all(h["cached_features"] for h in r.history)


def test_training_records_the_logit_shift_of_its_class_weights(tmp_path, make_lines, r18_file):
    """The prior-correction stage undoes exactly what the loss trained in (waferflow.train.prior)."""
    import numpy as np

    from waferflow.train.losses import training_logit_shift

    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    tr = tr.subset(np.r_[np.flatnonzero(tr.labels == 0), np.flatnonzero(tr.labels == 1)[:6]])  # imbalanced
    train(_cfg(strategy="feature_extraction", backbone="resnet18", epochs=1, class_weights="sqrt"), tr, va,
          tmp_path / "w", weights=r18_file)
    want = training_logit_shift(tr.labels, 2, "sqrt")
    assert abs(want[0]) > 0.1
    np.testing.assert_allclose(load_model_dir(tmp_path / "w")[1].extra["train"]["logit_shift"], want, atol=1e-6)
    train(_cfg(strategy="feature_extraction", backbone="resnet18", epochs=1), tr, va, tmp_path / "u", weights=r18_file)
    assert load_model_dir(tmp_path / "u")[1].extra["train"]["logit_shift"] == [0.0, 0.0]


def test_pretrained_strategy_refuses_random_and_cuda_is_never_faked(tmp_path, make_lines):
    tr, va = make_lines(16), make_lines(8, seed=1)
    with pytest.raises(ConfigError, match="scratch"):
        train(_cfg(strategy="full_finetune", backbone="resnet18", pretrained="none"), tr, va, tmp_path / "a")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            train(_cfg(strategy="scratch", backbone="resnet18", pretrained="none", device="cuda"), tr, va,
                  tmp_path / "b")


def test_resume_after_kill(tmp_path, make_lines, caplog):
    data = tmp_path / "d.npz"
    ds = make_lines(48)
    save_dataset(ds, data)
    out = tmp_path / "run"
    args = ["train", "--data", str(data), "--strategy", "scratch", "--backbone", "resnet18", "--weights", "none",
            "--epochs", "8", "--set", "patience=0", *sum([["--set", s] for s in TINY], []), "--out", str(out)]
    env = {**os.environ, "WAFERFLOW_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "waferflow", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "checkpoints" / "last.pt"
    t0 = time.time()
    while not last.exists() and proc.poll() is None and time.time() - t0 < 240:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists(), "the run never wrote a checkpoint"
    assert not (out / "model.json").exists(), "run finished before it could be killed"
    killed_at = torch.load(last, weights_only=True)["epoch"]
    assert 1 <= killed_at < 8
    caplog.set_level("INFO", logger="waferflow.train.loop")
    assert main([*args, "--resume"]) == 0
    epochs_logged = [r.args[0] for r in caplog.records if r.msg.startswith("epoch %d")]
    assert epochs_logged[0] == killed_at + 1 and epochs_logged[-1] == 8
    hist = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in hist] == list(range(1, 9))
    assert (out / "model.json").is_file()


def test_cli_train_one_file_and_compare(tmp_path, make_lines, r18_file, capsys):
    f = tmp_path / "all.npz"
    save_dataset(make_lines(60), f)
    tiny = sum([["--set", s] for s in TINY], [])
    assert main(["train", "--data", str(f), "--strategy", "scratch", "--backbone", "resnet18", "--weights", "none",
                 "--epochs", "1", *tiny, "--out", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "model.json").is_file()
    split = tmp_path / "split"
    split.mkdir()
    for name, seed, n in (("train", 0, 40), ("val", 1, 16), ("test", 2, 16)):
        save_dataset(make_lines(n, seed=seed), split / f"{name}.npz")
    capsys.readouterr()
    assert main(["compare", "--data", str(split), "--strategies", "scratch,feature_extraction", "--backbones",
                 "resnet18", "--epochs", "1", "--weights", r18_file, *tiny, "--out", str(tmp_path / "cmp")]) == 0
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    # the same names as the pipeline's candidates, the same table (plots.comparison_table) as its report
    assert "scratch-resnet18" in md and "feature_extraction-resnet18" in md
    assert "| balanced acc | macro-F1 |" in md
    js = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert {c["strategy"] for c in js["candidates"]} == {"scratch", "feature_extraction"}
    # chosen on validation (each candidate's best_val), and only the chosen one is scored on test
    val = {c["candidate"]: {"overall": c["overall"]} for c in js["candidates"]}
    assert js["selected_on"] == "val" and js["best"] == choose_best(val)[0]
    scored = sorted(p.parent.name for p in (tmp_path / "cmp" / "candidates").glob("*/metrics.json"))
    assert scored == [js["best"]] and js["best_test"]["n"] == 16
    # user errors exit 2 with a message
    assert main(["train", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "x")]) == 2
    assert main(["train", "--data", str(f), "--set", "bogus=1", "--out", str(tmp_path / "x")]) == 2
    assert "unknown config key" in capsys.readouterr().err


def test_standardized_head_folds_exactly():
    from torch import nn

    from waferflow.train.loop import _StandardizedHead

    torch.manual_seed(0)
    clf = nn.Linear(6, 3)
    feats = torch.randn(50, 6) * 40 + 7
    sh = _StandardizedHead(clf, feats).eval()
    torch.testing.assert_close(sh(feats), clf(feats), rtol=1e-4, atol=1e-3)  # starts equivalent
    with torch.no_grad():
        sh.lin.weight.add_(torch.randn_like(sh.lin.weight))
    sh.fold_into_classifier()
    torch.testing.assert_close(sh(feats), clf(feats), rtol=1e-4, atol=1e-3)


def test_step_budget_sets_epochs_by_data_size(tmp_path, make_lines):
    """The same step budget gives a small dataset more epochs; patience_steps scales early stopping likewise."""
    va = make_lines(16, seed=1)
    for n, want_epochs in ((32, 3), (64, 2)):  # 2 and 4 steps per epoch at batch 16 -> ceil(6 / spe) epochs
        r = train(_cfg(strategy="scratch", backbone="resnet18", steps=6, patience_steps=8, pretrained="none"),
                  make_lines(n, seed=0), va, tmp_path / f"m{n}")
        assert r.extra["budget"]["epochs"] == want_epochs == len(r.history)
        assert r.extra["budget"]["steps_per_epoch"] == n // 16
        assert r.extra["budget"]["patience_epochs"] == 8 // (n // 16)
    # min_epochs raises the budget of the bigger dataset only: 64 maps get 3 epochs (12 steps), 32 keep the 5 that
    # 10 steps give them
    for n, steps, want_epochs in ((32, 10, 5), (64, 6, 3)):
        r = train(_cfg(strategy="scratch", backbone="resnet18", steps=steps, min_epochs=3, pretrained="none"),
                  make_lines(n, seed=0), va, tmp_path / f"min{n}")
        assert r.extra["budget"]["epochs"] == want_epochs == len(r.history) and r.extra["budget"]["min_epochs"] == 3
    with pytest.raises(ConfigError, match="either epochs"):
        _cfg(steps=10, epochs=2)
    with pytest.raises(ConfigError, match="steps must be >= 0"):
        _cfg(steps=-1)
    with pytest.raises(ConfigError, match="min_epochs=3 raises a step budget"):
        _cfg(epochs=2, min_epochs=3)
    with pytest.raises(ConfigError, match="min_epochs must be >= 0"):
        _cfg(steps=10, min_epochs=-1)


def test_weight_average_is_what_validation_judges_and_the_model_keeps(tmp_path, make_lines, r18_file):
    """ema_decay: the saved model is the average (timm ModelEmaV3), not the last raw weights, and the history's
    validation figures are the average's."""
    import numpy as np

    from waferflow.evaluation import evaluate
    from waferflow.predictors.table import create_predictor

    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    cfg = _cfg(strategy="full_finetune", backbone="resnet18", epochs=1, ema_decay=0.9)
    train(cfg, tr, va, tmp_path / "e", weights=r18_file)
    ck = torch.load(tmp_path / "e" / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(tmp_path / "e" / "checkpoints" / "best.pt", weights_only=True)
    saved = torch.load(tmp_path / "e" / "weights.pt", weights_only=True)
    assert ck["steps"] == 3 and set(ck["ema"]) == set(ck["model"])
    assert all(torch.equal(best[k], ck["ema"][k]) and torch.equal(saved[k], ck["ema"][k]) for k in best)
    start = torch.load(r18_file, weights_only=True)["layer4.1.conv2.weight"]
    w = "layer4.1.conv2.weight"
    assert not torch.equal(ck["ema"][w], ck["model"][w]), "the average is the raw weights"
    assert not torch.equal(ck["ema"][w], start), "the average never moved from the start"
    hist = json.loads((tmp_path / "e" / "history.json").read_text())
    model, spec = load_model_dir(tmp_path / "e")
    m = evaluate(create_predictor("torch", model), va, spec)
    assert np.isclose(m["overall"]["macro_f1"], hist[-1]["val_macro_f1"])
    # without the average the same seed keeps the raw weights
    train(_cfg(strategy="full_finetune", backbone="resnet18", epochs=1), tr, va, tmp_path / "r", weights=r18_file)
    raw = torch.load(tmp_path / "r" / "weights.pt", weights_only=True)
    assert torch.equal(raw[w], ck["model"][w])


def test_weight_average_follows_head_only_epochs_and_resumes(tmp_path, make_lines, r18_file):
    """Epochs that train the head on cached features copy the model into the average (else it would keep the
    untrained head); a resumed run restores the average, and one with another ema_decay is refused."""
    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    plain = train(_cfg(strategy="feature_extraction", backbone="resnet18", epochs=2), tr, va, tmp_path / "p",
                  weights=r18_file)
    ema = train(_cfg(strategy="feature_extraction", backbone="resnet18", epochs=2, ema_decay=0.9), tr, va,
                tmp_path / "a", weights=r18_file)
    assert ema.best_val == plain.best_val
    a = torch.load(tmp_path / "a" / "weights.pt", weights_only=True)
    p = torch.load(tmp_path / "p" / "weights.pt", weights_only=True)
    assert all(torch.equal(a[k], p[k]) for k in p)
    gu = train(_cfg(strategy="gradual_unfreezing", backbone="resnet18", epochs=4, patience=0, ema_decay=0.9), tr, va,
               tmp_path / "g", weights=r18_file)
    assert gu.best_epoch >= 1
    ck = torch.load(tmp_path / "g" / "checkpoints" / "last.pt", weights_only=True)
    assert any(not torch.equal(ck["ema"][k], ck["model"][k]) for k in ck["model"] if k.startswith("layer4"))
    cfg = _cfg(strategy="gradual_unfreezing", backbone="resnet18", epochs=4, patience=0, ema_decay=0.9)
    again = train(cfg, tr, va, tmp_path / "g", weights=r18_file, resume=True)  # nothing left to run: restores
    assert again.best_epoch == gu.best_epoch
    with pytest.raises(ConfigError, match="ema_decay"):
        train(_cfg(strategy="gradual_unfreezing", backbone="resnet18", epochs=4, patience=0, ema_decay=0.5), tr, va,
              tmp_path / "g", weights=r18_file, resume=True)
    with pytest.raises(ConfigError, match="ema_decay must be in"):
        _cfg(ema_decay=1.0)


def test_checkpoint_setting_decides_the_kept_epoch_and_early_stopping(tmp_path, make_lines):
    """``last`` keeps the last epoch and never stops early; ``loss`` keeps the lowest validation cross-entropy."""
    from waferflow.train.loop import LoopState, checkpoint_score

    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    kw = dict(strategy="scratch", backbone="resnet18", epochs=5, patience=1, pretrained="none", lr=0.05)
    r = train(_cfg(checkpoint="last", **kw), tr, va, tmp_path / "last")
    assert len(r.history) == 5 and r.best_epoch == 5  # patience 1 would have stopped a run that ever stalled
    assert r.best_val["macro_f1"] == r.history[-1]["val_macro_f1"]
    kept = torch.load(tmp_path / "last/weights.pt", weights_only=True)
    last = torch.load(tmp_path / "last/checkpoints/last.pt", weights_only=True)["model"]
    assert all(torch.equal(kept[k], last[k]) for k in last)
    r = train(_cfg(checkpoint="loss", **{**kw, "patience": 0}), tr, va, tmp_path / "loss")
    losses = [h["val_loss"] for h in r.history]
    assert r.best_epoch == losses.index(min(losses)) + 1
    assert r.best_val["accuracy"] == r.history[r.best_epoch - 1]["val_accuracy"]
    assert checkpoint_score("loss", {}, {"val_loss": 0.5}) > checkpoint_score("loss", {}, {"val_loss": 0.7})
    with pytest.raises(ConfigError, match="checkpoint must be one of"):
        _cfg(checkpoint="best")
    with pytest.raises(ConfigError, match="checkpoint must be one of"):
        checkpoint_score("best", {"macro_f1": 1.0}, {"epoch": 1, "val_loss": 0.1})
    # a checkpoint written before the setting carried the best macro-F1 as ``best_f1``: a resumed run keeps it
    assert LoopState.from_checkpoint({"best_f1": 0.42, "best_epoch": 3}).best_score == 0.42
