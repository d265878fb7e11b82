"""The model and its synthetic source model as one mean-probability ensemble (waferflow.train.source_ensemble)."""

import json
import tempfile

import numpy as np
import pytest
import torch

from waferflow.data.contract import save_dataset
from waferflow.errors import ConfigError, DataError, ModelFormatError, WeightsError
from waferflow.models import create_model, load_model_dir, preprocess, read_spec, save_model_dir
from waferflow.models.ensemble import MeanProbabilityEnsemble
from waferflow.train.source_ensemble import describe, run_source_ensemble, run_source_stage

from .conftest import LINE_CLASSES, lite0, unlabeled_lines

CLASSES = list(LINE_CLASSES)


def _model(seed, classes=CLASSES):
    return lite0(seed, classes)


@pytest.fixture
def run(tmp_path, make_lines):
    """A registered-looking source model, the adaptive-BN start point loaded from it, a fine-tuned model, the maps."""
    src, src_spec = _model(1)
    save_model_dir(src, src_spec, tmp_path / "registry" / "source_model")
    start, start_spec = _model(3)  # its weights are not the ensemble's: the member is the source as registered
    save_model_dir(start, start_spec.replace(weights_source=f"file:{tmp_path / 'registry' / 'source_model'}"),
                   tmp_path / "adapted" / "tf_efficientnet_lite0@source")
    final, spec = _model(2)
    save_model_dir(final, spec, tmp_path / "final")
    (tmp_path / "final" / "checkpoints").mkdir()
    (tmp_path / "final" / "checkpoints" / "last.pt").write_bytes(b"old")
    save_dataset(make_lines(24, 16, seed=3), tmp_path / "train.npz")
    save_dataset(make_lines(16, 16, seed=5), tmp_path / "val.npz")
    return tmp_path


def _go(run, below, out="out", val="val.npz"):
    return run_source_ensemble(run / "final", run / "adapted", run / "train.npz", run / val, run / out, below)


def test_the_ensemble_module_averages_probabilities_and_exposes_timm_features():
    a, _ = _model(1)
    b, _ = _model(2)
    ens = MeanProbabilityEnsemble([a, b]).eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        mean_prob = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
        torch.testing.assert_close(torch.softmax(ens(x), 1), mean_prob)
        feats = ens.forward_features(x)
        assert feats.shape[1] == a.num_features + b.num_features
        emb = ens.forward_head(feats, pre_logits=True)
        assert emb.shape == (5, a.num_features + b.num_features)
        torch.testing.assert_close(ens.forward_head(feats), ens(x))
        torch.testing.assert_close(ens.get_classifier()(emb), ens(x))
    with pytest.raises(ValueError, match="at least two members"):
        MeanProbabilityEnsemble([a])


def test_the_model_and_its_source_become_one_ensemble_model_dir(run):
    report = _go(run, 1000)
    assert report["status"] == "ensembled" and report["n_labeled"] == 24 and report["source_ensemble_below"] == 1000
    assert report["source"] == f"file:{run / 'registry' / 'source_model'}"
    assert set(report["validation"]) == {"before", "after"}
    ens, spec = load_model_dir(run / "out")  # its sha256 matches its weights
    assert isinstance(ens, MeanProbabilityEnsemble) and spec.extra["source_ensemble"] == report
    assert spec.extra["ensemble"]["members"] == 2 and spec.extra["ensemble"]["combine"] == "mean_probability"
    final, _ = load_model_dir(run / "final")
    src, _ = load_model_dir(run / "registry" / "source_model")
    x = torch.from_numpy(preprocess(np.random.default_rng(0).integers(0, 3, (4, 16, 16), dtype=np.uint8), spec))
    with torch.no_grad():
        want = (torch.softmax(final(x), 1) + torch.softmax(src(x), 1)) / 2
        torch.testing.assert_close(torch.softmax(ens(x), 1), want)
    assert not (run / "out" / "checkpoints").exists()  # no stale weights of the single model
    assert "ensembled" in describe(report) and "validation accuracy" in describe(report)


def test_an_ensemble_dir_starts_a_later_training_from_its_fine_tuned_member(run):
    """A drift retrain fine-tunes from the champion: for an ensemble, from its first member (the fine-tuned model)."""
    _go(run, 1000)
    model, spec = create_model("tf_efficientnet_lite0", num_classes=2, pretrained=str(run / "out"), input_size=32,
                               class_names=CLASSES)
    final, _ = load_model_dir(run / "final")
    for k, v in final.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v)
    assert spec.weights_source.endswith("#member0")


def test_off_enough_labels_or_no_source_pass_the_model_on_unchanged(run):
    assert _go(run, 0)["status"] == "off: source_ensemble_below is 0"
    assert (run / "out" / "weights.pt").read_bytes() == (run / "final" / "weights.pt").read_bytes()
    report = _go(run, 24, out="out2")
    assert report["status"] == "skipped: 24 labeled training maps, not fewer than source_ensemble_below=24"
    assert (run / "out2" / "weights.pt").read_bytes() == (run / "final" / "weights.pt").read_bytes()
    (run / "adapted" / "tf_efficientnet_lite0@source" / "model.json").unlink()
    assert _go(run, 1000, out="out3")["status"].startswith("skipped: the run has no source model")
    # the stage's dispatch: weight averaging when source_weight is set, never both
    assert run_source_stage(run / "final", run / "adapted", [run / "train.npz"], run / "val.npz", run / "out4",
                            0.0, 0)["status"] == "off: source_weight is 0"
    with pytest.raises(ConfigError, match="set one of them to 0"):
        run_source_stage(run / "final", run / "adapted", [run / "train.npz"], run / "val.npz", run / "out5", 0.5, 10)
    assert not (run / "out5").exists()


