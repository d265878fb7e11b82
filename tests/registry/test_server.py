"""Against a real ``mlflow server`` (sqlite backend, artifacts proxied to S3 on a moto server).

The servers start once per session (conftest ``servers``). The two tests that take a server down run last in
this module, in file order: S3 first (restarted afterwards), MLflow last.
"""

import signal
import threading

import pytest
from wfreg_helpers import build_candidate, make_latency, make_metrics, manifest

from waferflow import tracking as T
from waferflow.errors import RegistryError
from waferflow.gates import GateConfig, check_gates
from waferflow.tracking import client_for

FAST = T.RetryPolicy(attempts=2, base_delay_s=0.1)


@pytest.fixture(scope="module")
def logged(servers, tmp_path_factory):
    """Five candidate runs logged to the server (artifacts land in S3): name -> (run_id, metrics, int8, p99)."""
    uri = servers.uri
    root = tmp_path_factory.mktemp("srvcand")
    md, ed = build_candidate(root / "fast")
    slow_md, slow_ed = build_candidate(root / "slow", strategy="gradual_unfreeze", seed=1)
    (slow_ed / "latency.json").write_text(__import__("json").dumps(make_latency(80.0)))
    parent = T.start_pipeline_run(uri, config={"profile": "test"}, data_manifest=manifest(), run_name="srv")
    out = {}
    for tag, acc, p99 in (("seed", 0.94, 3.0), ("passing", 0.96, 3.0), ("slow", 0.97, 80.0), ("worse", 0.93, 3.0),
                          ("best", 0.98, 3.0)):
        m, m8 = make_metrics(acc), make_metrics(acc - 0.004, seed=1)
        d_md, d_ed = (slow_md, slow_ed) if tag == "slow" else (md, ed)
        rid = T.log_candidate(uri, parent, d_md, m, export_dir=d_ed, int8_metrics=m8, data_manifest=manifest(),
                              run_name=tag, system_metrics_interval_s=None)
        out[tag] = (rid, m, m8, p99)
    return out


def gate(c, champion=None):
    _, m, m8, p99 = c
    return check_gates({"metrics": m, "int8_metrics": m8, "latency": make_latency(p99)}, GateConfig(), champion)


def seed_champion(uri, name, logged):
    rep = gate(logged["seed"])
    v = T.register_candidate(uri, logged["seed"][0], rep, name=name)
    assert T.promote_if_passing(uri, v, rep, name=name).promoted
    return v, {"metrics": logged["seed"][1], "version": v}


def test_artifacts_are_in_s3(servers, logged):
    import boto3

    s3 = boto3.client("s3", endpoint_url=servers.s3_url, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=servers.bucket, MaxKeys=1000).get("Contents", [])]
    assert any(k.endswith("model_dir/weights.pt") for k in keys)
    assert any(k.endswith("/model.onnx") for k in keys) and any(k.endswith("MLmodel") for k in keys)


def test_acceptance_round_trip(servers, logged, tmp_path):
    uri, name = servers.uri, "wafer-defect-classifier"
    v1, champ = seed_champion(uri, name, logged)
    # one pipeline run, three candidates, each evaluated against champion v1 on the same test set
    reports = {k: gate(logged[k], champ) for k in ("passing", "slow", "worse")}
    assert reports["passing"].passed
    assert [r.name for r in reports["slow"].violations] == ["p99_latency_ms"]
    assert [r.name for r in reports["worse"].violations] == ["vs_champion_accuracy", "vs_champion_macro_f1"]
    versions = {}
    for k in ("passing", "slow", "worse"):
        versions[k] = T.register_candidate(uri, logged[k][0], reports[k], name=name)
        T.promote_if_passing(uri, versions[k], reports[k], name=name)
    c = client_for(uri)
    assert T.champion_version(uri, name=name) == versions["passing"]
    assert str(c.get_model_version_by_alias(name, "challenger").version) == versions["worse"]
    aliases = {r["version"]: r["aliases"] for r in T.list_versions(uri, name=name)}
    assert aliases[versions["slow"]] == [] and aliases[versions["worse"]] == ["challenger"]
    slow_tags = c.get_model_version(name, versions["slow"]).tags
    assert slow_tags["gates.passed"] == "false" and slow_tags["gate.p99_latency_ms"].startswith("FAIL")
    assert slow_tags["gates.violations"] == "p99_latency_ms"
    worse_tags = c.get_model_version(name, versions["worse"]).tags
    assert worse_tags["gate.vs_champion_accuracy"].startswith("FAIL") and worse_tags["gates.champion_version"] == v1
    decisions = [(e["action"], e["new_version"], e["status"]) for e in T.audit_history(uri, name=name)
                 if e["action"] in ("promote", "reject")]
    assert decisions == [("promote", v1, "applied"), ("promote", versions["passing"], "applied"),
                         ("reject", versions["slow"], "decision"), ("reject", versions["worse"], "decision")]
    # the champion comes back from S3 through the server, complete
    ch = T.get_champion(uri, tmp_path, name=name)
    assert ch.version == versions["passing"] and (ch.export_dir / "model.int8.onnx").is_file()
    assert (ch.model_dir / "weights.pt").is_file()


