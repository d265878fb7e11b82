"""``waferflow run --runner docker``: every task of the same DAG in the CPU image, through kfp.local's DockerRunner.

kfp.local bind-mounts only its pipeline root into a task's container, at the same path. So the launcher makes the
workdir itself the pipeline root: the embedded MLflow store, the run records and the task outputs then have the
same absolute paths inside every container as here. Your own ``--data`` is copied under the workdir first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from waferflow.errors import ConfigError
from waferflow.profiles import Profile

#: The images' non-root user (images/Dockerfile.*).
IMAGE_UID = 10001
#: Settings passed from this environment into the containers when set.
PASS_THROUGH = ("MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_TRACKING_USERNAME",
                "MLFLOW_TRACKING_PASSWORD", "WAFERFLOW_PROGRESS", "OMP_NUM_THREADS", "TQDM_MININTERVAL")


def docker_profile(profile: Profile) -> Profile:
    """``profile`` with every task in the CPU image (no GPU image, no GPU scheduling)."""
    return dataclasses.replace(profile, cluster=dataclasses.replace(profile.cluster, cpu_only=True))


def check_image(image: str) -> Any:
    """A docker client after checking the daemon answers and ``image`` is present (it is never pulled).

    Raises:
        ConfigError: No daemon, or the image is not built.
    """
    try:
        import docker
    except ImportError:
        raise ConfigError("--runner docker needs the docker Python package: pip install 'waferflow[docker]'") from None
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # docker raises DockerException and transport errors
        raise ConfigError(f"--runner docker: no Docker daemon answers ({str(e)[:160]}); start it (e.g. `dockerd "
                          "--iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 &`) or use "
                          "--runner subprocess") from None
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        client.close()
        raise ConfigError(f"--runner docker: image {image} is not built here; build it with images/build.sh "
                          "(docs/CLUSTER.md), or set cluster.image_registry to where it is") from None
    return client


def stage_data(profile: Profile, wd: Path) -> Profile:
    """Copy ``profile.data`` and ``profile.unlabeled`` under ``wd/inputs`` (the containers see only the workdir);
    returns the new profile."""
    staged = {k: _stage_input(getattr(profile, k), wd) for k in ("data", "unlabeled") if getattr(profile, k)}
    return dataclasses.replace(profile, **staged) if staged else profile


def _stage_input(path: str, wd: Path) -> str:
    """``path`` copied under ``wd/inputs/<hash of the path and its content>/`` (once per content: a file changed
    under the same path is copied again; a partial copy never takes its place)."""
    from waferflow.orchestration.sources import fingerprint

    src = Path(path).expanduser().resolve()
    if wd in src.parents:
        return path
    key = hashlib.sha256(f"{src}\n{fingerprint(src)}".encode()).hexdigest()[:12]
    dst = wd / "inputs" / key / src.name
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, tmp)
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return str(dst)


def make_runner(env: dict[str, str], wd: Path) -> Any:
    """kfp.local's DockerRunner: host network, the launcher's settings as the containers' environment, and a
    user that may write the workdir (yours; as root, the image's uid 10001, which then owns the workdir)."""
    from kfp import local

    environment = dict(env, HOME="/tmp")
    for k in PASS_THROUGH:
        if os.environ.get(k):
            environment[k] = os.environ[k]
    kwargs: dict[str, Any] = {"network_mode": "host", "environment": environment}
    if os.getuid() != 0:
        kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
    else:
        for root, dirs, files in os.walk(wd):
            for name in [*dirs, *files]:
                os.chown(os.path.join(root, name), IMAGE_UID, IMAGE_UID, follow_symlinks=False)
        os.chown(wd, IMAGE_UID, IMAGE_UID)
    return local.DockerRunner(**kwargs)
