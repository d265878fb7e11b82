"""``waferflow run --runner docker --profile tiny``: the same DAG through kfp.local's DockerRunner, every task in
the CPU image built from images/ (tests/pipeline/docker_setup.py starts dockerd and builds the image).

Deselect with ``-m "not docker"``; it skips, saying why, where Docker is not installed.
"""

import json

import pytest

from waferflow.cli import main
from waferflow.orchestration.local import run_local
from waferflow.profiles import get_profile

EVERY_STAGE = {"data", "start_run", "split", "adapt_bn", "train", "evaluate", "select_best", "export", "compile_trt",
               "log_mlflow", "register", "report", "promote", "finish_run"}
IMAGE_PYTHON = "/opt/waferflow/bin/python3"

pytestmark = pytest.mark.docker


@pytest.mark.timeout(3600)
def test_tiny_pipeline_runs_every_task_in_the_cpu_image(tmp_path, cpu_image, capsys, monkeypatch):
    wd = tmp_path / "waferflow_runs"
    r = run_local(get_profile("tiny", ["n_maps=200"]), workdir=wd, runner="docker")
    ran = [s for s in r.stages if not s.get("cached")]
    assert EVERY_STAGE <= {s["stage"] for s in ran}, EVERY_STAGE - {s["stage"] for s in ran}
    assert all(s["ok"] for s in ran)
    # every stage ran inside the image's venv, none in this one
    assert {s["python"] for s in ran} == {IMAGE_PYTHON}
    assert r.summary["gates"]["passed"] is True and r.champion == "1"
    assert r.summary["trt"]["status"].startswith("skipped")  # the CPU image has no CUDA: recorded, never faked
    out = capsys.readouterr().out
    assert "Got executor_input" not in out and f"Found image '{cpu_image}'" in out
    assert "pip install" not in out  # the image's kfp, nothing installed at start

    # `registry list` right after the run, with no flags, finds the run's store (./waferflow_runs/mlflow.db)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["registry", "list", "--json"]) == 0
    versions = json.loads(capsys.readouterr().out)
    assert versions and str(versions[0]["version"]) == "1"


def test_a_missing_image_is_a_clear_error(tmp_path, cpu_image):
    from waferflow.errors import ConfigError

    with pytest.raises(ConfigError, match="is not built here; build it with images/build.sh"):
        run_local(get_profile("tiny", ["cluster.image_registry=nowhere.invalid/x"]), workdir=tmp_path / "wd",
                  runner="docker")
    assert not list((tmp_path / "wd").iterdir())  # nothing written
