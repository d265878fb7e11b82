"""Render the kustomize manifests in a temporary copy, with test credentials in the gitignored env files."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
SERVICES_ENV = Path("overlays/credentials/credentials.env")
PIPELINE_ENV = Path("pipelines/pipeline-credentials.env")


def fill_credentials(work: Path) -> dict[str, str]:
    """Write both env files from their templates, every CHANGE_ME a distinct test value; returns the values."""
    values: dict[str, str] = {}
    for rel in (SERVICES_ENV, PIPELINE_ENV):
        lines = []
        for line in (work / f"{rel}.example").read_text().splitlines():
            if "=CHANGE_ME" in line and not line.startswith("#"):
                key = line.split("=", 1)[0]
                line = f"{key}=test-{key.lower().replace('_', '-')}-0123456789"
            lines.append(line)
        (work / rel).write_text("\n".join(lines) + "\n")
    # the pipeline identities are the same in both files, as the templates say
    svc = env_file(work / SERVICES_ENV)
    pipe = env_file(work / PIPELINE_ENV)
    pipe["MLFLOW_TRACKING_PASSWORD"] = svc["PIPELINE_MLFLOW_PASSWORD"]
    pipe["AWS_SECRET_ACCESS_KEY"] = svc["PIPELINE_S3_SECRET_KEY"]
    (work / PIPELINE_ENV).write_text("".join(f"{k}={v}\n" for k, v in pipe.items()))
    values.update(svc)
    values.update(pipe)
    return values


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


def copy_manifests(tmp_path: Path, profile_namespace: str | None = None) -> Path:
    """A filled copy of ``manifests/``; with ``profile_namespace``, plus ``overlays/profile`` that sets it (the
    kustomize parameter) on top of the GPU overlay."""
    work = tmp_path / "manifests"
    shutil.copytree(MANIFESTS, work)
    fill_credentials(work)
    if profile_namespace:
        prof = work / "overlays" / "profile"
        prof.mkdir()
        (prof / "kustomization.yaml").write_text(
            "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
            f"namespace: {profile_namespace}\nresources:\n  - ../gpu-nodepool\n")
    return work


def render(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def find(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def secret_values(secret: dict) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def container_env(container: dict, secrets: dict[str, dict[str, str]], configmaps: dict[str, dict[str, str]],
                  fieldrefs: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the kubelet gives ``container``: envFrom ConfigMaps, then env in order, with Secret and
    ConfigMap references resolved and ``$(VAR)`` expanded against the variables defined before it."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(configmaps[src["configMapRef"]["name"]])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
            continue
        ref = e["valueFrom"]
        if "secretKeyRef" in ref:
            env[e["name"]] = secrets[ref["secretKeyRef"]["name"]][ref["secretKeyRef"]["key"]]
        elif "configMapKeyRef" in ref:
            env[e["name"]] = configmaps[ref["configMapKeyRef"]["name"]][ref["configMapKeyRef"]["key"]]
        else:
            env[e["name"]] = (fieldrefs or {})[ref["fieldRef"]["fieldPath"]]
    return env
