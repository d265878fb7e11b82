"""The drift decision, its outputs, bad input (no retrain then) and the retrain plan."""

from __future__ import annotations

import json

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset, load_dataset, save_dataset
from waferflow.drift.check import run_drift_check
from waferflow.drift.detect import DriftConfig, judge_drift, domain_classifier_auc
from waferflow.drift.reference import load_reference
from waferflow.errors import ConfigError, DataError


def _check(tmp_path, batch, model_dir, launcher=None, retrain=False, **kw):
    return run_drift_check(batch, tmp_path / "out", model=str(model_dir), workdir=tmp_path / "wd",
                       retrain=retrain, launcher=launcher, **kw)


def test_reference_files_and_roundtrip(tiny_model, tiny_reference):
    ref = load_reference(tiny_reference)
    assert len(ref.frame) == 400
    assert ref.summary["n_rows"] == 400 and ref.summary["readable_features"][0] == "fail_ratio"
    assert ref.pca.components.shape[0] == 8
    # the PCA is plain arrays: loading it never needs pickle
    with np.load(tiny_reference / "pca.npz", allow_pickle=False) as z:
        assert set(z.files) == {"mean", "components", "explained_variance"}


@pytest.mark.parametrize("kw", [{"share_threshold": 0}, {"share_threshold": 1.5}, {"embedding_threshold": 0.4},
                                {"prediction_threshold": float("nan")}])
def test_config_rejects_bad_thresholds(kw):
    with pytest.raises(ConfigError):
        DriftConfig(**kw)


def test_domain_classifier_separates_only_shifted_data():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(800, 4))
    same, _ = domain_classifier_auc(ref, rng.normal(size=(400, 4)))
    moved, oof = domain_classifier_auc(ref, rng.normal(size=(400, 4)) + [1.5, 0, 0, 0])
    assert same < 0.58 < 0.75 < moved
    assert oof.shape == (1200,)


def test_clean_batch_no_drift_and_outputs(tmp_path, tiny_model, tiny_reference, clean_batch, launcher):
    d = _check(tmp_path, clean_batch, tiny_model[0], launcher=launcher, retrain=True)
    assert d["drift_detected"] is False and d["reasons"] == []
    assert launcher.calls == []
    assert d["retrain"] == {"started": False, "why": "no drift"}
    out = tmp_path / "out"
    on_disk = json.loads((out / "decision.json").read_text())
    for k in ("drift_detected", "reasons", "drifted_features", "share", "embedding_score", "n_current", "to_label"):
        assert k in on_disk
    assert on_disk["n_current"] == 300 and on_disk["to_label"] == 0  # labeled batch: nothing to label
    html = (out / "report.html").read_text()
    for feat in ("fail_ratio", "ring_4", "edge_ratio", "quadrant_imbalance", "n_clusters", "die_rows",
                 "domain_score", "pred_class"):
        assert feat in html
    rep = json.loads((out / "report.json").read_text())
    assert any(m["metric_name"].startswith("DriftedColumnsCount") for m in rep["metrics"])
    # logged to the embedded MLflow store of the workdir
    from mlflow.tracking import MlflowClient

    uri = d["tracking_uri"]
    assert uri.startswith("sqlite:///") and str(tmp_path / "wd") in uri
    c = MlflowClient(tracking_uri=uri)
    run = c.get_run(d["mlflow_run_id"])
    assert run.data.metrics["drift_detected"] == 0.0
    assert run.data.params["threshold.share"] == str(DriftConfig().share_threshold)


def test_shifted_batch_drifts_and_starts_a_retrain_with_the_labeled_maps(
        tmp_path, tiny_model, tiny_reference, shifted_batch, launcher):
    d = _check(tmp_path, shifted_batch, tiny_model[0], launcher=launcher, retrain=True)
    assert d["drift_detected"] is True
    assert "fail_ratio" in d["drifted_features"] and d["share"] >= 0.5
    assert any("readable features drifted" in r for r in d["reasons"])
    assert len(launcher.calls) == 1
    plan = launcher.calls[0]
    joined = load_dataset(plan.data)
    assert len(joined) == 300 and joined.labeled  # the labeled new maps are the retrain's data
    assert plan.pretrained == ""
    assert d["retrain"]["started"] is True


