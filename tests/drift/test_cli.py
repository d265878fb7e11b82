"""`waferflow drift` and `waferflow drift-reference` from the command line."""

from __future__ import annotations

import json

from waferflow.cli import main


def test_drift_command_writes_decision_and_prints_reasons(tmp_path, tiny_model, tiny_reference, shifted_batch,
                                                          capsys):
    out = tmp_path / "out"
    rc = main(["drift", "--current", str(shifted_batch), "--out", str(out), "--model", str(tiny_model[0]),
               "--workdir", str(tmp_path / "wd")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "DRIFT DETECTED" in text and "reason:" in text and "report.html" in text
    d = json.loads((out / "decision.json").read_text())
    assert d["drift_detected"] and d["retrain"] is None


def test_missing_reference_exits_2_with_a_fix(tmp_path, tiny_model, clean_batch, capsys):
    rc = main(["drift", "--current", str(clean_batch), "--out", str(tmp_path / "o"), "--model",
               str(tiny_model[0]), "--reference", str(tmp_path / "none"), "--retrain",
               "--workdir", str(tmp_path / "wd")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "drift reference" in err and "build" in err


def test_retrain_options_need_retrain(tmp_path, clean_batch, capsys):
    rc = main(["drift", "--current", str(clean_batch), "--out", str(tmp_path / "o"), "--host", "http://x"])
    assert rc == 2 and "--retrain" in capsys.readouterr().err


def test_cluster_retrain_refuses_a_store_on_this_disk_before_writing_anything(tmp_path, clean_batch, capsys,
                                                                              monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for extra in ([], ["--tracking-uri", f"sqlite:///{tmp_path / 'm.db'}"], ["--tracking-uri", str(tmp_path / "mlruns")]):
        rc = main(["drift", "--current", str(clean_batch), "--out", str(tmp_path / "o"), "--retrain",
                   "--host", "http://kfp:8888", "--workdir", str(tmp_path / "wd"), *extra])
        err = capsys.readouterr().err
        assert rc == 2 and "tracking server your cluster uses" in err and "this machine's disk" in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "wd").exists()


def test_cluster_launcher_hands_local_inputs_over_as_runs_uris_with_the_cluster_overrides(tmp_path, monkeypatch):
    import numpy as np
    import pytest
    from mlflow import MlflowClient

    import waferflow.orchestration.retrain as rt
    from waferflow.cli.drift import make_launcher
    from waferflow.drift.retrain import RetrainPlan
    from waferflow.errors import ConfigError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("d", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    data, pool = tmp_path / "retrain_data.npz", tmp_path / "retrain_pool.npz"
    np.savez(data, maps=np.zeros((1, 2, 2), np.uint8))
    np.savez(pool, maps=np.ones((2, 2, 2), np.uint8))
    seen = {}
    monkeypatch.setattr(rt, "submit_training",
                        lambda host, prof, namespace=None: seen.update(prof=prof, ns=namespace) or {"run_id": "r-1"})
    monkeypatch.setenv("WAFERFLOW_SET", "cluster.image_registry=reg.example.com/wf\n")
    launch = make_launcher("full", ["n_maps=500"], tmp_path / "wd", host="http://kfp:8888", namespace="team-a")
    plan = RetrainPlan(data=str(data), unlabeled=str(pool), drift_run=run_id, tracking_uri=uri)
    assert launch(plan) == {"run_id": "r-1"} and seen["ns"] == "team-a"
    prof = seen["prof"]
    assert prof.data == f"runs:/{run_id}/retrain/retrain_data.npz" and prof.n_maps == 500
    assert prof.unlabeled == f"runs:/{run_id}/retrain/retrain_pool.npz" and prof.pretrained != str(data)
    assert prof.cluster.image("cpu") == "reg.example.com/wf/waferflow-cpu:0.1.0"
    assert sorted(a.path for a in client.list_artifacts(run_id, "retrain")) == \
        ["retrain/retrain_data.npz", "retrain/retrain_pool.npz"]
    # a decision that was not logged cannot carry local files to the cluster: refused, nothing submitted
    seen.clear()
    with pytest.raises(ConfigError, match="not logged"):
        launch(RetrainPlan(data=str(data)))
    assert not seen
    # remote inputs need no run
    (tmp_path / "wd").mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path / "wd")
    launch(RetrainPlan(data="s3://bucket/base.npz"))
    assert seen["prof"].data == "s3://bucket/base.npz" and not (tmp_path / "wd" / "mlflow.db").exists()


def test_drift_reference_command(tmp_path, tiny_model, clean_batch, capsys):
    import shutil

    mdir = tmp_path / "m"
    shutil.copytree(tiny_model[0], mdir, ignore=shutil.ignore_patterns("drift_reference"))
    rc = main(["drift-reference", "--model", str(mdir), "--data", str(clean_batch), "--max-rows", "100"])
    assert rc == 0
    summary = json.loads((mdir / "drift_reference" / "reference.json").read_text())
    assert summary["n_rows"] == 100 and summary["n_source_maps"] == 300


def test_drift_reference_stores_into_the_run_store_and_refuses_a_missing_one_first(tmp_path, tiny_model, clean_batch,
                                                                                 capsys, monkeypatch):
    import shutil

    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    mdir = tmp_path / "m"
    shutil.copytree(tiny_model[0], mdir, ignore=shutil.ignore_patterns("drift_reference"))
    args = ["drift-reference", "--model", str(mdir), "--data", str(clean_batch), "--max-rows", "50"]
    assert main([*args, "--store-run", "abc"]) == 2
    assert "no MLflow store" in capsys.readouterr().err and not (mdir / "drift_reference").exists()
    # no URI given: the store `waferflow run` writes, ./waferflow_runs/mlflow.db
    (tmp_path / "waferflow_runs").mkdir()
    uri = f"sqlite:///{tmp_path / 'waferflow_runs' / 'mlflow.db'}"
    client = MlflowClient(uri)
    rid = client.create_run(client.create_experiment("x", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    assert main([*args, "--store-run", rid]) == 0
    assert "reference.json" in {a.path.split("/")[-1] for a in client.list_artifacts(rid, "drift_reference")}
