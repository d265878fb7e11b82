"""`waferflow submit` / `schedule` through kfp.Client against a fake KFP API on loopback."""

import pytest

from waferflow.cli import main
from waferflow.errors import ConfigError

from fake_kfp import FakeKFP  # noqa: E402  (tests/pipeline is on sys.path via conftest)


def _task_executors(spec: dict) -> dict:
    return spec["deploymentSpec"]["executors"]


def test_submit_starts_a_run_with_the_compiled_spec_and_parameters(capsys, monkeypatch):
    monkeypatch.setenv("KFP_TOKEN", "test-token")
    with FakeKFP() as kfp_api:
        rc = main(["submit", "--host", kfp_api.url, "--profile", "full", "--param", "n_maps=2000",
                   "--param", "data_source=s3://bucket/maps.npz", "--run-name", "nightly",
                   "--experiment", "wafer-exp", "--service-account", "waferflow-pipeline"])
        assert rc == 0
        assert "started run run-123" in capsys.readouterr().out
        runs = kfp_api.posts("/apis/v2beta1/runs")
    assert len(runs) == 1
    body = runs[0]["body"]
    assert body["display_name"] == "nightly"
    assert body["service_account"] == "waferflow-pipeline"
    assert body["runtime_config"]["parameters"] == {"n_maps": 2000, "data_source": "s3://bucket/maps.npz"}
    spec = body["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "waferflow-training"
    platform = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train-candidate"]["nodeSelector"]["labels"] == {"waferflow.io/pool": "gpu"}
    ex = _task_executors(spec)
    assert ex["exec-train-candidate"]["container"]["image"].endswith("/waferflow-gpu:0.1.0")
    assert ex["exec-train-candidate"]["container"]["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    # the experiment was created by name and the run filed under it
    exps = kfp_api.posts("/apis/v2beta1/experiments")
    assert [e["body"]["display_name"] for e in exps] == ["wafer-exp"]
    assert body["experiment_id"] == "exp-1"
    assert runs[0]["auth"] == "Bearer test-token"


def test_schedule_creates_a_recurring_run_with_cron(capsys):
    with FakeKFP() as kfp_api:
        rc = main(["schedule", "--host", kfp_api.url, "--cron", "0 3 * * 1", "--pipeline", "training",
                   "--name", "weekly-retrain", "--param", "seed=7", "--max-concurrency", "1"])
        assert rc == 0
        assert "created recurring run rr-456" in capsys.readouterr().out
        rr = kfp_api.posts("/apis/v2beta1/recurringruns")
    assert len(rr) == 1
    body = rr[0]["body"]
    assert body["display_name"] == "weekly-retrain"
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 1"  # seconds field prepended
    assert body["runtime_config"]["parameters"] == {"seed": 7}
    assert body["max_concurrency"] == "1" or body["max_concurrency"] == 1
    assert body["no_catchup"] is True
    assert body["pipeline_spec"]["pipeline_spec"]["pipelineInfo"]["name"] == "waferflow-training"


def test_schedule_rejects_a_bad_cron_before_calling_the_server():
    with FakeKFP() as kfp_api:
        with pytest.raises(ConfigError, match="6 fields"):
            from waferflow.orchestration.cluster import schedule
            from waferflow.profiles import get_profile

            schedule(kfp_api.url, get_profile("full"), cron="every monday")
        assert kfp_api.requests == []


def test_unreachable_host_is_a_clear_error(capsys):
    rc = main(["submit", "--host", "http://127.0.0.1:9", "--profile", "full"])
    assert rc == 2
    assert "cannot reach the Kubeflow Pipelines API" in capsys.readouterr().err


def test_upload_creates_the_pipeline_then_adds_versions_and_refuses_a_reused_name(capsys):
    with FakeKFP() as kfp_api:
        rc = main(["upload", "--host", kfp_api.url, "--pipeline", "drift-monitor", "--version", "v1",
                   "--registry", "reg.example.com/wf"])
        assert rc == 0
        assert "created pipeline waferflow-drift-monitor (pl-1): uploaded version v1" in capsys.readouterr().out
        assert main(["upload", "--host", kfp_api.url, "--pipeline", "drift-monitor", "--version", "v2"]) == 0
        out = capsys.readouterr().out
        assert "\npipeline waferflow-drift-monitor (pl-1): uploaded version v2" in out
        assert main(["upload", "--host", kfp_api.url, "--pipeline", "drift-monitor", "--version", "v2"]) == 2
        assert "pass --version NEW" in capsys.readouterr().err
        ups = kfp_api.posts("/apis/v2beta1/pipelines/upload")
        vers = kfp_api.posts("/apis/v2beta1/pipelines/upload_version")
        assert len(ups) == 1 and [v["query"]["name"][0] for v in vers] == ["v1", "v2", "v2"]
        assert b"reg.example.com/wf/waferflow-cpu:0.1.0" in vers[0]["body"]  # the compiled package itself
        assert [v["display_name"] for v in kfp_api.versions if v["pipeline_id"] == "pl-1"][-2:] == ["v1", "v2"]
