"""Logging one trained candidate into a nested run: params, metrics, files, ONNX models and the raw-map pyfunc."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping

from waferflow.forms import EXPORT_FORMS
from waferflow.errors import ModelFormatError
from waferflow.tracking.artifacts import (EXPORT_ARTIFACT, EXPORT_FILES, INFO_DIR, MODEL_DIR_ARTIFACT, MODEL_DIR_FILES,
                                          TAG_LOGGED_MODEL, TAG_PYFUNC_FORM)
from waferflow.tracking.client import RetryingClient, RetryPolicy
from waferflow.tracking.model_logging import log_datasets, log_onnx, log_pyfunc
from waferflow.tracking.runs import (end_run, flatten, load_json, log_json, log_metrics, log_params, log_path,
                                     open_candidate_run, read_config, set_tags, track_system_metrics)

log = logging.getLogger(__name__)


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
        export_dir: Export dir (``model.onnx``, ``model.int8.onnx``, the TTA graphs, ``export.json``,
            ``latency.json``); every ONNX form in it is logged as a model.
        int8_metrics: Eval dict of the INT8 ONNX model on the same test set (or its path).
        latency: Latency JSON (or its path); defaults to ``<export_dir>/latency.json`` when present.
        data_manifest: The test (or split) manifest (dict or path).
        run_name: Display name; default ``<strategy>-<backbone>``.
        run_id: Log into this existing candidate run (e.g. one opened with :func:`open_candidate_run` around
            training) instead of creating one.
        log_models: Log the ONNX models (needs ``export_dir``) and the raw-map pyfunc around ``serve_form``.
        serve_form: The ONNX form inside the raw-map pyfunc (the gates' deployment form): ``onnx_int8``,
            ``onnx_fp32``, ``onnx_fp32_tta`` or ``onnx_int8_tta`` (FP32 when that file was not exported; the tag
            ``waferflow.pyfunc_form`` says which).
        system_metrics_interval_s: Sample system metrics at this interval while logging; None disables.
        retry: Retry policy for MLflow calls.

    Returns:
        The candidate run id. The run is FINISHED on success, FAILED when logging raised.

    Raises:
        ModelFormatError: A required file is missing or unreadable.
        RegistryError: MLflow/S3 unreachable after the retries.
    """
    inputs = _load_inputs(model_dir, metrics, export_dir, int8_metrics, latency, data_manifest, artifacts or {},
                          log_models)
    spec = inputs["spec"]
    c = RetryingClient(tracking_uri, retry)
    data_hash = (inputs["manifest"] or {}).get("content_sha256") or spec.get("data_hash") or "unknown"
    strategy, backbone = str(spec.get("strategy", "unknown")), str(spec.get("backbone", "unknown"))
    tags = {"strategy": strategy, "backbone": backbone, "data_hash": str(data_hash)}
    if run_id is None:
        run_id = open_candidate_run(tracking_uri, parent_run_id, run_name or f"{strategy}-{backbone}", tags, retry)
    else:
        set_tags(c, run_id, tags)

    monitor = (track_system_metrics(tracking_uri, run_id, system_metrics_interval_s)
               if system_metrics_interval_s else contextlib.nullcontext())
    try:
        with monitor:
            _log_candidate_body(c, run_id, inputs, artifacts or {}, log_models, serve_form)
    except BaseException as e:
        # two separate best-effort steps: a failed tag write must not keep the run from being marked FAILED
        error = f"{type(e).__name__}: {e}"[:5000]
        _best_effort(c, "tag run error", c.raw.set_tag, run_id, "error", error)
        _best_effort(c, "mark run failed", c.raw.set_terminated, run_id, "FAILED")
        raise
    end_run(tracking_uri, run_id, "FINISHED", retry)
    return run_id


def _load_inputs(model_dir, metrics, export_dir, int8_metrics, latency, data_manifest,
                 artifacts: Mapping[str, Any], log_models: bool) -> dict[str, Any]:
    """Read and check everything :func:`log_candidate` logs, before any MLflow call."""
    md = Path(model_dir)
    for f in ("model.json", "weights.pt"):
        if not (md / f).is_file():
            raise ModelFormatError(f"model dir {md} has no {f}; pass a folder written by waferflow train")
    ed = Path(export_dir) if export_dir is not None else None
    if latency is None and ed is not None and (ed / "latency.json").is_file():
        latency = ed / "latency.json"
    out = {"md": md, "ed": ed, "spec": load_json(md / "model.json", "model.json"),
           "metrics": load_json(metrics, "metrics"), "int8": load_json(int8_metrics, "INT8 metrics"),
           "latency": load_json(latency, "latency JSON"), "manifest": load_json(data_manifest, "data manifest")}
    if log_models and (ed is None or not (ed / "model.onnx").is_file()):
        raise ModelFormatError(f"export dir {ed} has no model.onnx; run waferflow export first, or pass "
                               "log_models=False")
    for name, p in artifacts.items():
        if not Path(p).exists():
            raise ModelFormatError(f"artifact '{name}' path {p} does not exist")
    return out


