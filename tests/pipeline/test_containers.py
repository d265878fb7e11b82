"""The docker runner's set-up, without a daemon: CPU image everywhere, --data staged under the workdir, runner
settings."""

import os
from pathlib import Path

import yaml

from waferflow.orchestration.containers import docker_profile, make_runner, stage_data
from waferflow.profiles import get_profile


def test_docker_profile_puts_every_task_in_the_cpu_image(tmp_path):
    from waferflow.orchestration.cluster import compile_all

    p = docker_profile(get_profile("tiny"))
    assert p.cluster.cpu_only is True
    spec = next(yaml.safe_load_all(compile_all(tmp_path, p)["waferflow-training"].read_text()))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {p.cluster.image("cpu")}
    assert not any("accelerator" in ex["container"].get("resources", {})
                   for ex in spec["deploymentSpec"]["executors"].values())


def test_data_outside_the_workdir_is_copied_in_once(tmp_path):
    src = tmp_path / "mine" / "maps.npz"
    src.parent.mkdir()
    src.write_bytes(b"x" * 10)
    wd = tmp_path / "wd"
    p = stage_data(get_profile("tiny", [f"data={src}"]), wd)
    staged = p.data
    assert staged.startswith(str(wd / "inputs")) and open(staged, "rb").read() == b"x" * 10
    assert stage_data(get_profile("tiny", [f"data={src}"]), wd).data == staged  # same place, not copied again
    assert not list((wd / "inputs").rglob("*.partial"))
    folder = tmp_path / "pngs" / "center"
    folder.mkdir(parents=True)
    (folder / "a.png").write_bytes(b"png")
    p2 = stage_data(get_profile("tiny", [f"data={tmp_path / 'pngs'}"]), wd)
    assert (wd / "inputs") in Path(p2.data).parents
    assert open(os.path.join(p2.data, "center", "a.png"), "rb").read() == b"png"
    # --unlabeled is staged the same way, beside the data
    p3 = stage_data(get_profile("tiny", [f"data={src}", f"unlabeled={tmp_path / 'pngs'}"]), wd)
    assert p3.data == staged and p3.unlabeled == p2.data
    # a file changed under the same path is copied again, never served stale
    src.write_bytes(b"y" * 10)
    p4 = stage_data(get_profile("tiny", [f"data={src}"]), wd)
    assert p4.data != staged and open(p4.data, "rb").read() == b"y" * 10


def test_runner_uses_host_network_and_passes_the_launchers_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "u")
    wd = tmp_path / "wd"
    wd.mkdir()
    r = make_runner({"MLFLOW_TRACKING_URI": f"sqlite:///{wd}/mlflow.db"}, wd)
    args = r.container_run_args
    assert args["network_mode"] == "host"
    env = args["environment"]
    assert env["MLFLOW_TRACKING_URI"].endswith("/mlflow.db") and env["HOME"] == "/tmp"
    assert env["MLFLOW_TRACKING_USERNAME"] == "u"
    if os.getuid() != 0:
        assert args["user"] == f"{os.getuid()}:{os.getgid()}"
    else:  # as root the image's non-root user runs the tasks and owns the workdir
        assert "user" not in args and os.stat(wd).st_uid == 10001
