"""The MLflow server of manifests/base/mlflow.yaml, started with the manifest's own command line and environment,
answers a pipeline pod: the in-cluster Host header and the pipeline user's credentials from the Secret.

Only what needs a cluster is swapped: the PostgreSQL URIs become SQLite files, the S3 artifact destination a
folder, the port a free one. The command line itself, the auth app, the allowed hosts and the setup Job's script
are the manifests' own. mlflow 3.x answers 403 to a Host it does not allow (the old manifest's failure).
"""

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from manifests_util import (PIPELINE_ENV, container_env, copy_manifests, env_file, find, render,  # noqa: E402
                            secret_values)

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

IN_CLUSTER_HOST = "mlflow.waferflow.svc.cluster.local:5000"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _auth(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"mlflow server exited {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise AssertionError(f"mlflow server not healthy after {timeout}s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def mlflow_server(tmp_path):
    work = copy_manifests(tmp_path)
    docs = render(work / "overlays" / "credentials")
    secrets = {"waferflow-services": secret_values(find(docs, "Secret", "waferflow-services"))}
    deploy = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    env = container_env(deploy, secrets, {})
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://") and "PGPASSWORD" in env
    port = _free_port()
    bindir = tmp_path / "bin"  # `mlflow` on PATH is this interpreter's mlflow (a venv may lack the script)
    bindir.mkdir()
    (bindir / "mlflow").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m mlflow "$@"\n')
    (bindir / "mlflow").chmod(0o755)
    env.update(  # what needs a cluster, swapped
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MLFLOW_AUTH_DATABASE_URI=f"sqlite:///{tmp_path / 'auth.db'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"),
        MLFLOW_AUTH_CONFIG_PATH=str(tmp_path / "basic_auth.ini"),
        MLFLOW_PORT=str(port), HOME=str(tmp_path),
        PATH=f"{bindir}:{os.environ['PATH']}",
    )
    log = tmp_path / "server.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([*deploy["command"], *deploy["args"]], env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, log)
        yield {"url": url, "work": work, "docs": docs, "secrets": secrets, "env": env}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def _setup_pipeline_user(srv) -> None:
    """The mlflow-setup Job's own script, with its environment (the server URL swapped for this one)."""
    job = find(srv["docs"], "Job", "mlflow-setup")["spec"]["template"]["spec"]["containers"][0]
    env = container_env(job, srv["secrets"], {})
    env.update(MLFLOW_TRACKING_URI=srv["url"], HOME=str(srv["work"]), PATH=os.environ["PATH"])
    r = subprocess.run([sys.executable, "-c", job["args"][0]], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "created MLflow user" in r.stdout


@pytest.mark.timeout(400)
def test_mlflow_server_answers_a_pipeline_pod_with_the_in_cluster_host_and_the_secret(mlflow_server):
    srv = mlflow_server
    url = srv["url"]
    svc = srv["secrets"]["waferflow-services"]
    admin = _auth(svc["MLFLOW_ADMIN_USERNAME"], svc["MLFLOW_ADMIN_PASSWORD"])
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=5"

    # authentication is on: no credentials, or wrong ones, are refused
    assert requests.get(search, headers={"Host": IN_CLUSTER_HOST}, timeout=60).status_code == 401
    bad = _auth(svc["MLFLOW_ADMIN_USERNAME"], "wrong")
    assert requests.get(search, headers={"Host": IN_CLUSTER_HOST, **bad}, timeout=60).status_code == 401
    # the Host check is on, and the in-cluster name passes it
    assert requests.get(search, headers={"Host": "evil.example.com", **admin}, timeout=60).status_code == 403
    assert requests.get(search, headers={"Host": IN_CLUSTER_HOST, **admin}, timeout=60).status_code == 200

    # the pipeline's own user, created by the setup Job, works with the pipeline Secret's credentials
    _setup_pipeline_user(srv)
    p = env_file(srv["work"] / PIPELINE_ENV)
    assert p["MLFLOW_TRACKING_URI"] == "http://" + IN_CLUSTER_HOST
    h = {"Host": IN_CLUSTER_HOST, **_auth(p["MLFLOW_TRACKING_USERNAME"], p["MLFLOW_TRACKING_PASSWORD"])}
    r = requests.post(f"{url}/api/2.0/mlflow/experiments/create", json={"name": "waferflow"}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    exp_id = r.json()["experiment_id"]
    r = requests.post(f"{url}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, headers=h, timeout=60)
    assert r.status_code == 200, r.text
    run_id = r.json()["run"]["info"]["run_id"]
    r = requests.post(f"{url}/api/2.0/mlflow/runs/log-metric", headers=h, timeout=10,
                      json={"run_id": run_id, "key": "accuracy", "value": 0.9, "timestamp": 0, "step": 0})
    assert r.status_code == 200, r.text
    r = requests.post(f"{url}/api/2.0/mlflow/registered-models/create", json={"name": "wafer-defect-classifier"},
                      headers=h, timeout=60)
    assert r.status_code == 200, r.text
    # and it is not an admin: it cannot create users
    r = requests.post(f"{url}/api/2.0/mlflow/users/create", json={"username": "x", "password": "y" * 16},
                      headers=h, timeout=60)
    assert r.status_code == 403, r.text
