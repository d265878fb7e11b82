"""One kfp.local end-to-end run of the training pipeline on the tiny profile, then a repeat whose gates are set
to fail: the data stages come from the cache and ``champion`` does not move."""

import json
import os
import tempfile

import pytest

from waferflow.orchestration.local import run_local
from waferflow.profiles import get_profile

EVERY_STAGE = {"data", "start_run", "split", "adapt_bn", "train", "evaluate", "select_best", "export", "compile_trt",
               "log_mlflow", "register", "report", "promote", "finish_run"}


@pytest.mark.slow
@pytest.mark.run_first
@pytest.mark.timeout(1800)
def test_tiny_pipeline_promotes_then_a_failing_gate_keeps_the_champion(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    system_tmp = tmp_path / "system_tmp"  # what /tmp is to a user: the run leaves nothing in it
    system_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_tmp))
    monkeypatch.setattr(tempfile, "tempdir", None)
    profile = get_profile("tiny", ["n_maps=200"])
    r1 = run_local(profile, workdir=tmp_path / "wd")
    # nothing per run or per task (kfp's `mktemp -d` code folders); torch's one cache folder per user may be there
    assert [p.name for p in system_tmp.iterdir() if not p.name.startswith("torchinductor_")] == []
    ran = {s["stage"] for s in r1.stages if not s.get("cached")}
    assert EVERY_STAGE <= ran, EVERY_STAGE - ran
    assert all(s["ok"] for s in r1.stages if not s.get("cached"))
    assert sum(1 for s in r1.stages if s["stage"] == "train") == 2  # one task per candidate
    s1 = r1.summary
    assert s1["gates"]["passed"] is True and s1["version"] == "1"
    assert r1.champion == "1"
    assert s1["trt"]["status"].startswith("skipped")  # no CUDA here: recorded, never faked
    assert "| full_finetune-tf_efficientnet_lite0 |" in s1["comparison_markdown"]

    client = MlflowClient(r1.tracking_uri)
    exp = client.get_experiment_by_name("waferflow")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) >= 2 and all(r.info.status == "FINISHED" for r in runs)  # parent + candidate
    mv = client.get_model_version_by_alias("wafer-defect-classifier", "champion")
    assert str(mv.version) == "1"
    assert mv.tags.get("gates.passed") in ("true", "True")
    assert "- Trained on: " in mv.description  # the card names the CPU (waferflow.host)
    assert json.loads((r1.run_dir / "run.json").read_text())["host"]["cores"] == os.cpu_count()

    # Same data, a latency gate nobody can meet: the data stages hit the cache, the version is registered
    # with its failed verdicts, and promotion is skipped.
    failing = get_profile("tiny", ["n_maps=200", "gates.max_p99_latency_ms=0.0001"])
    r2 = run_local(failing, workdir=tmp_path / "wd")
    cached = {s["stage"] for s in r2.stages if s.get("cached")}
    assert {"data", "split"} <= cached, r2.cache_hits
    # metrics artifacts are written to disk, so the candidates' evaluations come from the cache too
    assert "train-candidate" in r2.cache_hits and "evaluate-model" in r2.cache_hits, r2.cache_hits
    ran2 = {s["stage"] for s in r2.stages if not s.get("cached")}
    assert "promote" not in ran2 and "register" in ran2
    assert r2.summary["gates"]["passed"] is False and r2.summary["version"] == "2"
    failed = [g["name"] for g in r2.summary["gates"]["results"] if not g["passed"]]
    assert any("latency" in n for n in failed)
    # the miss explains itself in one line; the champion comparison is a paired test on the same maps
    reason = r2.summary["gates"]["reason"]
    assert reason.startswith("failed: p99_latency_ms") and "\n" not in reason
    paired = {g["name"]: g for g in r2.summary["gates"]["results"] if g["name"].startswith("vs_champion")}
    assert set(paired) == {"vs_champion_accuracy", "vs_champion_macro_f1"}
    assert all(g["p_value"] is not None and g["ci_low"] is not None for g in paired.values())
    assert r2.summary["label_queue"]["skipped"] == "the data has no unlabeled maps"  # synthetic data
    assert r2.champion == "1"
    assert str(client.get_model_version_by_alias("wafer-defect-classifier", "champion").version) == "1"
