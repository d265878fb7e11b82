"""Cluster side: compile every pipeline, upload pipelines and versions, start a run and create a recurring run
with ``kfp.Client``."""

from __future__ import annotations

import importlib
import os
import pkgutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from waferflow.errors import ConfigError, WaferflowError
from waferflow.profiles import Profile

#: Pipeline short names -> module in waferflow.pipelines.
PIPELINE_MODULES = {"training": "waferflow.pipelines.training", "drift-monitor": "waferflow.pipelines.drift_monitor"}


def _pipeline_from_module(mod: Any, profile: Profile) -> list[Any]:
    from kfp.dsl.graph_component import GraphComponent

    if hasattr(mod, "build_pipeline"):
        import inspect

        params = list(inspect.signature(mod.build_pipeline).parameters)
        # build_pipeline(profile) or build_pipeline(cluster): the drift monitor only needs the cluster options.
        arg = profile.cluster if params and params[0] == "cluster" else profile
        return [mod.build_pipeline(arg)]
    return [v for v in vars(mod).values() if isinstance(v, GraphComponent)]


def discover_pipelines(profile: Profile) -> dict[str, Any]:
    """Every pipeline in the ``waferflow.pipelines`` package, built with ``profile``'s cluster options.

    A module contributes ``build_pipeline(profile)`` (or ``build_pipeline(cluster)``) when it has one, else its
    module-level ``@dsl.pipeline`` objects. Returns ``{pipeline name: pipeline}``.
    """
    import waferflow.pipelines as pkg

    found: dict[str, Any] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for pl in _pipeline_from_module(mod, profile):
            found[pl.name] = pl
    if not found:
        raise WaferflowError("no pipelines found in waferflow.pipelines; is the package installed (pip install -e .)?")
    return found


def compile_all(out_dir: str | os.PathLike, profile: Profile) -> dict[str, Path]:
    """Compile every pipeline to ``<out_dir>/<pipeline name>.yaml`` (atomically).

    Returns:
        ``{pipeline name: path}``.
    """
    from kfp import compiler

    from waferflow.config import atomic_write_text

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the pipeline YAMLs")
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name, pl in discover_pipelines(profile).items():
        with tempfile.TemporaryDirectory() as tmp:
            tmp_path = Path(tmp) / "p.yaml"
            compiler.Compiler().compile(pl, str(tmp_path))
            written[name] = atomic_write_text(out / f"{name}.yaml", tmp_path.read_text())
    return written


def _pipeline_by_short_name(short: str, profile: Profile) -> Any:
    if short not in PIPELINE_MODULES:
        raise ConfigError(f"unknown pipeline {short!r}; choose one of: {', '.join(PIPELINE_MODULES)}")
    try:
        mod = importlib.import_module(PIPELINE_MODULES[short])
    except ModuleNotFoundError as e:
        raise WaferflowError(f"pipeline {short!r} is not available: {e}") from None
    pls = _pipeline_from_module(mod, profile)
    if not pls:
        raise WaferflowError(f"module {PIPELINE_MODULES[short]} defines no pipeline")
    return pls[0]


def make_client(host: str, token: str | None = None, namespace: str | None = None) -> Any:
    """A ``kfp.Client`` for ``host``; the token comes from the argument or ``$KFP_TOKEN`` (never from code).

    Raises:
        ConfigError: No host.
        WaferflowError: The host does not answer as a KFP API (health check fails).
    """
    import kfp

    if not host:
        raise ConfigError("no KFP host: pass --host URL (e.g. http://localhost:8080 after "
                          "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`) or set KF_PIPELINES_ENDPOINT")
    token = token or os.environ.get("KFP_TOKEN") or None
    kwargs: dict[str, Any] = {"host": host, "existing_token": token}
    if namespace:
        kwargs["namespace"] = namespace
    try:
        client = kfp.Client(**kwargs)
        client.get_kfp_healthz(sleep_duration=1)
    except Exception as e:  # kfp raises several kinds (ApiException, TimeoutError, urllib3 errors)
        raise WaferflowError(f"cannot reach the Kubeflow Pipelines API at {host}: {e}; check --host and the "
                             "port-forward / ingress, and KFP_TOKEN when the cluster needs authentication") from None
    return client


def _with_package(pipeline: Any, fn: Callable[[str], Any]) -> Any:
    from kfp import compiler

    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "pipeline.yaml")
        compiler.Compiler().compile(pipeline, path)
        return fn(path)