def test_labeled_maps_join_the_base_training_data(tmp_path, tiny_model, tiny_reference, shifted_batch, launcher):
    from waferflow.data.synth import generate

    base = tmp_path / "base.npz"
    save_dataset(generate(50, size=48, seed=9, taxonomy="wm811k"), base)  # other size: variable layout
    _check(tmp_path, shifted_batch, tiny_model[0], launcher=launcher, retrain=True, train_data=base)
    joined = load_dataset(launcher.calls[0].data)
    assert len(joined) == 350 and sorted({tuple(s) for s in joined.map_shapes()}) == [(32, 32), (48, 48)]


def test_unlabeled_maps_go_to_adaptive_bn_and_to_label(tmp_path, tiny_model, tiny_reference, shifted_unlabeled,
                                                       launcher):
    d = _check(tmp_path, shifted_unlabeled, tiny_model[0], launcher=launcher, retrain=True)
    assert d["drift_detected"] and d["to_label"] == 200
    rows = (tmp_path / "out" / "to_label.csv").read_text().splitlines()
    assert rows[0] == "index,pred_class,confidence" and len(rows) == 201
    conf = [float(r.split(",")[2]) for r in rows[1:]]
    assert conf == sorted(conf)  # least confident first
    plan = launcher.calls[0]
    assert plan.data == "" and plan.pretrained.endswith("adapted_champion")
    from waferflow.models import load_model_dir

    adapted, _ = load_model_dir(plan.pretrained)
    orig = tiny_model[1]
    # BN statistics changed, weights did not
    assert not np.allclose(adapted.bn1.running_mean.numpy(), orig.bn1.running_mean.numpy())
    assert np.allclose(adapted.conv1.weight.detach().numpy(), orig.conv1.weight.detach().numpy())


def test_unlabeled_maps_are_the_pool_of_a_retrain_with_data(tmp_path, tiny_model, tiny_reference, shifted_unlabeled,
                                                             launcher, monkeypatch):
    from waferflow.cli.drift import make_launcher
    from waferflow.data.synth import generate

    base = tmp_path / "base.npz"
    save_dataset(generate(50, size=32, seed=9), base)
    d = _check(tmp_path, shifted_unlabeled, tiny_model[0], launcher=launcher, retrain=True, train_data=base)
    plan = launcher.calls[0]
    assert plan.data == str(base.resolve()) and plan.pretrained.endswith("adapted_champion")
    pool = load_dataset(plan.unlabeled)
    assert plan.unlabeled.endswith("retrain_pool.npz") and len(pool) == 200 and not pool.labeled
    assert d["retrain_plan"]["unlabeled"] == plan.unlabeled
    # the retrain's profile carries it as its pool (kfp.local here; on a cluster it is uploaded as data is)
    import waferflow.orchestration.local as orchestration_local

    seen = {}

    def fake_run_local(profile, **kw):
        seen["profile"] = profile
        raise KeyboardInterrupt

    monkeypatch.setattr(orchestration_local, "run_local", fake_run_local)
    with pytest.raises(KeyboardInterrupt):
        make_launcher("tiny", [], tmp_path / "wd")(plan)
    assert seen["profile"].unlabeled == plan.unlabeled and seen["profile"].data == plan.data


# ----------------------------------------------------------------------------- bad input: error, no retrain
def test_empty_batch(tmp_path, tiny_model, tiny_reference, launcher):
    p = tmp_path / "empty.npz"
    np.savez(p, maps=np.zeros((0, 32, 32), np.uint8), class_names=np.array(["a"]))
    with pytest.raises(DataError, match="no wafer maps"):
        _check(tmp_path, p, tiny_model[0], launcher=launcher, retrain=True)
    assert launcher.calls == [] and not (tmp_path / "out" / "decision.json").exists()