def _best_effort(c: RetryingClient, what: str, fn: Callable[..., Any], *args: Any) -> None:
    """Retry ``fn`` like any MLflow call, but only warn when it still fails (used while already failing)."""
    try:
        c.call(what, fn, *args)
    except Exception as e:  # noqa: BLE001 - the original error is the one to raise
        log.warning("%s failed while recording a failure: %s", what, e)


def _log_candidate_body(c: RetryingClient, run_id: str, inputs: Mapping[str, Any], artifacts: Mapping[str, Any],
                        log_models: bool, serve_form: str = "onnx_int8") -> None:
    md, ed, spec = inputs["md"], inputs["ed"], inputs["spec"]
    params = {f"model.{k}": v for k, v in flatten(spec).items()
              if k not in ("class_names", "weights_sha256", "created_utc", "mean", "std")}
    cfg = read_config(md / "config.yaml") if (md / "config.yaml").is_file() else None
    if cfg is not None:
        params.update({f"config.{k}": v for k, v in flatten(cfg).items()})
        log_json(c, run_id, cfg, "config/resolved_config.json")
    log_params(c, run_id, params)
    log_metrics(c, run_id, _metric_series(md, inputs["metrics"], inputs["int8"], inputs["latency"]))
    _log_info_files(c, run_id, inputs)
    for f in MODEL_DIR_FILES:
        if (md / f).is_file():
            log_path(c, run_id, md / f, MODEL_DIR_ARTIFACT)
    if ed is not None:
        for f in EXPORT_FILES:
            if (ed / f).is_file():
                log_path(c, run_id, ed / f, EXPORT_ARTIFACT)
    for name, p in artifacts.items():
        log_path(c, run_id, Path(p), name)
    if log_models:
        forms = {form: ed / name for form, name in EXPORT_FORMS.items() if (ed / name).is_file()}
        for form, path in forms.items():
            mid = c.call(f"log {form} model", log_onnx, c.uri, run_id, path, form, spec)
            c.call("tag run", c.raw.set_tag, run_id, TAG_LOGGED_MODEL + form, mid)
        _log_serving_model(c, run_id, md / "model.json", forms, serve_form)


def _metric_series(md: Path, metrics_d: Mapping, int8_d: Mapping | None, latency_d: Mapping | None
                   ) -> list[tuple[str, float, int]]:
    """Per-epoch history (``step=epoch``), then test, INT8 and latency metrics (step 0)."""
    series: list[tuple[str, float, int]] = []
    if (md / "history.json").is_file():
        history = load_json(md / "history.json", "history.json")
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
    return series


def _log_info_files(c: RetryingClient, run_id: str, inputs: Mapping[str, Any]) -> None:
    """The JSON files the registry reads back, under ``waferflow/``, and the manifest's splits as datasets."""
    md, manifest = inputs["md"], inputs["manifest"]
    log_json(c, run_id, inputs["metrics"], f"{INFO_DIR}/metrics.json")
    log_json(c, run_id, inputs["spec"], f"{INFO_DIR}/model.json")
    if inputs["int8"] is not None:
        log_json(c, run_id, inputs["int8"], f"{INFO_DIR}/int8_metrics.json")
    if inputs["latency"] is not None:
        log_json(c, run_id, inputs["latency"], f"{INFO_DIR}/latency.json")
    if manifest is not None:
        log_json(c, run_id, manifest, f"{INFO_DIR}/data_manifest.json")
        c.call("log dataset inputs", log_datasets, c.uri, run_id, manifest)
    if (md / "self_training.json").is_file():
        log_json(c, run_id, load_json(md / "self_training.json", "self_training.json"),
                 f"{INFO_DIR}/self_training.json")


def _log_serving_model(c: RetryingClient, run_id: str, spec_path: Path, forms: Mapping[str, Path],
                       serve_form: str) -> None:
    """The raw-map pyfunc around ``forms[serve_form]`` (FP32 when that form was not exported), tagged."""
    form = serve_form if serve_form in forms else "onnx_fp32"
    mid = c.call("log raw-map pyfunc", log_pyfunc, c.uri, run_id, forms[form], spec_path)
    set_tags(c, run_id, {TAG_LOGGED_MODEL + "pyfunc": mid, TAG_PYFUNC_FORM: form})