def submit(host: str, profile: Profile, pipeline: str = "training", arguments: dict | None = None,
           experiment: str | None = None, run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = None, token: str | None = None) -> str:
    """Compile ``pipeline`` with ``profile`` and start one run on a Kubeflow host.

    The run's pods use ``service_account``, else the profile's ``cluster.service_account``.

    Returns:
        The run id.
    """
    client = make_client(host, token, namespace)
    pl = _pipeline_by_short_name(pipeline, profile)
    result = _with_package(pl, lambda path: client.create_run_from_pipeline_package(
        path, arguments=dict(arguments or {}), run_name=run_name or f"waferflow-{pipeline}",
        experiment_name=experiment or profile.experiment, namespace=namespace,
        service_account=service_account or profile.cluster.service_account or None,
    ))
    return str(result.run_id)


def schedule(host: str, profile: Profile, cron: str, pipeline: str = "training", name: str | None = None,
             arguments: dict | None = None, experiment: str | None = None, namespace: str | None = None,
             max_concurrency: int = 1, service_account: str | None = None, token: str | None = None) -> str:
    """Create a recurring run of ``pipeline`` on a Kubeflow host.

    Args:
        cron: KFP cron with a seconds field first, e.g. ``"0 0 3 * * 1"`` (03:00 every Monday); a 5-field
            cron gets ``0`` seconds prepended.

    Returns:
        The recurring run id.

    Raises:
        ConfigError: A cron that does not have 5 or 6 fields.
    """
    fields = cron.split()
    if len(fields) == 5:
        fields = ["0", *fields]
    if len(fields) != 6:
        raise ConfigError(f"--cron {cron!r} must have 6 fields (seconds minutes hours day month weekday), "
                          "e.g. '0 0 3 * * 1' for 03:00 every Monday")
    cron6 = " ".join(fields)
    client = make_client(host, token, namespace)
    exp = client.create_experiment(experiment or profile.experiment, namespace=namespace)
    pl = _pipeline_by_short_name(pipeline, profile)
    job = _with_package(pl, lambda path: client.create_recurring_run(
        experiment_id=exp.experiment_id, job_name=name or f"waferflow-{pipeline}", cron_expression=cron6,
        pipeline_package_path=path, params=dict(arguments or {}), max_concurrency=max_concurrency,
        no_catchup=True, service_account=service_account or profile.cluster.service_account or None,
    ))
    return str(job.recurring_run_id)


def upload(host: str, profile: Profile, pipeline: str = "training", version: str | None = None,
           namespace: str | None = None, token: str | None = None) -> dict[str, str]:
    """Upload ``pipeline`` (compiled with ``profile``) as a new version, creating the pipeline the first time.

    The KFP UI then offers it to create runs and recurring runs from. The pipeline is named after its
    ``@dsl.pipeline`` name (e.g. ``waferflow-training``).

    Args:
        version: Version name (default ``<package version>-<UTC time>``); KFP refuses a name used before.

    Returns:
        ``{"pipeline_id", "pipeline_name", "version_id", "version_name", "created_pipeline"}``.

    Raises:
        WaferflowError: The server refuses the upload (the message says why, e.g. a version name in use).
    """
    import time

    from waferflow import __version__

    client = make_client(host, token, namespace)
    pl = _pipeline_by_short_name(pipeline, profile)
    name = pl.name
    vname = version or f"{__version__}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    desc = f"waferflow {__version__}, profile {profile.name}, images {profile.cluster.image('cpu')}"

    def _up(path: str) -> dict[str, str]:
        pid = client.get_pipeline_id(name)
        created = pid is None
        if created:
            pid = client.upload_pipeline(path, pipeline_name=name, description=desc, namespace=namespace).pipeline_id
        v = client.upload_pipeline_version(path, pipeline_version_name=vname, pipeline_id=pid, description=desc)
        return {"pipeline_id": str(pid), "pipeline_name": name, "version_id": str(v.pipeline_version_id),
                "version_name": vname, "created_pipeline": str(created).lower()}

    try:
        return _with_package(pl, _up)
    except WaferflowError:
        raise
    except Exception as e:  # kfp_server_api.ApiException and transport errors
        raise WaferflowError(f"uploading {name} version {vname} to {host} failed: {str(e)[:300]}; a version name "
                             "may be used only once per pipeline (pass --version NEW)") from None
