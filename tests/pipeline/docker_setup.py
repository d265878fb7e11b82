"""Test set-up for the docker runner: a Docker daemon (started here when Docker is installed but not running) and
the CPU image built from images/ with images/build.sh.

The image's dependency layer (torch and every pin of pyproject.toml, about 6.8 GB with PyPI's CUDA torch) is built
once and cached by Docker until pyproject.toml or images/Dockerfile.cpu changes; every later build only reinstalls
the project wheel. ``WAFERFLOW_TEST_IMAGE=TAG`` uses an image built elsewhere instead (it must exist locally).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERD_ARGS = ["--iptables=false", "--ip6tables=false", "--bridge=none", "--storage-driver=overlay2"]


def _ping() -> bool:
    import docker

    try:
        client = docker.from_env()
        client.ping()
        client.close()
        return True
    except Exception:  # docker raises DockerException and transport errors
        return False


def ensure_daemon(log: Path) -> subprocess.Popen | None:
    """A reachable daemon; returns the dockerd process when this set-up started it (else None).

    Skips (saying why) when the docker package or Docker itself is missing, or dockerd would need root.
    """
    pytest.importorskip("docker", reason="the docker Python package is missing: pip install 'waferflow[test]'")
    if _ping():
        return None
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        pytest.skip("Docker is not installed (no daemon answers and there is no dockerd): "
                    "apt-get install -y docker.io debootstrap")
    if os.getuid() != 0:
        pytest.skip("dockerd is installed but not running, and starting it needs root")
    fh = open(log, "w")
    proc = subprocess.Popen([dockerd, *DOCKERD_ARGS], stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    for _ in range(90):
        if _ping():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(1)
    proc.terminate()
    pytest.fail(f"dockerd {' '.join(DOCKERD_ARGS)} did not come up:\n{log.read_text()[-3000:]}")


def build_image(log: Path) -> str:
    """The CPU image tag, built (or brought up to date) with images/build.sh."""
    tag = os.environ.get("WAFERFLOW_TEST_IMAGE")
    if tag:
        return tag
    env = dict(os.environ, PYTHON=sys.executable)
    with open(log, "w") as fh:
        r = subprocess.run(["bash", str(ROOT / "images" / "build.sh")], cwd=ROOT, env=env, stdout=fh,
                           stderr=subprocess.STDOUT, timeout=3600)
    text = log.read_text()
    if r.returncode != 0:
        pytest.fail(f"images/build.sh failed ({r.returncode}); its log:\n{text[-4000:]}")
    result = json.loads(text.strip().splitlines()[-1])
    print(f"[docker set-up] {json.dumps(result)}")
    return result["image"]
