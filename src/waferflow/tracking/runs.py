"""MLflow run lifecycle: one parent run per pipeline run, nested candidate runs, failures, system metrics.

Everything goes through an explicit tracking URI (no global ``mlflow.set_tracking_uri`` left behind), and every
remote call through a :class:`~waferflow.tracking.client.RetryingClient`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

from waferflow.errors import ModelFormatError
from waferflow.tracking.audit import record_pipeline_failure
from waferflow.tracking.client import RetryingClient, RetryPolicy, artifact_root_for

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "waferflow"


def git_commit(cwd: str | os.PathLike | None = None) -> str:
    """``git rev-parse HEAD`` of ``cwd`` (default: this package's checkout), else ``"unknown"``."""
    cwd = cwd or Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", sha) else "unknown"


def ensure_experiment(uri: str, name: str = DEFAULT_EXPERIMENT, retry: RetryPolicy | None = None) -> str:
    """Experiment id of ``name``, creating it (with the embedded artifact root for sqlite) when missing."""
    from mlflow.exceptions import MlflowException

    c = RetryingClient(uri, retry)
    exp = c.call("look up experiment", c.raw.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.call("create experiment", c.raw.create_experiment, name, artifact_location=artifact_root_for(uri))
    except MlflowException as e:  # created concurrently
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.raw.get_experiment_by_name(name).experiment_id


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}} -> {"a.b": "1"}``; values as strings (MLflow params)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, (list, tuple, dict)) else str(v)
    return out


def load_json(p: str | os.PathLike | Mapping | None, what: str) -> dict | None:
    """``p`` as a dict: a mapping as is, a path read as JSON (a clear error when missing or invalid), None."""
    if p is None or isinstance(p, Mapping):
        return None if p is None else dict(p)
    path = Path(p)
    if not path.is_file():
        raise ModelFormatError(f"{what} {path} does not exist; pass the file written by the previous stage")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{what} {path} is not valid JSON ({e}); re-run the stage that wrote it") from None


def read_config(config: Mapping | str | os.PathLike | None) -> dict | None:
    """A config mapping, or the mapping in a YAML/JSON file."""
    if config is None:
        return None
    if isinstance(config, Mapping):
        return dict(config)
    import yaml

    p = Path(config)
    if not p.is_file():
        raise ModelFormatError(f"config file {p} does not exist")
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise ModelFormatError(f"config file {p} must hold a mapping")
    return data


