"""MLflow tracking: one parent run per pipeline run, one nested run per candidate.

Everything goes through an explicit tracking URI (no global ``mlflow.set_tracking_uri`` left behind), and every
remote call through :func:`waferflow.tracking.retry.with_retries`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from waferflow.errors import ModelFormatError, RegistryError
from waferflow.tracking.manifest import split_manifests
from waferflow.tracking.retry import RetryPolicy, with_retries

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "waferflow"
# Run artifacts that the registry reads back (model card, get_champion).
INFO_DIR = "waferflow"
MODEL_DIR_ARTIFACT = "model_dir"
EXPORT_ARTIFACT = "export"
MODEL_DIR_FILES = ("model.json", "weights.pt", "config.yaml", "history.json", "self_training.json")
EXPORT_FILES = ("export.json", "latency.json")
TAG_LOGGED_MODEL = "waferflow.logged_model."  # + form -> model id
TAG_PYFUNC_FORM = "waferflow.pyfunc_form"  # the ONNX form inside the raw-map pyfunc
_FLUENT_LOCK = threading.Lock()


def resolve_tracking_uri(uri: str | None = None, workdir: str | os.PathLike | None = None) -> str:
    """The tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``.

    Args:
        uri: Explicit URI (``http://host:5000``, ``sqlite:///...``).
        workdir: Folder for the embedded store; defaults to the current directory. Artifacts of the embedded
            store go to ``<workdir>/mlartifacts``.
    """
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    wd = Path(workdir or os.getcwd()).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{wd / 'mlflow.db'}"


def artifact_root_for(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` (as a file URI) for an embedded sqlite store; None for a server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def client_for(uri: str):
    """An ``MlflowClient`` bound to ``uri`` for both tracking and registry."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def _fluent(uri: str) -> Iterator[None]:
    """Temporarily point mlflow's fluent API at ``uri`` (for ``mlflow.onnx.log_model``)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    # mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI; restore the module globals and the environment
    # exactly, so nothing leaks into later resolve_tracking_uri calls or subprocesses.
    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _FLUENT_LOCK:
        old_t, old_r = trk_utils._tracking_uri, reg_utils._registry_uri
        old_env = {k: os.environ.get(k) for k in env_keys}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            trk_utils.set_tracking_uri(old_t)
            reg_utils._registry_uri = old_r
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


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

    c = client_for(uri)
    exp = with_retries(lambda: c.get_experiment_by_name(name), what="look up experiment", uri=uri, policy=retry)
    if exp is not None:
        return exp.experiment_id
    try:
        return with_retries(lambda: c.create_experiment(name, artifact_location=artifact_root_for(uri)),
                            what="create experiment", uri=uri, policy=retry)
    except MlflowException as e:  # created concurrently
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return c.get_experiment_by_name(name).experiment_id


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


def _metric_key(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", s)


def _load_json(p: str | os.PathLike | Mapping | None, what: str) -> dict | None:
    if p is None or isinstance(p, Mapping):
        return None if p is None else dict(p)
    path = Path(p)
    if not path.is_file():
        raise ModelFormatError(f"{what} {path} does not exist; pass the file written by the previous stage")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{what} {path} is not valid JSON ({e}); re-run the stage that wrote it") from None


def _log_params(c, run_id: str, params: Mapping[str, str], uri: str, retry: RetryPolicy | None) -> None:
    from mlflow.entities import Param

    items = [Param(k[:250], str(v)[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        chunk = items[i:i + 100]
        with_retries(lambda: c.log_batch(run_id, params=chunk), what="log params", uri=uri, policy=retry)


def _log_metrics(c, run_id: str, metrics: list[tuple[str, float, int]], uri: str, retry) -> None:
    import time

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = [Metric(_metric_key(k), float(v), ts, int(step)) for k, v, step in metrics]
    for i in range(0, len(items), 1000):
        chunk = items[i:i + 1000]
        with_retries(lambda: c.log_batch(run_id, metrics=chunk), what="log metrics", uri=uri, policy=retry)


def _log_json(c, run_id: str, obj: Any, artifact_file: str, uri: str, retry) -> None:
    with_retries(lambda: c.log_dict(run_id, obj, artifact_file), what=f"log {artifact_file}", uri=uri, policy=retry)


def _log_path(c, run_id: str, path: Path, artifact_path: str | None, uri: str, retry) -> None:
    if path.is_dir():
        fn = lambda: c.log_artifacts(run_id, str(path), artifact_path)  # noqa: E731
    else:
        fn = lambda: c.log_artifact(run_id, str(path), artifact_path)  # noqa: E731
    with_retries(fn, what=f"upload artifact {path.name}", uri=uri, policy=retry)


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
    c = client_for(tracking_uri)
    exp_id = ensure_experiment(tracking_uri, experiment, retry)
    manifest = _load_json(data_manifest, "data manifest") if not isinstance(data_manifest, Mapping) else dict(
        data_manifest)
    all_tags = {"git_commit": git_commit(), "waferflow.kind": "pipeline"}
    if manifest and manifest.get("content_sha256"):
        all_tags["data_hash"] = str(manifest["content_sha256"])
    all_tags.update(tags or {})
    run = with_retries(lambda: c.create_run(exp_id, run_name=run_name, tags=all_tags),
                       what="create pipeline run", uri=tracking_uri, policy=retry)
    rid = run.info.run_id
    cfg = _read_config(config)
    if cfg is not None:
        _log_json(c, rid, cfg, "config/pipeline_config.json", tracking_uri, retry)
        _log_params(c, rid, flatten(cfg), tracking_uri, retry)
    if manifest is not None:
        _log_json(c, rid, manifest, "data/manifest.json", tracking_uri, retry)
    return rid


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED", retry: RetryPolicy | None = None) -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    c = client_for(tracking_uri)
    with_retries(lambda: c.set_terminated(run_id, status), what="end run", uri=tracking_uri, policy=retry)


def _read_config(config: Mapping | str | os.PathLike | None) -> dict | None:
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


def _example_input(spec: Mapping[str, Any]):
    """One clean, preprocessed wafer (a disk of passing dies), shaped [1, C, S, S] like ``preprocess`` makes."""
    import numpy as np

    s, cch = int(spec["input_size"]), int(spec.get("in_chans", 1))
    yy, xx = np.mgrid[:s, :s]
    r = (s - 1) / 2
    disk = ((yy - r) ** 2 + (xx - r) ** 2 <= (0.45 * s) ** 2).astype(np.float32) * 0.5  # value 1 (pass) / 2
    mean = np.asarray(spec.get("mean", [0.0] * cch), np.float32).reshape(cch, 1, 1)
    std = np.asarray(spec.get("std", [1.0] * cch), np.float32).reshape(cch, 1, 1)
    return ((np.repeat(disk[None], cch, 0) - mean) / std)[None].astype(np.float32)


def _log_onnx(uri: str, run_id: str, onnx_path: Path, form: str, spec: Mapping[str, Any]) -> str:
    """Log one ONNX file as an MLflow model (signature + input example); returns the logged model id."""
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    try:
        model = onnx.load(str(onnx_path))
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any load failure means a bad file
        raise ModelFormatError(f"{onnx_path} is not a loadable ONNX model ({e}); re-run waferflow export") from None
    x = _example_input(spec)
    in_name = sess.get_inputs()[0].name
    y = sess.run(None, {in_name: x})[0]
    if y.shape != (1, int(spec["num_classes"])):
        raise ModelFormatError(f"{onnx_path} returns shape {y.shape}, model.json says {spec['num_classes']} "
                               "classes; re-export the model")
    sig = infer_signature({in_name: x}, np.asarray(y))
    with _fluent(uri), mlflow.start_run(run_id=run_id, nested=True):
        # explicit requirements: mlflow's inference of them spawns a subprocess and costs seconds per model
        info = mlflow.onnx.log_model(model, name=form, signature=sig, input_example={in_name: x},
                                     save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}",
                                                       f"numpy=={np.__version__}"])
    return info.model_id


def _dataset_source(origin: str):
    """An MLflow dataset source for a manifest's ``source``: a local file for a path, else the generator."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if origin.startswith("/") or origin.startswith("file:"):
        return resolve_dataset_source(origin if origin.startswith("file:") else Path(origin).as_uri())
    return CodeDatasetSource(tags={"origin": origin})


def log_datasets(tracking_uri: str, run_id: str, manifest: Mapping[str, Any]) -> list[str]:
    """Log every split of ``manifest`` as an input dataset of ``run_id`` (``mlflow.log_input``).

    Each split is a dataset named ``<split>`` whose digest is the split's content hash, with the input tag
    ``mlflow.data.context`` = the split; its source is the origin of the whole dataset (the user's file, or
    the synthetic generator). Returns the splits logged.
    """
    import mlflow
    from mlflow.data.meta_dataset import MetaDataset

    splits = split_manifests(manifest)
    origin = str(manifest.get("source") or "unknown")
    with _fluent(tracking_uri), mlflow.start_run(run_id=run_id, nested=True):
        for name, m in splits.items():
            ds = MetaDataset(_dataset_source(origin), name=name, digest=str(m.get("content_sha256", "unknown"))[:16])
            mlflow.log_input(ds, context=name, tags={"n_maps": str(m.get("n_maps", "?")),
                                                     "content_sha256": str(m.get("content_sha256", "unknown"))})
    return list(splits)


def log_pyfunc(tracking_uri: str, run_id: str, onnx_path: str | Path, spec_path: str | Path,
               name: str = "pyfunc") -> str:
    """Log the raw-map pyfunc (:class:`waferflow.tracking.pyfunc.WaferMapClassifier`) around ``onnx_path`` and ``model.json`` into ``run_id``; returns the model id.

    The input example (two maps of different sizes) is checked by MLflow on logging, so a model that cannot
    answer raw maps fails here, not in a reviewer's hands.
    """
    import mlflow
    import numpy as np
    import onnxruntime as ort

    from waferflow.tracking.pyfunc import CODE_FILE, ONNX_ARTIFACT, SPEC_ARTIFACT, example_maps

    spec = json.loads(Path(spec_path).read_text())
    with _fluent(tracking_uri), mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pyfunc.log_model(
            # models from code: loading rebuilds the model from _pyfunc_code.py, nothing is unpickled
            name=name, python_model=str(CODE_FILE), input_example=example_maps(spec),
            artifacts={ONNX_ARTIFACT: str(onnx_path), SPEC_ARTIFACT: str(spec_path)},
            # explicit requirements: inferring them spawns a subprocess and costs seconds
            pip_requirements=[f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}", "waferflow"])
    return info.model_id


@contextlib.contextmanager
def track_system_metrics(tracking_uri: str, run_id: str, interval_s: float = 5.0) -> Iterator[None]:
    """Log CPU/memory/disk/network (and GPU when pynvml sees one) as ``system/*`` metrics while the body runs.

    Wrap the work you want measured (training, export) in it. GPU metrics need ``pynvml`` and a CUDA device;
    without them a ``system_metrics.gpu`` tag says why they are absent.
    """
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    c = client_for(tracking_uri)
    try:
        import pynvml  # noqa: F401

        gpu_note = None
    except ImportError:
        gpu_note = "skipped: pynvml not installed (no GPU metrics)"
    if gpu_note:
        with_retries(lambda: c.set_tag(run_id, "system_metrics.gpu", gpu_note), what="tag run",
                     uri=tracking_uri)
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


def open_candidate_run(tracking_uri: str, parent_run_id: str, run_name: str,
                       tags: Mapping[str, str] | None = None, retry: RetryPolicy | None = None) -> str:
    """Create a nested (child) run of ``parent_run_id`` in the parent's experiment; returns its id."""
    c = client_for(tracking_uri)
    parent = with_retries(lambda: c.get_run(parent_run_id), what="read parent run", uri=tracking_uri, policy=retry)
    t = {"mlflow.parentRunId": parent_run_id, "git_commit": git_commit(), "waferflow.kind": "candidate"}
    t.update(tags or {})
    run = with_retries(lambda: c.create_run(parent.info.experiment_id, run_name=run_name, tags=t),
                       what="create candidate run", uri=tracking_uri, policy=retry)
    return run.info.run_id


def log_candidate(
    tracking_uri: str,
    parent_run_id: str,
    model_dir: str | os.PathLike,
    metrics: Mapping[str, Any] | str | os.PathLike,
    artifacts: Mapping[str, str | os.PathLike] | None = None,
    *,
    export_dir: str | os.PathLike | None = None,
    int8_metrics: Mapping[str, Any] | str | os.PathLike | None = None,
    latency: Mapping[str, Any] | str | os.PathLike | None = None,
    data_manifest: Mapping[str, Any] | str | os.PathLike | None = None,
    run_name: str | None = None,
    run_id: str | None = None,
    log_models: bool = True,
    serve_form: str = "onnx_int8",
    system_metrics_interval_s: float | None = 1.0,
    retry: RetryPolicy | None = None,
) -> str:
    """Log one trained candidate into a nested run of the pipeline's parent run.

    Logs params (``model.json`` + flattened ``config.yaml``), per-epoch metrics from ``history.json``
    (``step=epoch``), test metrics (overall, per-class recall/precision/F1, INT8, latency per form), the
    resolved config, the data manifest (its hash as tag ``data_hash``), ``artifacts`` (curves/confusion/Grad-CAM
    PNGs, ...), the model dir's safe files (state dict + model.json, never a pickled module), and the ONNX FP32
    and INT8 models as MLflow models with a signature and input example.

    Args:
        tracking_uri: From :func:`resolve_tracking_uri`.
        parent_run_id: From :func:`start_pipeline_run`.
        model_dir: A model directory (``model.json``, ``weights.pt``, ...).
        metrics: Test-set eval dict (or the path of ``metrics.json``).
        artifacts: ``{folder name: file or folder}`` logged under that folder, e.g. ``{"plots": "curves.png"}``.
        export_dir: Export dir (``model.onnx``, ``model.int8.onnx``, ``export.json``, ``latency.json``).
        int8_metrics: Eval dict of the INT8 ONNX model on the same test set (or its path).
        latency: Latency JSON (or its path); defaults to ``<export_dir>/latency.json`` when present.
        data_manifest: The test (or split) manifest (dict or path).
        run_name: Display name; default ``<strategy>-<backbone>``.
        run_id: Log into this existing candidate run (e.g. one opened with :func:`open_candidate_run` around
            training) instead of creating one.
        log_models: Log the ONNX models (needs ``export_dir``) and the raw-map pyfunc around ``serve_form``.
        serve_form: The ONNX form inside the raw-map pyfunc (the gates' deployment form): ``onnx_int8`` (FP32
            when there is no INT8 file; the tag ``waferflow.pyfunc_form`` says which) or ``onnx_fp32``.
        system_metrics_interval_s: Sample system metrics at this interval while logging; None disables.
        retry: Retry policy for MLflow calls.

    Returns:
        The candidate run id. The run is FINISHED on success, FAILED when logging raised.

    Raises:
        ModelFormatError: A required file is missing or unreadable.
        RegistryError: MLflow/S3 unreachable after the retries.
    """
    md = Path(model_dir)
    for f in ("model.json", "weights.pt"):
        if not (md / f).is_file():
            raise ModelFormatError(f"model dir {md} has no {f}; pass a folder written by waferflow train")
    spec = _load_json(md / "model.json", "model.json")
    metrics_d = _load_json(metrics, "metrics") if not isinstance(metrics, Mapping) else dict(metrics)
    int8_d = _load_json(int8_metrics, "INT8 metrics") if not isinstance(int8_metrics, Mapping) else dict(int8_metrics)
    ed = Path(export_dir) if export_dir is not None else None
    if latency is None and ed is not None and (ed / "latency.json").is_file():
        latency = ed / "latency.json"
    latency_d = _load_json(latency, "latency JSON") if not isinstance(latency, Mapping) else dict(latency)
    manifest = _load_json(data_manifest, "data manifest") if not isinstance(data_manifest, Mapping) else dict(
        data_manifest)
    if log_models and (ed is None or not (ed / "model.onnx").is_file()):
        raise ModelFormatError(f"export dir {ed} has no model.onnx; run waferflow export first, or pass "
                               "log_models=False")
    for name, p in (artifacts or {}).items():
        if not Path(p).exists():
            raise ModelFormatError(f"artifact '{name}' path {p} does not exist")

    c = client_for(tracking_uri)
    data_hash = (manifest or {}).get("content_sha256") or spec.get("data_hash") or "unknown"
    strategy, backbone = str(spec.get("strategy", "unknown")), str(spec.get("backbone", "unknown"))
    tags = {"strategy": strategy, "backbone": backbone, "data_hash": str(data_hash)}
    if run_id is None:
        run_id = open_candidate_run(tracking_uri, parent_run_id, run_name or f"{strategy}-{backbone}", tags, retry)
    else:
        for k, v in tags.items():
            with_retries(lambda: c.set_tag(run_id, k, v), what="tag run", uri=tracking_uri, policy=retry)

    monitor = (track_system_metrics(tracking_uri, run_id, system_metrics_interval_s)
               if system_metrics_interval_s else contextlib.nullcontext())
    try:
        with monitor:
            _log_candidate_body(c, tracking_uri, run_id, md, spec, metrics_d, int8_d, latency_d, manifest, ed,
                                artifacts or {}, log_models, retry, serve_form)
    except BaseException as e:
        # two separate best-effort steps: a failed tag write must not keep the run from being marked FAILED
        error = f"{type(e).__name__}: {e}"[:5000]
        _best_effort(lambda: c.set_tag(run_id, "error", error), "tag run error", tracking_uri, retry)
        _best_effort(lambda: c.set_terminated(run_id, "FAILED"), "mark run failed", tracking_uri, retry)
        raise
    end_run(tracking_uri, run_id, "FINISHED", retry)
    return run_id


def _best_effort(call: Callable[[], Any], what: str, uri: str, retry: RetryPolicy | None) -> None:
    """Retry ``call`` like any MLflow call, but only warn when it still fails (used while already failing)."""
    try:
        with_retries(call, what=what, uri=uri, policy=retry)
    except Exception as e:  # noqa: BLE001 - the original error is the one to raise
        log.warning("%s failed while recording a failure: %s", what, e)


def _log_candidate_body(c, uri, run_id, md: Path, spec, metrics_d, int8_d, latency_d, manifest, ed, artifacts,
                        log_models, retry, serve_form: str = "onnx_int8") -> None:
    params = {f"model.{k}": v for k, v in flatten(spec).items()
              if k not in ("class_names", "weights_sha256", "created_utc", "mean", "std")}
    cfg = _read_config(md / "config.yaml") if (md / "config.yaml").is_file() else None
    if cfg is not None:
        params.update({f"config.{k}": v for k, v in flatten(cfg).items()})
        _log_json(c, run_id, cfg, "config/resolved_config.json", uri, retry)
    _log_params(c, run_id, params, uri, retry)

    series: list[tuple[str, float, int]] = []
    if (md / "history.json").is_file():
        history = _load_json(md / "history.json", "history.json")
        for i, row in enumerate(history if isinstance(history, list) else []):
            step = int(row.get("epoch", i))
            for k, v in row.items():
                if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    series.append((k, v, step))
    for k, v in metrics_d.get("overall", {}).items():
        series.append((f"test_{k}", v, 0))
    for cname, d in metrics_d.get("per_class", {}).items():
        for k in ("recall", "precision", "f1"):
            series.append((f"test_{k}_{cname}", d[k], 0))
    if int8_d is not None:
        for k, v in int8_d.get("overall", {}).items():
            series.append((f"int8_test_{k}", v, 0))
    for form, d in ((latency_d or {}).get("forms") or {}).items():
        for k in ("p50_ms", "p95_ms", "p99_ms", "throughput_maps_per_s"):
            if isinstance(d, Mapping) and isinstance(d.get(k), (int, float)):
                series.append((f"latency_{form}_{k}", d[k], 0))
    _log_metrics(c, run_id, series, uri, retry)

    _log_json(c, run_id, metrics_d, f"{INFO_DIR}/metrics.json", uri, retry)
    _log_json(c, run_id, spec, f"{INFO_DIR}/model.json", uri, retry)
    if int8_d is not None:
        _log_json(c, run_id, int8_d, f"{INFO_DIR}/int8_metrics.json", uri, retry)
    if latency_d is not None:
        _log_json(c, run_id, latency_d, f"{INFO_DIR}/latency.json", uri, retry)
    if manifest is not None:
        _log_json(c, run_id, manifest, f"{INFO_DIR}/data_manifest.json", uri, retry)
        with_retries(lambda: log_datasets(uri, run_id, manifest), what="log dataset inputs", uri=uri, policy=retry)
    if (md / "self_training.json").is_file():
        _log_json(c, run_id, _load_json(md / "self_training.json", "self_training.json"),
                  f"{INFO_DIR}/self_training.json", uri, retry)
    for f in MODEL_DIR_FILES:
        if (md / f).is_file():
            _log_path(c, run_id, md / f, MODEL_DIR_ARTIFACT, uri, retry)
    if ed is not None:
        for f in EXPORT_FILES:
            if (ed / f).is_file():
                _log_path(c, run_id, ed / f, EXPORT_ARTIFACT, uri, retry)
    for name, p in artifacts.items():
        _log_path(c, run_id, Path(p), name, uri, retry)

    if log_models:
        forms = {"onnx_fp32": ed / "model.onnx"}
        if (ed / "model.int8.onnx").is_file():
            forms["onnx_int8"] = ed / "model.int8.onnx"
        for form, path in forms.items():
            mid = with_retries(lambda: _log_onnx(uri, run_id, path, form, spec), what=f"log {form} model",
                               uri=uri, policy=retry)
            with_retries(lambda: c.set_tag(run_id, TAG_LOGGED_MODEL + form, mid), what="tag run", uri=uri,
                         policy=retry)
        _log_serving_model(c, uri, run_id, md / "model.json", forms, serve_form, retry)


def _log_serving_model(c, uri: str, run_id: str, spec_path: Path, forms: Mapping[str, Path], serve_form: str,
                       retry) -> None:
    """The raw-map pyfunc around ``forms[serve_form]`` (FP32 when that form was not exported), tagged."""
    form = serve_form if serve_form in forms else "onnx_fp32"
    mid = with_retries(lambda: log_pyfunc(uri, run_id, forms[form], spec_path), what="log raw-map pyfunc", uri=uri,
                       policy=retry)
    for k, v in ((TAG_LOGGED_MODEL + "pyfunc", mid), (TAG_PYFUNC_FORM, form)):
        with_retries(lambda: c.set_tag(run_id, k, v), what="tag run", uri=uri, policy=retry)


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
    c = client_for(tracking_uri)
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
    for k, v in tags.items():
        with_retries(lambda: c.set_tag(run_id, k, v), what="tag failed run", uri=tracking_uri, policy=retry)
    with_retries(lambda: c.log_text(run_id, error or "(no error message)", "error.txt"), what="log error",
                 uri=tracking_uri, policy=retry)
    end_run(tracking_uri, run_id, "FAILED", retry)
    if name:
        from waferflow.tracking.registry import record_pipeline_failure

        record_pipeline_failure(tracking_uri, name, run_id=run_id, error=error, stage=stage,
                                pipeline_run=pipeline_run, state=state, retry=retry)
    return run_id


def download_run_artifacts(tracking_uri: str, run_id: str, artifact_path: str, dest: str | os.PathLike,
                           retry: RetryPolicy | None = None) -> Path:
    """Download ``artifact_path`` of a run into ``dest`` (atomic: temp folder, then rename)."""
    from mlflow.artifacts import download_artifacts

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        got = with_retries(lambda: download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                      dst_path=str(tmp), tracking_uri=tracking_uri),
                           what=f"download {artifact_path}", uri=tracking_uri, policy=retry)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(got, dest)
    except Exception as e:
        if isinstance(e, (RegistryError, ModelFormatError)):
            raise
        from mlflow.exceptions import MlflowException

        if isinstance(e, (MlflowException, OSError)):
            raise RegistryError(f"could not download '{artifact_path}' of run {run_id} from {tracking_uri}: "
                                f"{e}") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest
