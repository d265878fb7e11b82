"""Undoing the class prior that class weights train into a model: the shift, and the head correction."""

import json

import numpy as np
import pytest
import torch

from waferflow.data.contract import WaferDataset, load_dataset, save_dataset
from waferflow.errors import DataError, ModelFormatError
from waferflow.models import create_model, load_model_dir, save_model_dir
from waferflow.train.losses import training_logit_shift
from waferflow.train.prior import describe, run_prior_correction, undo_class_prior

LABELS = np.array([0] * 80 + [1] * 15 + [2] * 5)


def _centered(v):
    return v - v.mean()


def test_the_shift_is_the_log_of_the_weights_the_loss_used():
    counts = np.array([80.0, 15.0, 5.0])
    assert not training_logit_shift(LABELS, 3, "none").any()
    # w_c ~ n_c^-1/2 (sqrt) or n_c^-1 (inverse): the loss adds log w_c to the logits it trains
    np.testing.assert_allclose(training_logit_shift(LABELS, 3, "sqrt"), _centered(-0.5 * np.log(counts)), atol=1e-6)
    np.testing.assert_allclose(training_logit_shift(LABELS, 3, "inverse"), _centered(-np.log(counts)), atol=1e-6)
    # a balanced sampler draws every class equally often: the same tilt as inverse weights, and they add up
    np.testing.assert_allclose(training_logit_shift(LABELS, 3, "none", balanced_sampler=True),
                               _centered(-np.log(counts)), atol=1e-6)
    np.testing.assert_allclose(training_logit_shift(LABELS, 3, "sqrt", balanced_sampler=True),
                               _centered(-1.5 * np.log(counts)), atol=1e-6)
    # a class with no training map has no weight, so no shift; the others are centred among themselves
    four = training_logit_shift(LABELS, 4, "sqrt")
    assert four[3] == 0.0
    np.testing.assert_allclose(four[:3], _centered(-0.5 * np.log(counts)), atol=1e-6)


def _model_dir(tmp_path, shift):
    torch.manual_seed(0)
    model, spec = create_model("tf_efficientnet_lite0", num_classes=3, pretrained="none", input_size=32,
                               class_names=["a", "b", "c"])
    train = {} if shift is None else {"logit_shift": [float(v) for v in shift]}
    spec = spec.replace(extra={**spec.extra, "train": train})
    return save_model_dir(model.eval(), spec, tmp_path / "in")


def test_undo_class_prior_takes_the_recorded_shift_out_of_every_logit(tmp_path):
    shift = training_logit_shift(LABELS, 3, "sqrt")
    src = _model_dir(tmp_path, shift)
    (src / "checkpoints").mkdir()
    (src / "checkpoints" / "best.pt").write_bytes((src / "weights.pt").read_bytes())
    report = undo_class_prior(src, tmp_path / "out")
    # no stale checkpoint with the uncorrected weights beside the corrected ones; the history travels
    assert not (tmp_path / "out" / "checkpoints").exists() and (tmp_path / "out" / "model.json").is_file()
    assert report["status"] == "undone" and list(report["shift"]) == ["a", "b", "c"]
    before, _ = load_model_dir(src)
    after, spec = load_model_dir(tmp_path / "out")  # the sha256 in model.json matches the new weights
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(after(x).numpy(), before(x).numpy() - shift[None].astype(np.float32), atol=1e-5)
    # the written model says what was done, and has nothing left to undo: a second pass changes nothing
    assert spec.extra["prior_correction"] == report and spec.extra["train"]["logit_shift"] == [0.0, 0.0, 0.0]
    again = undo_class_prior(tmp_path / "out", tmp_path / "again")
    assert again["status"] == "nothing to undo"
    assert (tmp_path / "again" / "weights.pt").read_bytes() == (tmp_path / "out" / "weights.pt").read_bytes()
    # the source model is untouched
    assert "prior_correction" not in json.loads((src / "model.json").read_text())