def log_params(c: RetryingClient, run_id: str, params: Mapping[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        c.call("log params", c.raw.log_batch, run_id, params=items[i:i + 100])


def _metric_key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", s)


def log_metrics(c: RetryingClient, run_id: str, metrics: list[tuple[str, float, int]]) -> None:
    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(_metric_key(k), float(v), ts, int(step)) for k, v, step in metrics]
    for i in range(0, len(items), 1000):
        c.call("log metrics", c.raw.log_batch, run_id, metrics=items[i:i + 1000])


def log_json(c: RetryingClient, run_id: str, obj: Any, artifact_file: str) -> None:
    c.call(f"log {artifact_file}", c.raw.log_dict, run_id, obj, artifact_file)


def log_path(c: RetryingClient, run_id: str, path: Path, artifact_path: str | None) -> None:
    fn = c.raw.log_artifacts if path.is_dir() else c.raw.log_artifact
    c.call(f"upload artifact {path.name}", fn, run_id, str(path), artifact_path)


def set_tags(c: RetryingClient, run_id: str, tags: Mapping[str, str], what: str = "tag run") -> None:
    for k, v in tags.items():
        c.call(what, c.raw.set_tag, run_id, k, v)


def start_pipeline_run(
    tracking_uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    config: Mapping[str, Any] | str | os.PathLike | None = None,
    data_manifest: str | os.PathLike | Mapping | None = None,
    tags: Mapping[str, str] | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Create the parent run of one pipeline run (left RUNNING; end it with :func:`end_run`).

    Args:
        tracking_uri: From :func:`resolve_tracking_uri`.
        experiment: Experiment name (created when missing).
        run_name: Display name.
        config: The resolved pipeline config (dict, or a YAML/JSON file): logged as an artifact and as
            flattened params.
        data_manifest: The dataset manifest (path or dict): logged as an artifact; its ``content_sha256`` becomes
            the ``data_hash`` tag.
        tags: Extra tags.
        retry: Retry policy for MLflow calls.

    Returns:
        The parent run id.
    """
    c = RetryingClient(tracking_uri, retry)
    exp_id = ensure_experiment(tracking_uri, experiment, retry)
    manifest = load_json(data_manifest, "data manifest")
    all_tags = {"git_commit": git_commit(), "waferflow.kind": "pipeline"}
    if manifest and manifest.get("content_sha256"):
        all_tags["data_hash"] = str(manifest["content_sha256"])
    all_tags.update(tags or {})
    rid = c.call("create pipeline run", c.raw.create_run, exp_id, run_name=run_name, tags=all_tags).info.run_id
    cfg = read_config(config)
    if cfg is not None:
        log_json(c, rid, cfg, "config/pipeline_config.json")
        log_params(c, rid, flatten(cfg))
    if manifest is not None:
        log_json(c, rid, manifest, "data/manifest.json")
    return rid


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", retry: RetryPolicy | None = None) -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    c = RetryingClient(tracking_uri, retry)
    c.call("end run", c.raw.set_terminated, run_id, status)


def open_candidate_run(tracking_uri: str, parent_run_id: str, run_name: str,
                       tags: Mapping[str, str] | None = None, retry: RetryPolicy | None = None) -> str:
    """Create a nested (child) run of ``parent_run_id`` in the parent's experiment; returns its id."""
    c = RetryingClient(tracking_uri, retry)
    parent = c.call("read parent run", c.raw.get_run, parent_run_id)
    t = {"mlflow.parentRunId": parent_run_id, "git_commit": git_commit(), "waferflow.kind": "candidate"}
    t.update(tags or {})
    run = c.call("create candidate run", c.raw.create_run, parent.info.experiment_id, run_name=run_name, tags=t)
    return run.info.run_id


def record_failed_run(
    tracking_uri: str,
    run_id: str | None = None,
    *,
    error: str,
    stage: str | None = None,
    experiment: str = DEFAULT_EXPERIMENT,
    pipeline_run: str | None = None,
    state: str | None = None,
    failed_tasks: list[str] | None = None,
    name: str | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Mark a pipeline run FAILED with the error and the failing stage (for the pipeline's ExitHandler).

    Args:
        tracking_uri: Tracking URI.
        run_id: The parent run; when None (the pipeline failed before creating it) a FAILED run is created.
        error: What went wrong (logged as tag and as ``error.txt``).
        stage: Which stage failed (default: the first of ``failed_tasks``).
        experiment: Experiment used when a run has to be created.
        pipeline_run: The orchestrator's run name/id (tag ``pipeline_run``).
        state: The orchestrator's final state, e.g. FAILED / CANCELED (tag ``pipeline_state``).
        failed_tasks: Names of the tasks that failed (tag ``failed_tasks``).
        name: Registered model name: when given, the failure is also written to its audit trail
            (action ``pipeline_failed``), so ``waferflow registry history`` shows it.
        retry: Retry policy.

    Returns:
        The run id marked FAILED.
    """
    c = RetryingClient(tracking_uri, retry)
    stage = stage or (failed_tasks[0] if failed_tasks else None)
    if run_id is None:
        run_id = start_pipeline_run(tracking_uri, experiment=experiment,
                                    run_name=f"failed-{pipeline_run}" if pipeline_run else "failed-pipeline-run",
                                    retry=retry)
    tags = {"error": error[:5000] or "(no error message)", "failed_stage": stage or "unknown",
            "pipeline_state": state or "FAILED"}
    if pipeline_run:
        tags["pipeline_run"] = pipeline_run
    if failed_tasks:
        tags["failed_tasks"] = ",".join(failed_tasks)[:5000]
    set_tags(c, run_id, tags, what="tag failed run")
    c.call("log error", c.raw.log_text, run_id, error or "(no error message)", "error.txt")
    end_run(tracking_uri, run_id, "FAILED", retry)
    if name:
        record_pipeline_failure(tracking_uri, name, run_id=run_id, error=error, stage=stage,
                                pipeline_run=pipeline_run, state=state, retry=retry)
    return run_id


@contextlib.contextmanager
def track_system_metrics(tracking_uri: str, run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """Log CPU/memory/disk/network (and GPU when pynvml sees one) as ``system/*`` metrics while the body runs.

    Wrap the work you want measured (training, export) in it. GPU metrics need ``pynvml`` and a CUDA device;
    without them a ``system_metrics.gpu`` tag says why they are absent.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    c = RetryingClient(tracking_uri)
    try:
        import pynvml  # noqa: F401

        gpu_note = None
    except ImportError:
        gpu_note = "skipped: pynvml not installed (no GPU metrics)"
    if gpu_note:
        c.call("tag run", c.raw.set_tag, run_id, "system_metrics.gpu", gpu_note)
    mon = SystemMetricsMonitor(run_id, sampling_interval=interval_s, samples_before_logging=1,
                               resume_logging=True, tracking_uri=tracking_uri)
    mon.start()
    try:
        yield
    finally:
        mon.finish()
        # The monitor drops the sample it was waiting on when it stops, so a body shorter than one interval would
        # log nothing. Publish one closing sample so every measured stage has at least one point.
        try:
            mon.collect_metrics()
            mon.publish_metrics(mon.aggregate_metrics())
            mon.mlflow_logger.flush()
        except Exception as e:  # noqa: BLE001 - metrics are best effort; the work itself already succeeded
            log.warning("could not log the closing system-metrics sample: %s", e)
