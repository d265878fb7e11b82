"""Registering a logged candidate as a model version: the raw-map pyfunc source, tags, model card, challenger."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, Mapping

from waferflow.errors import RegistryError
from waferflow.gates import GateReport
from waferflow.tracking.artifacts import (CONFIG_ARTIFACT, INFO_DIR, PREDICTIONS_FILE, TAG_LOGGED_MODEL,
                                          TAG_PYFUNC_FORM, download_logged_onnx, read_run_jsons)
from waferflow.tracking.audit import (CHALLENGER, DEFAULT_MODEL_NAME, ensure_registered_model, move_alias, now_iso,
                                      summary_metrics, write_audit)
from waferflow.tracking.card import build_model_card, weights_provenance
from waferflow.tracking.client import RetryingClient, RetryPolicy, global_tracking_uri
from waferflow.tracking.model_logging import log_pyfunc

_INFO_FILES = [f"{INFO_DIR}/{f}" for f in ("model.json", "metrics.json", "int8_metrics.json", "latency.json",
                                           "data_manifest.json", "self_training.json")] + [CONFIG_ARTIFACT]


def as_report(gate_report: GateReport | Mapping[str, Any]) -> GateReport:
    """A :class:`GateReport` from itself or its ``to_dict()``."""
    if isinstance(gate_report, GateReport):
        return gate_report
    if isinstance(gate_report, Mapping) and "results" in gate_report:
        return GateReport.from_dict(gate_report)
    raise RegistryError("gate_report must be a waferflow.gates.GateReport (or its to_dict()); "
                        "get one from waferflow.gates.check_gates")


def _test_hash(manifest: Mapping | None) -> str | None:
    """The test split's content hash of a manifest (or the whole manifest's), else None."""
    if not manifest:
        return None
    if isinstance(manifest.get("test"), Mapping) and manifest["test"].get("content_sha256"):
        return str(manifest["test"]["content_sha256"])
    return str(manifest["content_sha256"]) if manifest.get("content_sha256") else None


def register_candidate(
    tracking_uri: str,
    run_id: str,
    gate_report: GateReport | Mapping[str, Any],
    *,
    name: str = DEFAULT_MODEL_NAME,
    pipeline_run_id: str | None = None,
    actor: str = "pipeline",
    set_challenger: bool = True,
    test_data_hash: str | None = None,
    predictions: Mapping[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> str:
    """Register the candidate logged in ``run_id`` as a new model version.

    The version's source is a pyfunc (:mod:`waferflow.tracking.pyfunc`) logged into the run around the ONNX
    model of the deployment form (``onnx_int8`` by default, else ``onnx_fp32``): it takes raw 0/1/2 maps of any
    size and returns class names. Tags: strategy, backbone, data_hash (the whole labeled dataset),
    test_data_hash, weights_origin, source_model, git_commit, pipeline_run_id, run_id, ``metric.*`` (with
    ``*_ci_low``/``*_ci_high``), ``gate.<name>`` per gate (value, interval, rule), ``gates.passed`` and
    ``gates.reason`` (one line). The description is the model card. Then ``challenger`` moves to it (recorded in
    the audit trail).

    Args:
        predictions: ``{"labels": [...], "predictions": [...]}`` of this candidate on the test maps, logged as
            ``waferflow/test_predictions.json`` so a later paired test (the promotion re-check) can use them.

    Returns:
        The new version (string).
    """
    gate_report = as_report(gate_report)
    c = RetryingClient(tracking_uri, retry)
    rtags = c.call("read candidate run", c.raw.get_run, run_id).data.tags
    served, model_id, pyfunc_id = _served_models(rtags, gate_report.config.deployment_form, run_id)
    info = read_run_jsons(c, run_id, _INFO_FILES)
    spec = info[f"{INFO_DIR}/model.json"] or {}
    manifest = info[f"{INFO_DIR}/data_manifest.json"]
    if predictions is not None:
        c.call("log test predictions", c.raw.log_dict, run_id, {
            "labels": [int(x) for x in predictions["labels"]], "predictions": [int(x) for x in predictions["predictions"]],
            "test_data_hash": test_data_hash or _test_hash(manifest)}, f"{INFO_DIR}/{PREDICTIONS_FILE}")
    if pyfunc_id is None:  # logged around another form (or before pyfuncs were logged): wrap the served one now
        pyfunc_id = c.call("log raw-map pyfunc", _log_raw_map_model, c, run_id, model_id, spec)
    pipeline_run_id = pipeline_run_id or rtags.get("mlflow.parentRunId")
    git = rtags.get("git_commit", "unknown")
    card = build_model_card(name=name, spec=spec, metrics=info[f"{INFO_DIR}/metrics.json"] or {},
                            gate_report=gate_report, int8_metrics=info[f"{INFO_DIR}/int8_metrics.json"],
                            latency=info[f"{INFO_DIR}/latency.json"], manifest=manifest, run_id=run_id,
                            pipeline_run_id=pipeline_run_id, git_commit=git, config=info[CONFIG_ARTIFACT],
                            self_training=info[f"{INFO_DIR}/self_training.json"],
                            serving={"Registered model (raw maps -> class names)": f"models:/{pyfunc_id}",
                                     f"ONNX form inside it ({served})": f"models:/{model_id}"})
    tags = version_tags_for(spec, rtags, manifest, gate_report, info[f"{INFO_DIR}/metrics.json"] or {}, run_id,
                            pipeline_run_id, git, test_data_hash)
    tags["served_form"] = served
    version = _create_version(c, name, pyfunc_id, run_id, tags, card)
    summary = summary_metrics(tags)
    write_audit(c, name, {"ts": now_iso(), "action": "register", "alias": None, "old_version": None,
                          "new_version": version, "actor": actor, "status": "decision",
                          "reason": f"registered run {run_id}; gates {gate_report.reason}", "metrics": summary})
    if set_challenger:
        move_alias(c, name, CHALLENGER, version, action="challenger", actor=actor,
                   reason="newest registered candidate", metrics=summary)
    return version


def _served_models(rtags: Mapping[str, str], form: str, run_id: str) -> tuple[str, str, str | None]:
    """(served form, its ONNX model id, the pyfunc around it or None) from the candidate run's tags."""
    # a deployment form that was not logged (no INT8 export, TensorRT) is served as FP32; the tag says so
    served = form if rtags.get(TAG_LOGGED_MODEL + form) else "onnx_fp32"
    model_id = rtags.get(TAG_LOGGED_MODEL + served)
    pyfunc_id = rtags.get(TAG_LOGGED_MODEL + "pyfunc") if rtags.get(TAG_PYFUNC_FORM) == served else None
    if not model_id:
        raise RegistryError(f"run {run_id} has no logged ONNX model; call log_candidate with an export dir "
                            "(log_models=True) before register_candidate")
    return served, model_id, pyfunc_id


