"""The drift-monitor pipeline compiles; the retrain runs only under dsl.If(drift_detected)."""

from __future__ import annotations

import yaml


def test_drift_monitor_compiles_with_condition_and_secret(tmp_path):
    from kfp import compiler

    from waferflow.pipelines.drift_monitor import PIPELINE_NAME, drift_monitor

    out = tmp_path / "drift_monitor.yaml"
    compiler.Compiler().compile(drift_monitor, str(out))
    docs = list(yaml.safe_load_all(out.read_text()))
    spec = docs[0]
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"check-drift", "condition-1"}
    cond = root["condition-1"]
    assert "drift_detected" in cond["triggerPolicy"]["condition"]
    inner = spec["components"]["comp-condition-1"]["dag"]["tasks"]
    assert "start-training" in inner
    # the decision artifact flows from the check into the training starter
    arts = inner["start-training"]["inputs"]["artifacts"]
    assert "decision" in arts
    outs = spec["components"]["comp-check-drift"]["outputDefinitions"]["artifacts"]
    assert outs["report"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert outs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for ex in ("exec-check-drift", "exec-start-training"):
        assert platform[ex]["secretAsEnv"][0]["secretName"] == "waferflow-credentials"


def test_submit_training_uses_kfp_client_with_the_compiled_package(monkeypatch):
    import waferflow.orchestration.cluster as cluster
    from waferflow.orchestration.retrain import submit_training
    from waferflow.profiles import get_profile

    class FakeClient:
        def __init__(self):
            self.calls = []

        def create_run_from_pipeline_package(self, pkg, arguments, run_name, experiment_name, namespace,
                                             service_account=None):
            self.calls.append((next(yaml.safe_load_all(open(pkg))), arguments, run_name, experiment_name))
            return type("Run", (), {"run_id": "run-123"})()

    c = FakeClient()
    monkeypatch.setattr(cluster, "make_client", lambda host, token=None, namespace=None: c)
    res = submit_training("http://kfp.example:8888", get_profile("tiny", ["data=/mnt/new.npz"]))
    assert res["run_id"] == "run-123" and res["where"] == "kfp" and res["run_name"].startswith("waferflow-retrain")
    pkg, _, _, exp = c.calls[0]
    assert pkg["pipelineInfo"]["name"] == "waferflow-training"
    # the retrain's data is the compiled pipeline's default for data_source
    assert pkg["root"]["inputDefinitions"]["parameters"]["data_source"]["defaultValue"] == "/mnt/new.npz"
    assert exp == "waferflow"
