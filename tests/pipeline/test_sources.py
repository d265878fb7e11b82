"""Data sources a cluster task can read (S3/MinIO, MLflow artifacts, a PVC path), and the drift monitor's hand-over
of its retrain inputs as MLflow URIs the retrain's pods can read."""

import numpy as np
import pytest

from waferflow.errors import DataError
from waferflow.orchestration.sources import fetch_source, is_remote, publish_retrain_inputs


@pytest.fixture
def s3(monkeypatch):
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with mock_aws():
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="mlflow")
        yield client


def test_an_s3_object_and_an_s3_folder_are_downloaded(s3, tmp_path):
    s3.put_object(Bucket="mlflow", Key="data/maps.npz", Body=b"npz-bytes")
    s3.put_object(Bucket="mlflow", Key="data/pngs/center/a.png", Body=b"a")
    s3.put_object(Bucket="mlflow", Key="data/pngs/edge/b.png", Body=b"b")
    f = fetch_source("s3://mlflow/data/maps.npz", tmp_path / "one")
    assert f.read_bytes() == b"npz-bytes"
    d = fetch_source("s3://mlflow/data/pngs/", tmp_path / "folder")
    assert sorted(p.relative_to(d).as_posix() for p in d.rglob("*.png")) == ["center/a.png", "edge/b.png"]


def test_unreadable_sources_are_clear_errors(s3, tmp_path):
    with pytest.raises(DataError, match="cannot read s3://mlflow/nope.npz"):
        fetch_source("s3://mlflow/nope.npz", tmp_path / "x")
    with pytest.raises(DataError, match="holds no objects"):
        fetch_source("s3://mlflow/empty/", tmp_path / "y")
    with pytest.raises(DataError, match="not an S3 object URI"):
        fetch_source("s3://mlflow", tmp_path / "z")
    with pytest.raises(DataError, match="cluster.data_pvc"):
        fetch_source(str(tmp_path / "missing.npz"), tmp_path / "w")


def test_retrain_inputs_are_handed_over_as_mlflow_uris_that_another_pod_reads(tmp_path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("drift", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    data = tmp_path / "drift_pod" / "retrain_data.npz"
    model = tmp_path / "drift_pod" / "adapted_champion"
    model.mkdir(parents=True)
    np.savez(data, maps=np.zeros((2, 4, 4), np.uint8))
    (model / "model.json").write_text("{}")
    pool = tmp_path / "drift_pod" / "retrain_pool.npz"
    np.savez(pool, maps=np.ones((3, 4, 4), np.uint8))
    plan = publish_retrain_inputs({"data": str(data), "pretrained": str(model), "unlabeled": str(pool),
                                   "notes": ["n"]}, run_id, uri)
    assert plan["unlabeled"] == f"runs:/{run_id}/retrain/retrain_pool.npz"
    assert np.load(fetch_source(plan["unlabeled"], tmp_path / "pool_pod", tracking_uri=uri))["maps"].shape == (3, 4, 4)
    assert plan["data"] == f"runs:/{run_id}/retrain/retrain_data.npz"
    assert plan["pretrained"] == f"runs:/{run_id}/retrain/adapted_champion"
    assert plan["notes"] == ["n"] and all(is_remote(plan[k]) for k in ("data", "pretrained"))
    # the retrain's data task, elsewhere, reads them back
    got = fetch_source(plan["data"], tmp_path / "retrain_pod", tracking_uri=uri)
    assert np.load(got)["maps"].shape == (2, 4, 4)
    got = fetch_source(plan["pretrained"], tmp_path / "retrain_pod2", tracking_uri=uri)
    assert (got / "model.json").read_text() == "{}"
    # URIs given as input are passed through untouched
    assert publish_retrain_inputs({"data": "s3://mlflow/base.npz", "pretrained": ""}, run_id, uri) == \
        {"data": "s3://mlflow/base.npz", "pretrained": ""}


def test_start_training_on_a_cluster_hands_over_runs_uris_and_the_drift_monitors_cluster_options(tmp_path,
                                                                                                monkeypatch):
    import json
    from types import SimpleNamespace

    from mlflow import MlflowClient

    import waferflow.orchestration.retrain as rt
    from waferflow.components.start_training import start_training
    from waferflow.config import to_dict
    from waferflow.profiles import get_profile

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("d", artifact_location=(tmp_path / "a").as_uri())).info.run_id
    dec = tmp_path / "decision"
    dec.mkdir()
    np.savez(dec / "retrain_data.npz", maps=np.zeros((1, 2, 2), np.uint8))
    (dec / "decision.json").write_text(json.dumps({
        "mlflow_run_id": run_id, "tracking_uri": uri,
        "retrain_plan": {"data": str(dec / "retrain_data.npz"), "pretrained": "", "notes": []}}))
    seen = {}
    monkeypatch.setattr(rt, "submit_training",
                        lambda host, prof, namespace=None: seen.update(prof=prof, ns=namespace) or {"run_id": "r-1"})
    cluster = to_dict(get_profile("full", ["cluster.image_registry=reg.example.com/wf"]).cluster)
    rid = start_training.python_func(decision=SimpleNamespace(path=str(dec)), host="http://kfp:8888",
                                     namespace="team-a", profile="full", overrides=["n_maps=500"],
                                     cluster=cluster, workdir="")
    assert rid == "r-1" and seen["ns"] == "team-a"
    prof = seen["prof"]
    assert prof.data == f"runs:/{run_id}/retrain/retrain_data.npz" and prof.n_maps == 500
    assert prof.cluster.image("cpu") == "reg.example.com/wf/waferflow-cpu:0.1.0"


def test_the_data_component_reads_an_s3_source_and_keeps_no_download(s3, tmp_path, monkeypatch):
    import os
    import tempfile

    from kfp import dsl

    from waferflow.components.data import prepare_data
    from waferflow.data.contract import load_dataset, save_dataset
    from waferflow.data.synth import generate

    save_dataset(generate(n=30, size=24, seed=1, taxonomy="seed20"), tmp_path / "maps.npz", source="test")
    s3.upload_file(str(tmp_path / "maps.npz"), "mlflow", "data/maps.npz")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))

    def art(name):
        a = dsl.Dataset(name=name, uri=str(tmp_path / name), metadata={})
        a.path = str(tmp_path / name)
        return a

    out, unl = art("dataset"), art("unlabeled")
    prepare_data.python_func(source="s3://mlflow/data/maps.npz", source_fingerprint="etag", n_maps=0, map_size=24,
                             taxonomy="seed20", seed=0, dataset=out, unlabeled=unl)
    assert len(load_dataset(os.path.join(out.path, "data.npz"), require_labels=True)) == 30
    assert out.metadata["source"] == "ingest:s3://mlflow/data/maps.npz"
    assert list(scratch.iterdir()) == []  # the download is gone
