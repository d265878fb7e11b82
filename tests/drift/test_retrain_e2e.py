"""End to end through kfp.local: drift found -> the training pipeline runs -> a new registered version."""

from __future__ import annotations

import os

import pytest

RETRAIN_OVERRIDES = ["strategies=[feature_extraction]", "epochs={feature_extraction: 1}"]


@pytest.mark.slow
def test_drift_starts_a_kfp_local_training_run_that_registers_a_version(
        tmp_path, tiny_model, tiny_reference, shifted_batch):
    from waferflow.cli.drift import make_launcher
    from waferflow.drift.check import run_drift_check
    from waferflow.tracking import list_versions, resolve_tracking_uri

    wd = tmp_path / "wd"
    uri = resolve_tracking_uri(None, wd)
    saved = dict(os.environ)  # run_local exports its settings to the task subprocesses; restore them after
    try:
        launcher = make_launcher("tiny", RETRAIN_OVERRIDES, wd)
        d = run_drift_check(shifted_batch, tmp_path / "out", model=str(tiny_model[0]), workdir=wd, tracking_uri=uri,
                        retrain=True, launcher=launcher)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert d["drift_detected"]
    r = d["retrain"]
    assert r["started"] and r["where"] == "kfp.local"
    versions = list_versions(uri)
    assert len(versions) >= 1  # the retrain registered a new model version in the same store
    # the retrain trained on the drifted (labeled) maps
    assert d["retrain_plan"]["data"].endswith("retrain_data.npz")