def test_unknown_die_coding(tmp_path, tiny_model, tiny_reference, launcher):
    maps = np.ones((20, 32, 32), np.uint8)
    maps[3, 5, 5] = 3
    p = tmp_path / "bad.npz"
    np.savez(p, maps=maps, class_names=np.array(["a"]))
    with pytest.raises(DataError, match="0/1/2"):
        _check(tmp_path, p, tiny_model[0], launcher=launcher, retrain=True)
    assert launcher.calls == [] and not (tmp_path / "out" / "decision.json").exists()


def test_missing_reference(tmp_path, tiny_model, clean_batch, launcher):
    with pytest.raises(DataError, match="drift reference .* does not exist"):
        run_drift_check(clean_batch, tmp_path / "out", model=str(tiny_model[0]), reference=tmp_path / "nope",
                    workdir=tmp_path / "wd", retrain=True, launcher=launcher)
    assert launcher.calls == [] and not (tmp_path / "out" / "decision.json").exists()


def test_incomplete_reference(tmp_path, tiny_model, tiny_reference, clean_batch, launcher):
    import shutil

    broken = tmp_path / "ref"
    shutil.copytree(tiny_reference, broken)
    (broken / "pca.npz").unlink()
    with pytest.raises(DataError, match="lacks pca.npz"):
        run_drift_check(clean_batch, tmp_path / "out", model=str(tiny_model[0]), reference=broken,
                    workdir=tmp_path / "wd", retrain=True, launcher=launcher)
    assert launcher.calls == []


def test_no_champion_in_the_registry(tmp_path, clean_batch, launcher):
    from waferflow.errors import RegistryError

    with pytest.raises(RegistryError, match="no champion"):
        run_drift_check(clean_batch, tmp_path / "out", workdir=tmp_path / "wd", retrain=True, launcher=launcher)
    assert launcher.calls == []


def test_reference_of_another_model_is_refused(tmp_path, tiny_model, tiny_reference):
    import dataclasses

    _, m, s = tiny_model
    other = dataclasses.replace(s, class_names=tuple(f"c{i}" for i in range(s.num_classes)))
    ds = WaferDataset(class_names=s.class_names, maps=np.ones((5, 32, 32), np.uint8))
    with pytest.raises(ConfigError, match="reference was built for classes"):
        judge_drift(m, other, load_reference(tiny_reference), ds, tmp_path / "o")


def test_mixed_batch_keeps_labeled_first_and_drops_labels_for_the_check():
    from waferflow.data.synth import generate
    from waferflow.drift.retrain import Batch

    lab = generate(5, size=32, seed=0, taxonomy="wm811k")
    unl = WaferDataset(class_names=lab.class_names, maps=generate(3, size=40, seed=1, taxonomy="wm811k").maps)
    allm = Batch(labeled=lab, unlabeled=unl, source="x").all_maps
    assert len(allm) == 8 and not allm.labeled
    assert np.array_equal(allm.get(0), lab.maps[0]) and np.array_equal(allm.get(7), unl.maps[2])
    with pytest.raises(DataError, match="no wafer maps"):
        _ = Batch(labeled=None, unlabeled=None, source="x").all_maps


def test_reference_rows_come_from_held_out_maps_and_pca_from_training_maps(tiny_model, tmp_path):
    """The model view of fitted maps is biased (over-confident, in-sample PCA): held-out maps are the rows."""
    from waferflow.data.synth import generate
    from waferflow.drift.reference import build_reference_from_model

    d, m, s = tiny_model
    train = generate(200, size=32, seed=11, taxonomy="wm811k")
    held = generate(120, size=32, seed=12, taxonomy="wm811k")
    ref = load_reference(build_reference_from_model(m, s, train, tmp_path / "with", holdout_ds=held))
    assert len(ref.frame) == 120 and "held-out" in ref.summary["rows_source"]
    assert ref.summary["pca_fitted_on"] == "200 training maps"
    ref2 = load_reference(build_reference_from_model(m, s, train, tmp_path / "without"))
    assert len(ref2.frame) == 100 and "other half" in ref2.summary["rows_source"]