def test_bad_settings_and_bad_inputs_stop_before_anything_is_written(run, monkeypatch):
    with pytest.raises(ConfigError, match="source_ensemble_below must be >= 0"):
        _go(run, -1)
    save_dataset(unlabeled_lines(), run / "val_unlabeled.npz")
    with pytest.raises(DataError):
        _go(run, 1000, val="val_unlabeled.npz")
    other, spec = _model(1, classes=["a", "b"])  # a source of other classes
    save_model_dir(other, spec, run / "registry" / "source_model")
    with pytest.raises(ModelFormatError, match="cannot be ensembled"):
        _go(run, 1000)
    start = run / "adapted" / "tf_efficientnet_lite0@source" / "model.json"
    start.write_text(json.dumps({**json.loads(start.read_text()), "weights_source": "offline:some-package"}))
    with pytest.raises(ModelFormatError, match="not a model dir or an MLflow URI"):
        _go(run, 1000)
    start.write_text(json.dumps({**json.loads(start.read_text()), "weights_source": "mlflow:models:/nowhere/1"}))
    store = f"sqlite:///{run / 'empty.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # as in a pipeline task: models:/ URIs resolve in its registry
    with pytest.raises(WeightsError, match="cannot download models:/nowhere/1"):
        run_source_ensemble(run / "final", run / "adapted", run / "train.npz", run / "val.npz", run / "out", 1000,
                            tracking_uri=store)
    assert not (run / "out").exists()


def test_the_source_model_resolves_in_the_registry_of_an_explicit_tracking_uri(run, monkeypatch):
    """A benchmark or CLI that names the store (no MLFLOW_TRACKING_URI) finds a models:/ source model there."""
    from mlflow import MlflowClient

    from waferflow.models.weights import downloaded_model_dir

    store = f"sqlite:///{run / 'store.db'}"
    client = MlflowClient(store)
    run_id = client.create_run(client.create_experiment("src", artifact_location=str(run / "art"))).info.run_id
    client.log_artifacts(run_id, str(run / "registry" / "source_model"), "source_model")
    client.create_registered_model("wafer-source-lines")
    client.create_model_version("wafer-source-lines", f"runs:/{run_id}/source_model", run_id)
    start = run / "adapted" / "tf_efficientnet_lite0@source" / "model.json"
    start.write_text(json.dumps({**json.loads(start.read_text()), "weights_source": "mlflow:models:/wafer-source-lines/1"}))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(run)  # mlflow's default registry (./mlflow.db) holds nothing
    tmp = run / "system-tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where mlflow and the stage make their temporary folders
    rep = run_source_ensemble(run / "final", run / "adapted", run / "train.npz", run / "val.npz", run / "out", 100,
                              tracking_uri=store)
    assert rep["status"] == "ensembled" and rep["source"] == "models:/wafer-source-lines/1"
    # the downloaded copy of the source model is gone once it is loaded, and so is the one a start point loads
    assert not list(tmp.iterdir())
    from waferflow.models.weights import load_weights

    assert load_weights("models:/wafer-source-lines/1", "tf_efficientnet_lite0", tracking_uri=store).state_dict
    assert not list(tmp.iterdir())
    monkeypatch.undo()
    client.set_registered_model_alias("wafer-source-lines", "start", "1")
    with downloaded_model_dir("models:/wafer-source-lines@start", store) as got:
        assert (got / "model.json").is_file()
    assert not got.exists()
    with pytest.raises(WeightsError, match="cannot download models:/wafer-source-lines@nope"):
        with downloaded_model_dir("models:/wafer-source-lines@nope", store):
            pass


def test_a_broken_ensemble_record_is_refused(run):
    _go(run, 1000)
    meta = run / "out" / "model.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "ensemble": {"members": 1}}))
    with pytest.raises(ModelFormatError, match="needs an integer members >= 2"):
        load_model_dir(run / "out")


def test_the_profile_refuses_bad_ensemble_settings():
    from waferflow.profiles import get_profile

    assert get_profile("real").source_ensemble_below == 1000 and get_profile("local").source_ensemble_below == 0
    with pytest.raises(ConfigError, match="source_ensemble_below must be >= 0"):
        get_profile("real", ["source_ensemble_below=-5"])
    with pytest.raises(ConfigError, match="set one of them to 0"):
        get_profile("real", ["source_weight=0.5"])
    # ImageNet-only runs of the real profile keep working: the stage finds no source model and passes the model on
    assert get_profile("real", ["source={}", "source_strategies=[]"]).source_ensemble_below == 1000


def test_grad_cam_and_the_card_name_the_members(run):
    """Grad-CAM draws the fine-tuned member's evidence; the card's and the tags' source model is the ensembled one,
    even for a model that did not start from it."""
    from waferflow.plots import cam_layer, gradcam
    from waferflow.tracking.card import weights_provenance

    report = _go(run, 1000)
    ens, spec = load_model_dir(run / "out")
    x = preprocess(np.random.default_rng(1).integers(0, 3, (2, 16, 16), dtype=np.uint8), spec)
    layer = cam_layer(ens, x)
    assert any(layer is m for m in ens.members[0].modules())
    heat, _ = gradcam(ens, x)
    assert heat.shape[0] == 2 and np.isfinite(heat).all()
    assert weights_provenance(spec.to_dict())["source_model"] == report["source"]
    assert weights_provenance(read_spec(run / "final").to_dict())["source_model"] is None