def _create_version(c: RetryingClient, name: str, pyfunc_id: str, run_id: str, tags: Mapping[str, str],
                    card: str) -> str:
    ensure_registered_model(c, name)

    def create():
        # the sqlalchemy registry resolves ``models:/<id>`` through the *global* tracking URI
        with global_tracking_uri(c.uri):
            return c.raw.create_model_version(name, source=f"models:/{pyfunc_id}", run_id=run_id, tags=tags,
                                              description=card, model_id=pyfunc_id)

    return str(c.call("create model version", create).version)


def _log_raw_map_model(c: RetryingClient, run_id: str, onnx_model_id: str, spec: Mapping[str, Any]) -> str:
    """Download the logged ONNX model and log the raw-map pyfunc around it; returns the pyfunc's model id."""
    with tempfile.TemporaryDirectory() as td:
        onnx_path = Path(td) / "model.onnx"
        download_logged_onnx(c.with_policy(None), onnx_model_id, onnx_path)
        spec_path = Path(td) / "model.json"
        spec_path.write_text(json.dumps(dict(spec)))
        return log_pyfunc(c.uri, run_id, onnx_path, spec_path)


def version_tags_for(spec, rtags, manifest, gate_report: GateReport, metrics, run_id, pipeline_run_id, git,
                     test_data_hash) -> dict[str, str]:
    """The model version's tags (see :func:`register_candidate`)."""
    prov = weights_provenance(spec)
    tags = {
        "strategy": str(spec.get("strategy", rtags.get("strategy", "unknown"))),
        "backbone": str(spec.get("backbone", rtags.get("backbone", "unknown"))),
        "data_hash": str(rtags.get("data_hash", spec.get("data_hash", "unknown"))),
        "test_data_hash": str(test_data_hash or _test_hash(manifest) or "unknown"),
        "weights_origin": prov["origin"],
        "source_model": str(prov["source_model"] or "none"),
        "git_commit": git,
        "pipeline_run_id": str(pipeline_run_id),
        "run_id": run_id,
        "deployment_form": gate_report.config.deployment_form,
        "gates.passed": str(gate_report.passed).lower(),
        "gates.reason": gate_report.reason[:5000],
        "gates.violations": ",".join(r.name for r in gate_report.violations) or "none",
        "gates.champion_version": str(gate_report.champion_version),
        "gates.report": json.dumps(gate_report.to_dict())[:90000],
    }
    for r in gate_report.results:
        tags[f"gate.{r.name}"] = f"{'pass' if r.passed else 'FAIL'}: {r.value_text()} {r.op} {r.threshold:g}"
    ov = metrics.get("overall", {})
    for k in ("accuracy", "macro_f1", "balanced_accuracy"):
        if k in ov:
            tags[f"metric.{k}"] = f"{ov[k]:.6f}"
    for r in gate_report.results:
        if r.name in ("per_class_recall", "p99_latency_ms", "int8_accuracy_drop") and r.value is not None:
            tags[f"metric.{r.name}"] = f"{r.value:.6f}"
        if r.ci_low is not None and not r.name.startswith("vs_champion"):
            tags[f"metric.{r.name}_ci_low"] = f"{r.ci_low:.6f}"
            tags[f"metric.{r.name}_ci_high"] = f"{r.ci_high:.6f}"
    return tags
