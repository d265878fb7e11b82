"""Tracking + registry on the embedded SQLite store (no server): logging, model card, aliases, audit, CLI."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from wfreg_helpers import CLASSES, make_latency, make_metrics, manifest

from waferflow import tracking as T
from waferflow.errors import ModelFormatError, RegistryError
from waferflow.gates import GateConfig, check_gates
from waferflow.tracking import client_for


@pytest.fixture(scope="module")
def store(tmp_path_factory, candidate_dirs, plot_png, empty_store):
    """One embedded store with a pipeline run and two logged candidates (good 0.95, better 0.97)."""
    wd = tmp_path_factory.mktemp("wd")
    shutil.copy(empty_store, wd / "mlflow.db")
    uri = T.resolve_tracking_uri(None, wd)
    md, ed = candidate_dirs
    parent = T.start_pipeline_run(uri, config={"profile": "local", "train": {"epochs": 2}},
                                  data_manifest=manifest(), run_name="pipeline")
    runs = {}
    for tag, acc in (("good", 0.95), ("better", 0.97)):
        m, m8 = make_metrics(acc), make_metrics(acc - 0.004, seed=1)
        runs[tag] = (T.log_candidate(uri, parent, md, m, {"plots": plot_png}, export_dir=ed, int8_metrics=m8,
                                     data_manifest=manifest(), run_name=tag), m, m8)
    return {"uri": uri, "wd": wd, "parent": parent, "runs": runs}


def report(metrics, int8, p99=3.0, champion=None):
    return check_gates({"metrics": metrics, "int8_metrics": int8, "latency": make_latency(p99)}, GateConfig(),
                       champion)


def test_default_uri_is_embedded_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.resolve_tracking_uri(None, tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert T.resolve_tracking_uri(None, tmp_path) == "http://example:5000"
    assert T.resolve_tracking_uri("sqlite:///x.db", tmp_path) == "sqlite:///x.db"


def test_candidate_run_contents(store, candidate_dirs):
    uri = store["uri"]
    c = client_for(uri)
    rid = store["runs"]["good"][0]
    run = c.get_run(rid)
    assert run.info.status == "FINISHED"
    assert "MLFLOW_TRACKING_URI" not in os.environ  # logging the ONNX models leaked no global state
    t = run.data.tags
    assert t["mlflow.parentRunId"] == store["parent"]
    assert t["data_hash"] == "ef" * 32 and t["strategy"] == "full_finetune" and t["backbone"] == "tinycnn"
    assert len(t["git_commit"]) == 40 or t["git_commit"] == "unknown"
    assert "pynvml" in t["system_metrics.gpu"]
    p = run.data.params
    assert p["model.backbone"] == "tinycnn" and p["config.optimizer.lr"] == "0.001"
    hist = c.get_metric_history(rid, "val_accuracy")
    assert [h.step for h in hist] == [0, 1, 2] and hist[-1].value == pytest.approx(0.7)
    m = run.data.metrics
    assert m["test_accuracy"] == pytest.approx(0.95) and f"test_recall_{CLASSES[0]}" in m
    assert m["latency_onnx_int8_p99_ms"] == pytest.approx(3.0) and "int8_test_accuracy" in m
    assert any(k.startswith("system/cpu_utilization") for k in m), sorted(m)
    # artifacts: plots, config, manifest, safe model files, export JSONs
    def ls(path=None):
        return {f.path for f in c.list_artifacts(rid, path)}
    assert "plots/curves.png" in ls("plots")
    assert {"model_dir/weights.pt", "model_dir/model.json", "model_dir/config.yaml",
            "model_dir/history.json"} <= ls("model_dir")
    assert {"export/latency.json", "export/export.json"} <= ls("export")
    assert "waferflow/data_manifest.json" in ls("waferflow")
    assert "config/resolved_config.json" in ls("config")
    parent = c.get_run(store["parent"])
    assert parent.data.params["train.epochs"] == "2" and parent.data.tags["data_hash"] == "ef" * 32


def test_logged_onnx_models_have_signature_and_load_back(store, candidate_dirs):
    import mlflow
    import onnxruntime as ort

    from waferflow.tracking.client import global_tracking_uri
    from waferflow.tracking.model_logging import example_input

    uri = store["uri"]
    rid = store["runs"]["good"][0]
    tags = client_for(uri).get_run(rid).data.tags
    x = example_input(json.loads((candidate_dirs[0] / "model.json").read_text()))
    ref = ort.InferenceSession(str(candidate_dirs[1] / "model.onnx")).run(None, {"input": x})[0]
    for form in ("onnx_fp32", "onnx_int8"):
        mid = tags[f"waferflow.logged_model.{form}"]
        with global_tracking_uri(uri):
            info = mlflow.models.get_model_info(f"models:/{mid}")
            assert info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"] in ([-1, 1, 16, 16], (-1, 1, 16, 16))
            assert info.saved_input_example_info is not None
            pred = mlflow.pyfunc.load_model(f"models:/{mid}").predict({"input": x})
        out = np.asarray(next(iter(pred.values())) if isinstance(pred, dict) else pred)
        assert out.shape == (1, len(CLASSES))
        if form == "onnx_fp32":
            np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_bad_inputs_fail_before_creating_a_run(store, candidate_dirs, tmp_path):
    uri, parent = store["uri"], store["parent"]
    c = client_for(uri)
    exp = c.get_run(parent).info.experiment_id
    before = len(c.search_runs([exp]))
    md, ed = candidate_dirs
    bad_md = tmp_path / "m"
    shutil.copytree(md, bad_md)
    (bad_md / "model.json").unlink()
    with pytest.raises(ModelFormatError, match="model.json"):
        T.log_candidate(uri, parent, bad_md, make_metrics(0.95), export_dir=ed)
    with pytest.raises(ModelFormatError, match="model.onnx"):
        T.log_candidate(uri, parent, md, make_metrics(0.95), export_dir=tmp_path)
    with pytest.raises(ModelFormatError, match="artifact 'plots'"):
        T.log_candidate(uri, parent, md, make_metrics(0.95), {"plots": tmp_path / "nope.png"}, export_dir=ed)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        T.log_candidate(uri, parent, md, tmp_path / "metrics.json", export_dir=ed)
    assert len(c.search_runs([exp])) == before


def test_register_card_challenger_and_gated_promotion(store, tmp_path):
    uri, name = store["uri"], "m-gated"
    (rid_g, m_g, m8_g), (rid_b, m_b, m8_b) = store["runs"]["good"], store["runs"]["better"]
    rep1 = report(m_g, m8_g)
    v1 = T.register_candidate(uri, rid_g, rep1, name=name)
    c = client_for(uri)
    mv = c.get_model_version(name, v1)
    assert mv.tags["gates.passed"] == "true" and mv.tags["gate.accuracy"].startswith("pass")
    assert mv.tags["pipeline_run_id"] == store["parent"] and mv.tags["test_data_hash"] == "ab" * 32
    card = mv.description
    for needle in ("# Model card", "## Data it saw", "| Donut | 400 | 100 |", "### Per class", "## Latency",
                   "| onnx_int8 |", "## Gates", "| accuracy |", "## Intended use", "## Limits", "ab" * 32):
        assert needle in card, needle
    assert T.champion_version(uri, name=name) is None
    assert str(c.get_model_version_by_alias(name, "challenger").version) == v1
    assert T.promote_if_passing(uri, v1, rep1, name=name).promoted
    # a slow candidate: registered, becomes challenger, champion stays
    rep_slow = report(m_b, m8_b, p99=80.0, champion={"metrics": m_g, "version": v1})
    v2 = T.register_candidate(uri, rid_b, rep_slow, name=name)
    res = T.promote_if_passing(uri, v2, rep_slow, name=name)
    assert not res.promoted and "p99_latency_ms" in res.reason
    assert T.champion_version(uri, name=name) == v1
    assert c.get_model_version(name, v2).tags["gate.p99_latency_ms"].startswith("FAIL")
    assert str(c.get_model_version_by_alias(name, "challenger").version) == v2
    hist = T.audit_history(uri, name=name)
    assert [(e["action"], e.get("alias"), e["new_version"], e["status"]) for e in hist] == [
        ("register", None, v1, "decision"), ("challenger", "challenger", v1, "applied"),
        ("promote", "champion", v1, "applied"), ("register", None, v2, "decision"),
        ("challenger", "challenger", v2, "applied"), ("reject", "champion", v2, "decision")]
    assert hist[2]["old_version"] is None and hist[2]["metrics"]["accuracy"] == pytest.approx(0.95)
    # the champion downloads complete, for re-evaluation on the same test set
    ch = T.get_champion(uri, tmp_path / "champ", name=name)
    assert ch.version == v1 and ch.run_id == rid_g
    assert {"weights.pt", "model.json"} <= set(os.listdir(ch.model_dir))
    assert {"model.onnx", "model.int8.onnx", "latency.json"} <= set(os.listdir(ch.export_dir))
    import torch
    sd = torch.load(ch.model_dir / "weights.pt", weights_only=True)
    assert "4.weight" in sd
    assert not [p for p in (tmp_path / "champ").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert T.get_champion(uri, tmp_path / "none", name="no-such-model") is None


def test_failure_midway_leaves_champion_and_records_it(store):
    uri, name = store["uri"], "m-fail"
    (rid_g, m_g, m8_g), (rid_b, m_b, m8_b) = store["runs"]["good"], store["runs"]["better"]
    rep1 = report(m_g, m8_g)
    v1 = T.register_candidate(uri, rid_g, rep1, name=name)
    T.promote_if_passing(uri, v1, rep1, name=name)
    rep2 = report(m_b, m8_b, champion={"metrics": m_g, "version": v1})
    v2 = T.register_candidate(uri, rid_b, rep2, name=name)

    def boom():
        raise RuntimeError("injected: network cut before the alias move")

    with pytest.raises(RuntimeError, match="injected"):
        T.promote_if_passing(uri, v2, rep2, name=name, _before_move=boom)
    assert T.champion_version(uri, name=name) == v1
    last = T.audit_history(uri, name=name)[-1]
    assert last["status"] == "failed" and last["new_version"] == v2 and "injected" in last["error"]
    # the lock was released: the promotion can be retried
    assert T.promote_if_passing(uri, v2, rep2, name=name, lock_timeout_s=5).promoted
    assert T.champion_version(uri, name=name) == v2


def test_recheck_refuses_worse_candidate_when_champion_moved(store):
    uri, name = store["uri"], "m-recheck"
    (rid_g, m_g, m8_g), (rid_b, m_b, m8_b) = store["runs"]["good"], store["runs"]["better"]
    base = report(m_g, m8_g)
    v0 = T.register_candidate(uri, rid_g, base, name=name)
    T.promote_if_passing(uri, v0, base, name=name)
    # both evaluated against v0; "better" wins first, then "good" (0.95 < 0.97 - tol) must be refused
    rep_b = report(m_b, m8_b, champion={"metrics": m_g, "version": v0})
    rep_g = report(m_g, m8_g, champion={"metrics": m_g, "version": v0})
    vb = T.register_candidate(uri, rid_b, rep_b, name=name)
    vg = T.register_candidate(uri, rid_g, rep_g, name=name)
    assert T.promote_if_passing(uri, vb, rep_b, name=name).promoted
    res = T.promote_if_passing(uri, vg, rep_g, name=name)
    assert not res.promoted and f"moved to v{vb}" in res.reason and "worse" in res.reason
    assert T.champion_version(uri, name=name) == vb


def test_lock_times_out_with_clear_message(store):
    uri, name = store["uri"], "m-lock"
    with T.promotion_lock(uri, name, owner="holder"):
        with pytest.raises(RegistryError, match="holds the lock"):
            with T.promotion_lock(uri, name, owner="second", timeout_s=0.5):
                pass
    with T.promotion_lock(uri, name, owner="third", timeout_s=1):  # released, can be taken again
        pass


def test_cli_list_show_promote_rollback_history(store, capsys, monkeypatch):
    from waferflow.cli import main

    uri, name = store["uri"], "m-cli"
    (rid_g, m_g, m8_g), (rid_b, m_b, m8_b) = store["runs"]["good"], store["runs"]["better"]
    rep1 = report(m_g, m8_g)
    v1 = T.register_candidate(uri, rid_g, rep1, name=name)
    T.promote_if_passing(uri, v1, rep1, name=name)
    rep2 = report(m_b, m8_b, p99=80.0, champion={"metrics": m_g, "version": v1})
    v2 = T.register_candidate(uri, rid_b, rep2, name=name)
    T.promote_if_passing(uri, v2, rep2, name=name)
    base = ["--tracking-uri", uri, "--name", name]
    assert main(["registry", "list", *base]) == 0
    out = capsys.readouterr().out
    assert f"   {v1}  champion" in out and "FAIL" in out and "p99_latency_ms" in out
    assert main(["registry", "show", v2, *base]) == 0
    out = capsys.readouterr().out
    assert "Gates: FAILED" in out and "[FAIL] p99_latency_ms" in out and "# Model card" in out
    monkeypatch.setenv("USER", "alice")
    assert main(["registry", "promote", v2, "--reason", "latency measured on a loaded host; re-measured 12ms",
                 *base]) == 0
    assert T.champion_version(uri, name=name) == v2
    assert main(["registry", "rollback", "--reason", "fab asked to keep the old model", "--actor", "bob",
                 *base]) == 0
    assert T.champion_version(uri, name=name) == v1
    capsys.readouterr()
    assert main(["registry", "history", *base]) == 0
    out = capsys.readouterr().out
    assert "manual_promote" in out and "by alice" in out and "re-measured 12ms" in out
    assert "rollback" in out and "by bob" in out and f"v{v2} -> v{v1}" in out
    hist = T.audit_history(uri, name=name)
    assert hist[-2]["reason"].startswith("manual override:") and "p99_latency_ms" in hist[-2]["reason"]
    # errors: exit 2 with a message saying what to do
    assert main(["registry", "rollback", "--reason", "again", *base]) == 2
    assert "first champion" in capsys.readouterr().err
    assert main(["registry", "show", "99", *base]) == 2
    assert "no version 99" in capsys.readouterr().err
    assert main(["registry", "list", "--tracking-uri", uri, "--name", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["registry", "promote", v1, "--reason", "  ", *base]) == 2
    assert main(["registry", "list", "--tracking-uri", f"sqlite:///{store['wd']}/missing.db"]) == 2
    assert "no MLflow store" in capsys.readouterr().err
    assert not Path(f"{store['wd']}/missing.db").exists()


def test_record_failed_run(store):
    uri = store["uri"]
    rid = T.start_pipeline_run(uri, run_name="will-fail")
    assert T.record_failed_run(uri, rid, error="train: CUDA OOM", stage="train") == rid
    run = client_for(uri).get_run(rid)
    assert run.info.status == "FAILED" and run.data.tags["failed_stage"] == "train"
    new = T.record_failed_run(uri, None, error="data: bad npz", pipeline_run="run-42", state="FAILED",
                              failed_tasks=["split-dataset"], name="m-failed-runs")
    run = client_for(uri).get_run(new)
    assert run.info.status == "FAILED" and run.data.tags["failed_stage"] == "split-dataset"
    assert run.data.tags["pipeline_run"] == "run-42"
    last = T.audit_history(uri, name="m-failed-runs")[-1]
    assert last["action"] == "pipeline_failed" and "bad npz" in last["reason"] and "run-42" in last["actor"]


def test_gate_report_dict_is_accepted_and_garbage_is_not(store):
    uri, name = store["uri"], "m-dict"
    rid, m, m8 = store["runs"]["good"]
    rep = report(m, m8)
    v = T.register_candidate(uri, rid, rep.to_dict(), name=name)
    assert T.promote_if_passing(uri, v, rep.to_dict(), name=name).promoted
    with pytest.raises(RegistryError, match="GateReport"):
        T.promote_if_passing(uri, v, {"passed": True}, name=name)
    with pytest.raises(RegistryError, match="no version 42"):
        T.promote_if_passing(uri, "42", rep, name=name)


def test_system_metrics_are_logged_even_for_a_stage_shorter_than_one_interval(store):
    c = client_for(store["uri"])
    rid = c.create_run(c.get_run(store["parent"]).info.experiment_id, run_name="short").info.run_id
    with T.track_system_metrics(store["uri"], rid, interval_s=60.0):
        pass
    m = c.get_run(rid).data.metrics
    assert "system/cpu_utilization_percentage" in m and "system/system_memory_usage_megabytes" in m, sorted(m)


def test_evaluate_scores_a_registered_version_in_its_deployed_form_with_no_other_flag(store, tmp_path, capsys,
                                                                                      monkeypatch):
    """`waferflow evaluate --model models:/NAME@champion --data F --out D`: the version is downloaded with its ONNX
    forms and scored in the form its gates deployed (onnx_int8 here); a wrong URI or a missing alias is one clear
    line; the download leaves nothing behind."""
    from waferflow.cli import main
    from waferflow.data.contract import WaferDataset, save_dataset
    from wfreg_helpers import S

    uri, name = store["uri"], "m-eval"
    rid, m, m8 = store["runs"]["good"]
    rep = report(m, m8)
    v = T.register_candidate(uri, rid, rep, name=name)
    assert T.promote_if_passing(uri, v, rep, name=name).promoted
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 3, (24, S, S)).astype(np.uint8)
    save_dataset(WaferDataset(CLASSES, labels=np.arange(24) % len(CLASSES), maps=maps), tmp_path / "d.npz")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)
    assert main(["evaluate", "--model", f"models:/{name}@champion", "--data", str(tmp_path / "d.npz"),
                 "--out", str(tmp_path / "e"), "--tracking-uri", uri, "--gradcam-per-class", "0"]) == 0
    out = capsys.readouterr().out
    assert f"is version {v}" in out and "evaluating form onnx_int8" in out
    got = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert got["form"] == "onnx_int8" and got["model_uri"] == f"models:/{name}@champion" and got["overall"]["n"] == 24
    assert not list((tmp_path / "tmp").iterdir()), "the download was left behind"
    assert main(["evaluate", "--model", f"models:/{name}/{v}", "--form", "onnx_fp32", "--data",
                 str(tmp_path / "d.npz"), "--out", str(tmp_path / "e2"), "--tracking-uri", uri]) == 0
    assert json.loads((tmp_path / "e2" / "metrics.json").read_text())["form"] == "onnx_fp32"
    for bad, msg in ((f"models:/{name}@nosuchalias", "no registered model 'm-eval' with 'nosuchalias'"),
                     (f"models:/{name}/latest", "expected models:/NAME@ALIAS or models:/NAME/VERSION")):
        assert main(["evaluate", "--model", bad, "--data", str(tmp_path / "d.npz"), "--out", str(tmp_path / "e3"),
                     "--tracking-uri", uri]) != 0
        assert msg in capsys.readouterr().err