def test_a_model_without_class_weights_is_written_unchanged(tmp_path):
    src = _model_dir(tmp_path, training_logit_shift(LABELS, 3, "none"))
    (src / "checkpoints").mkdir()
    (src / "checkpoints" / "best.pt").write_bytes(b"x")
    assert undo_class_prior(src, tmp_path / "out")["status"] == "nothing to undo"
    assert (tmp_path / "out" / "checkpoints" / "best.pt").read_bytes() == b"x"  # a plain copy
    assert (tmp_path / "out" / "weights.pt").read_bytes() == (src / "weights.pt").read_bytes()


def test_a_model_with_no_record_is_refused_and_nothing_is_written(tmp_path):
    src = _model_dir(tmp_path, None)
    with pytest.raises(ModelFormatError, match="train.logit_shift.*older waferflow.*--no-cache.*undo_class_weights=false"):
        undo_class_prior(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    bad = _model_dir(tmp_path / "bad", [0.1, -0.1])
    with pytest.raises(ModelFormatError, match="2 values for 3 classes"):
        undo_class_prior(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_head_without_a_linear_bias_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    from torch import nn

    from waferflow.models import spec as spec_mod

    src = _model_dir(tmp_path, training_logit_shift(LABELS, 3, "sqrt"))
    model, spec = load_model_dir(src)
    model.reset_classifier(0)  # the head is now nn.Identity: no bias to correct
    assert isinstance(model.get_classifier(), nn.Identity)
    monkeypatch.setattr(spec_mod, "load_model_dir", lambda path: (model, spec))
    with pytest.raises(ModelFormatError, match="not a linear layer with a bias over 3 classes"):
        undo_class_prior(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _val_file(tmp_path, make_disk, names=("a", "b", "c"), labeled=True):
    maps = make_disk(30, 16, seed=1)
    labels = np.arange(30) % 3 if labeled else None
    path = tmp_path / f"val_{'_'.join(names)}_{labeled}.npz"
    save_dataset(WaferDataset(class_names=names, labels=labels, maps=maps, meta={}), path)
    return path


def test_the_stage_scores_validation_as_trained_and_corrected(tmp_path, make_disk):
    from waferflow.evaluation import evaluate
    from waferflow.models.spec import read_spec
    from waferflow.predictors import create_predictor

    src, val = _model_dir(tmp_path, training_logit_shift(LABELS, 3, "sqrt")), _val_file(tmp_path, make_disk)
    report = run_prior_correction(src, val, tmp_path / "out", undo=True)
    assert report["status"] == "undone"
    # each figure is that of the model it names, as the shared evaluator scores it
    for key, model_dir in (("before", src), ("after", tmp_path / "out")):
        m = evaluate(create_predictor("torch", model_dir), load_dataset(val), read_spec(model_dir))["overall"]
        assert report["validation"][key] == pytest.approx({k: m[k] for k in report["validation"][key]})
    assert report["validation"]["before"] != report["validation"]["after"]  # this model's predictions do move
    assert "validation accuracy" in describe(report) and "(a -0.741, b +0.096, c +0.645)" in describe(report)


def test_the_stage_reads_no_validation_when_there_is_nothing_to_score(tmp_path, make_disk):
    src = _model_dir(tmp_path, training_logit_shift(LABELS, 3, "none"))
    missing = tmp_path / "no_such_val.npz"
    assert "validation" not in run_prior_correction(src, missing, tmp_path / "zero", undo=True)
    off = run_prior_correction(_model_dir(tmp_path / "w", training_logit_shift(LABELS, 3, "sqrt")), missing,
                               tmp_path / "off", undo=False)
    assert off == {"status": "off: undo_class_weights is false"} and describe(off) == f"prior correction: {off['status']}"
    assert (tmp_path / "off" / "weights.pt").read_bytes() == (tmp_path / "w" / "in" / "weights.pt").read_bytes()


def test_bad_validation_maps_stop_the_stage_before_anything_is_written(tmp_path, make_disk):
    src = _model_dir(tmp_path, training_logit_shift(LABELS, 3, "sqrt"))
    with pytest.raises(DataError, match="differ from the model's"):
        run_prior_correction(src, _val_file(tmp_path, make_disk, names=("a", "c", "b")), tmp_path / "out", undo=True)
    with pytest.raises(DataError, match="labels"):
        run_prior_correction(src, _val_file(tmp_path, make_disk, labeled=False), tmp_path / "out", undo=True)
    assert not (tmp_path / "out").exists()
