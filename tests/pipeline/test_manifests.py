"""The cluster manifests, proven without a cluster: kustomize renders them, every object validates against the
Kubernetes schemas (kubernetes-validate, offline), credentials stay out of git and off command lines, and the
compiled pipeline's Secret, service account and namespace agree with the pipeline side, in the default namespace
and in a profile namespace set as a kustomize parameter; the scheduling Job's own command line runs."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from manifests_util import (MANIFESTS, ROOT, container_env, copy_manifests, find, render,  # noqa: E402
                            secret_values)
from waferflow.cli.pipeline import env_overrides
from waferflow.profiles import ClusterOptions, get_profile

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")

K8S_VERSION = "1.31"
POD_KINDS = ("Deployment", "StatefulSet", "Job")


def _pods(docs):
    for d in docs:
        if d["kind"] in POD_KINDS:
            yield d, d["spec"]["template"]["spec"]


def test_services_render_nonroot_with_network_policies_and_no_credentials():
    docs = render(MANIFESTS / "base")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for k in [("Namespace", "waferflow"), ("Deployment", "mlflow"), ("StatefulSet", "postgres"), ("Deployment", "minio"),
              ("Job", "minio-setup"), ("Job", "mlflow-setup"), ("NetworkPolicy", "default-deny-ingress"),
              ("NetworkPolicy", "mlflow-ingress"), ("NetworkPolicy", "postgres-ingress")]:
        assert k in kinds, k
    assert not any(d["kind"] == "Secret" for d in docs), "base must not carry a Secret"
    assert all(d["metadata"]["namespace"] == "waferflow" for d in docs if d["kind"] != "Namespace")
    for d, pod in _pods(docs):
        assert pod["securityContext"]["runAsNonRoot"] is True, d["metadata"]["name"]
        for c in pod["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["resources"]["requests"], d["metadata"]["name"]
            for e in c.get("env", []):
                if any(s in e["name"] for s in ("PASSWORD", "SECRET", "ACCESS_KEY", "ROOT_USER")):
                    assert "valueFrom" in e and "value" not in e, (d["metadata"]["name"], e)
            # no password on a command line: no argument expands a secret-backed variable
            secret_vars = {e["name"] for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})
                           and any(s in e["valueFrom"]["secretKeyRef"]["key"] for s in ("PASSWORD", "SECRET"))}
            secret_vars |= {e["name"] for e in c.get("env", []) if any(f"$({v})" in e.get("value", "") for v in secret_vars)}
            line = " ".join(c.get("command", []) + c.get("args", []))
            used = set(re.findall(r"\$\{?(\w+)", line)) | set(re.findall(r"\$\((\w+)\)", line))
            # mc has no way to read a new user's secret key other than its arguments (docs/CLUSTER.md says so)
            allowed = {"PIPELINE_S3_SECRET_KEY"} if d["metadata"]["name"] == "minio-setup" else set()
            assert not (used & secret_vars) - allowed, (d["metadata"]["name"], used & secret_vars)
    mlflow = find(docs, "Deployment", "mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name basic-auth" in mlflow["args"][0]
    assert "mlflow.waferflow.svc.cluster.local:*" in mlflow["args"][0]
    pol = find(docs, "NetworkPolicy", "mlflow-ingress")["spec"]["ingress"][0]["from"]
    assert {"namespaceSelector": {"matchLabels": {"waferflow.io/mlflow-client": "true"}}} in pol
    pg = find(docs, "NetworkPolicy", "postgres-ingress")["spec"]["ingress"][0]["from"]
    assert pg == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}]
    setup = find(docs, "Job", "minio-setup")["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "mc version enable wf/mlflow" in setup and "arn:aws:s3:::mlflow/*" in setup


@pytest.mark.parametrize("overlay", ["overlays/credentials", "overlays/gpu-nodepool", "overlays/profile"])
def test_every_rendered_object_validates_against_the_kubernetes_schemas(tmp_path, overlay):
    import kubernetes_validate

    docs = render(copy_manifests(tmp_path, profile_namespace="team-a") / overlay)
    assert docs
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    # the check bites: a misspelled field fails it
    bad = yaml.safe_load(yaml.safe_dump(docs[-1]))
    bad["spec"]["templat"] = bad["spec"].pop("template", {}) if "template" in bad["spec"] else {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSION, strict=True)


def test_credentials_overlay_generates_the_secret_from_a_local_env_file(tmp_path):
    assert "credentials.env" in (MANIFESTS / "overlays" / "credentials" / ".gitignore").read_text()
    assert "pipeline-credentials.env" in (MANIFESTS / "pipelines" / ".gitignore").read_text()
    work = copy_manifests(tmp_path)
    docs = render(work / "overlays" / "credentials")
    secret = find(docs, "Secret", "waferflow-services")
    assert "stringData" not in secret
    vals = secret_values(secret)
    assert vals["POSTGRES_PASSWORD"].startswith("test-")
    rendered = subprocess.run(["kubectl", "kustomize", str(work / "overlays" / "credentials")],
                              capture_output=True, text=True).stdout
    assert vals["POSTGRES_PASSWORD"] not in rendered  # base64 only


def test_no_credentials_committed_in_manifests():
    tracked = subprocess.run(["git", "ls-files", "manifests"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert tracked, "manifests are not tracked by git"
    for rel in tracked:
        f = ROOT / rel
        assert not f.name.endswith("credentials.env"), f"{rel}: a credentials file is committed"
        text = f.read_text()
        assert "stringData" not in text and "password:" not in text.lower(), rel


def _compiled_platform(profile, tmp_path) -> dict:
    from waferflow.orchestration.cluster import compile_all

    out = {}
    for name, path in compile_all(tmp_path / "compiled", profile).items():
        docs = list(yaml.safe_load_all(path.read_text()))
        out[name] = (docs[0], docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"])
    return out


@pytest.mark.parametrize("namespace", [None, "team-a"])
def test_compiled_pipeline_agrees_with_the_pipeline_side(tmp_path, namespace):
    work = copy_manifests(tmp_path, profile_namespace=namespace)
    docs = render(work / "overlays" / ("profile" if namespace else "gpu-nodepool"))
    ns = namespace or ClusterOptions().namespace
    assert ns == "kubeflow" or namespace
    for d in docs:  # everything the pipeline pods need sits in the namespace where they run
        assert d["metadata"]["namespace"] == ns, (d["kind"], d["metadata"]["name"], d["metadata"]["namespace"])
    kinds = {d["kind"] for d in docs}
    assert {"Secret", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job", "ResourceQuota"} <= kinds
    secret = next(d for d in docs if d["kind"] == "Secret")
    sa = next(d for d in docs if d["kind"] == "ServiceAccount")
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}]
    options = next(d for d in docs if d["kind"] == "ConfigMap")["data"]

    # compile with the ConfigMap's GPU-pool options (WAFERFLOW_SET), as the scheduling Job does
    profile = get_profile("full", env_overrides(options["WAFERFLOW_SET"]))
    c = profile.cluster
    assert c.secret_name == secret["metadata"]["name"] and c.service_account == sa["metadata"]["name"]
    for name, (spec, platform) in _compiled_platform(profile, tmp_path).items():
        refs = [s for ex in platform.values() for s in ex.get("secretAsEnv", [])]
        assert refs, name
        for s in refs:
            assert s["secretName"] == secret["metadata"]["name"], name
            assert {k["secretKey"] for k in s["keyToEnv"]} <= set(secret["data"]), name
        if name == "waferflow-training":
            sel = platform["exec-train-candidate"]["nodeSelector"]["labels"]
            assert sel == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
        for ex_name, ex in spec["deploymentSpec"]["executors"].items():
            res = ex["container"]["resources"]
            assert res.get("resourceCpuRequest") and res.get("resourceMemoryRequest"), (name, ex_name)

    job = next(d for d in docs if d["kind"] == "Job")["spec"]["template"]["spec"]
    assert job["serviceAccountName"] == sa["metadata"]["name"]
    assert f"--service-account {sa['metadata']['name']}" in job["containers"][0]["args"][0]
    role = next(d for d in docs if d["kind"] == "Role")
    rule = next(r for r in role["rules"] if r["apiGroups"] == ["pipelines.kubeflow.org"])
    assert "runs" in rule["resources"] and "create" in rule["verbs"]


@pytest.mark.timeout(300)
def test_the_scheduling_jobs_command_line_creates_the_drift_recurring_run(tmp_path):
    """The Job's own shell command, with the kubelet's environment, against a fake KFP API: the GPU overlay's
    options compile, the drift monitor gets its required ``current``, and every image is under the registry."""
    from fake_kfp import FakeKFP

    work = copy_manifests(tmp_path)
    docs = render(work / "overlays" / "gpu-nodepool")
    options = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    job = next(d for d in docs if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    with FakeKFP() as kfp_api:
        cms = {options["metadata"]["name"]: dict(options["data"], KFP_HOST=kfp_api.url)}
        env = container_env(container, {secret["metadata"]["name"]: secret_values(secret)}, cms,
                            {"metadata.namespace": "kubeflow"})
        env.update(HOME=str(tmp_path), PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        r = subprocess.run([*container["command"], container["args"][0]], env=env, capture_output=True, text=True,
                           timeout=240)
        assert r.returncode == 0, r.stdout + r.stderr
        (rr,) = kfp_api.posts("/apis/v2beta1/recurringruns")
    body = rr["body"]
    assert body["service_account"] == "waferflow-pipeline"
    params = body["runtime_config"]["parameters"]
    assert params["current"] == options["data"]["WAFERFLOW_DRIFT_CURRENT"]
    assert params["training_host"] == kfp_api.url and params["training_profile"] == "full"
    spec = body["pipeline_spec"]["pipeline_spec"]
    registry = options["data"]["WAFERFLOW_IMAGE_REGISTRY"]
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images and all(i.startswith(registry + "/") for i in images), images
    # the training run the drift monitor starts is compiled with the same images and GPU pool
    (start,) = [t for comp in spec["components"].values() for n, t in comp.get("dag", {}).get("tasks", {}).items()
                if n == "start-training"]
    cluster = start["inputs"]["parameters"]["cluster"]["runtimeValue"]["constant"]
    assert cluster["image_registry"] == registry
    assert cluster["gpu_node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
