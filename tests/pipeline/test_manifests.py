"""kubectl kustomize renders the cluster manifests: expected kinds, no plain-text credentials, non-root pods."""

import base64
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def _render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _pod_specs(docs):
    for d in docs:
        spec = d.get("spec", {})
        if d["kind"] in ("Deployment", "StatefulSet"):
            yield d, spec["template"]["spec"]
        elif d["kind"] == "Job":
            yield d, spec["template"]["spec"]


def test_base_renders_expected_kinds_nonroot_and_no_credentials():
    docs = _render(MANIFESTS / "base")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for k in [("Namespace", "waferflow"), ("Deployment", "mlflow"), ("StatefulSet", "postgres"), ("Deployment", "minio"),
              ("ServiceAccount", "waferflow-pipeline"), ("Role", "waferflow-pipeline-runs"),
              ("RoleBinding", "waferflow-pipeline-runs"), ("Job", "waferflow-schedule-drift-monitor"),
              ("ConfigMap", "waferflow-options")]:
        assert k in kinds, k
    assert not any(d["kind"] == "Secret" for d in docs), "base must not carry a Secret"
    for d, pod in _pod_specs(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            for e in c.get("env", []):
                # credentials only by reference, never as literal values
                if any(s in e["name"] for s in ("PASSWORD", "SECRET", "ACCESS_KEY", "ROOT_USER")):
                    assert "valueFrom" in e and "value" not in e, (d["metadata"]["name"], e)
    # the drift monitor can start runs
    role = next(d for d in docs if d["kind"] == "Role")
    rule = next(r for r in role["rules"] if r["apiGroups"] == ["pipelines.kubeflow.org"])
    assert "runs" in rule["resources"] and "create" in rule["verbs"]
    job = next(d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].startswith("waferflow-schedule"))
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "waferflow-pipeline"
    assert "waferflow schedule" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]


def test_gpu_overlay_sets_pool_options_and_quota():
    docs = _render(MANIFESTS / "overlays" / "gpu-nodepool")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert "cluster.gpu_node_selector" in cm["data"]["WAFERFLOW_SET"]
    assert "MLFLOW_TRACKING_URI" in cm["data"]  # the patch merges, base keys stay
    quota = next(d for d in docs if d["kind"] == "ResourceQuota")
    assert "requests.nvidia.com/gpu" in quota["spec"]["hard"]


def test_credentials_overlay_generates_the_secret_from_a_local_env_file(tmp_path):
    work = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, work)
    cred = work / "overlays" / "credentials"
    assert "credentials.env" in (MANIFESTS / "overlays" / "credentials" / ".gitignore").read_text()
    template = (cred / "credentials.env.example").read_text()
    assert "CHANGE_ME" in template
    (cred / "credentials.env").write_text(template.replace("CHANGE_ME", "s3cr3t-for-test"))
    docs = _render(cred)
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "waferflow-credentials"
    assert "stringData" not in secret
    assert base64.b64decode(secret["data"]["POSTGRES_PASSWORD"]).decode() == "s3cr3t-for-test"
    # the value appears nowhere in plain text
    rendered = subprocess.run(["kubectl", "kustomize", str(cred)], capture_output=True, text=True).stdout
    assert "s3cr3t-for-test" not in rendered


def test_no_credentials_committed_in_manifests():
    for f in MANIFESTS.rglob("*"):
        if f.is_file() and f.name != "credentials.env.example":
            text = f.read_text()
            assert "kind: Secret" not in text or "stringData" not in text, f
            assert "password:" not in text.lower(), f