def test_two_promotions_racing_leave_the_better_model(servers, logged):
    """A (0.98) and B (0.96) both passed against champion C; whichever order they land in, A ends up champion."""
    uri = servers.uri
    for round_ in range(2):
        name = f"race-{round_}"
        _, champ = seed_champion(uri, name, logged)
        ra, rb = gate(logged["best"], champ), gate(logged["passing"], champ)
        assert ra.passed and rb.passed
        va = T.register_candidate(uri, logged["best"][0], ra, name=name)
        vb = T.register_candidate(uri, logged["passing"][0], rb, name=name)
        results, errors = {}, []
        barrier = threading.Barrier(2)
        # round 0: B gets a head start (it wins the lock); round 1: A does.
        head_start = "B" if round_ == 0 else "A"

        def run(label, v, rep):
            try:
                barrier.wait(10)
                if label != head_start:
                    import time
                    time.sleep(0.3)
                results[label] = T.promote_if_passing(uri, v, rep, name=name, actor=f"thread-{label}")
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        ts = [threading.Thread(target=run, args=("A", va, ra)), threading.Thread(target=run, args=("B", vb, rb))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(60)
        assert not errors, errors
        assert T.champion_version(uri, name=name) == va, (round_, results)
        if head_start == "A":
            assert not results["B"].promoted and "worse" in results["B"].reason
        else:
            assert results["B"].promoted and results["A"].promoted and "re-checked" in results["A"].reason


def test_s3_unreachable_is_a_clear_bounded_failure(servers, logged, candidate_dirs):
    from wfreg_helpers import stop

    uri = servers.uri
    md, ed = candidate_dirs
    parent = T.start_pipeline_run(uri, run_name="s3-down")
    stop(servers.s3)
    try:
        with pytest.raises(RegistryError) as ei:
            T.log_candidate(uri, parent, md, make_metrics(0.95), export_dir=ed, retry=FAST,
                            system_metrics_interval_s=None)
        assert uri in str(ei.value) and "S3" in str(ei.value)
        failed = [r for r in client_for(uri).search_runs([client_for(uri).get_run(parent).info.experiment_id],
                                                          f"tags.`mlflow.parentRunId` = '{parent}'")]
        assert len(failed) == 1 and failed[0].info.status == "FAILED" and "error" in failed[0].data.tags
    finally:
        servers.start_s3()


def test_mlflow_stopped_mid_promotion_leaves_champion(servers, logged):
    """Runs last: the server goes down between the audit intent and the alias move."""
    from wfreg_helpers import stop

    uri, name = servers.uri, "stop-test"
    v1, champ = seed_champion(uri, name, logged)
    rep = gate(logged["best"], champ)
    v2 = T.register_candidate(uri, logged["best"][0], rep, name=name)
    with pytest.raises(RegistryError) as ei:
        T.promote_if_passing(uri, v2, rep, name=name, retry=FAST,
                             _before_move=lambda: stop(servers.mlflow, signal.SIGKILL))
    assert uri in str(ei.value)
    # read the server's own database directly: champion did not move, the intent is visibly unconfirmed
    db = f"sqlite:///{servers.db}"
    assert T.champion_version(db, name=name) == v1
    last = T.audit_history(db, name=name)[-1]
    assert last["new_version"] == v2 and last["status"] == "intent"
