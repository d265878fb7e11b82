"""The MLflow stages' work, one function per stage; the components in ``components/`` only hand them paths.

- :func:`log_selected`: the selected candidate as a nested run, with the drift reference built from its data.
- :func:`gate_and_register`: the candidate (and the champion, when there is one) predict the same test maps in
  the forms they deploy, every gate is judged with its interval and the paired test, and the version is
  registered with its verdicts.
- :func:`close_pipeline_run`: the exit handler's work: end the parent run, or record the failure.

No kfp import here (the library boundary): components import this inside their function bodies.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from waferflow.config import atomic_write_json, load_config
from waferflow.gates import GateConfig, GateReport, check_gates

SPLITS = ("train", "val", "test", "unlabeled")


def read_json(folder: str | os.PathLike, name: str = "metrics.json") -> dict:
    """``folder/name`` as a dict (an artifact folder's JSON file)."""
    with open(os.path.join(folder, name), encoding="utf-8") as f:
        return json.load(f)


def data_manifest(data_dir: str | os.PathLike, splits: Mapping[str, str | os.PathLike]) -> dict:
    """The dataset's manifest with each split's own manifest (name, hash, counts) under its name.

    The whole dataset's class counts are left out: they are the splits' sum, shown per split.
    """

    def _manifest(folder):
        p = os.path.join(folder, "data.json")
        return read_json(folder, "data.json") if os.path.exists(p) else None

    manifest = dict(_manifest(data_dir) or {})
    manifest.pop("class_counts", None)
    for name, folder in splits.items():
        m = _manifest(folder)
        if m is not None:
            manifest[name] = m
    return manifest


def log_selected(uri: str, parent_run_id: str, model_dir: str, *, export_dir: str, metrics: Mapping[str, str],
                 artifacts: Mapping[str, str], manifest: dict, run_name: str | None, gates: Mapping[str, Any],
                 train_file: str | os.PathLike, holdout_files: list) -> str:
    """Log the selected candidate as a nested run of ``parent_run_id`` and store its drift reference there.

    Args:
        metrics: ``{"test": metrics.json, "int8": metrics.json, "latency": latency.json}`` paths.
        artifacts: Extra JSON artifacts (``{"candidates": ..., "tensorrt": ...}``).
        manifest: From :func:`data_manifest`.
        gates: GateConfig overrides (the raw-map pyfunc wraps the form the gates deploy).
        train_file, holdout_files: The drift reference's PCA is fitted on the train split; its rows are the
            held-out maps, which the model was not fitted on.

    Returns:
        The candidate run id.
    """
    from waferflow.drift.reference import build_reference
    from waferflow.drift.store import store_reference
    from waferflow.tracking import log_candidate

    run_id = log_candidate(
        uri, parent_run_id, model_dir, metrics["test"], artifacts=dict(artifacts), export_dir=export_dir,
        int8_metrics=metrics["int8"], latency=metrics["latency"], data_manifest=manifest, run_name=run_name,
        serve_form=load_config(GateConfig, overrides=dict(gates)).deployment_form,
    )
    with tempfile.TemporaryDirectory() as tmp:
        ref = build_reference(model_dir, train_file, os.path.join(tmp, "drift_reference"), holdout=holdout_files)
        store_reference(uri, run_id, ref)
    return run_id


def predict_test(model_dir: str | os.PathLike, export_dir: str | os.PathLike | None, form: str, test_ds: Any
                 ) -> tuple[Any, dict, str]:
    """``(logits, metrics, form run)`` of one model on the test maps, in ``form`` (its deployed form): ``torch``
    from ``model_dir``, an ONNX form from ``export_dir``.

    A form whose file is not there (a champion registered before its form was logged) or that this CPU step
    cannot run (TensorRT engines are evaluated by compile-tensorrt on CUDA) is run as ``torch`` instead, and the
    returned form and a printed line say so.

    Raises:
        ModelFormatError: the form's file is there but cannot be loaded.
    """
    from waferflow.evaluation import check_classes, metrics_from_logits
    from waferflow.forms import EXPORT_FORMS
    from waferflow.models import load_model_dir
    from waferflow.predictors import create_predictor, predict_dataset

    if form != "torch" and not (form in EXPORT_FORMS and export_dir is not None
                                and (Path(export_dir) / EXPORT_FORMS[form]).is_file()):
        print(f"[waferflow] {form} is not available to this step for {model_dir}; predicting the test maps in "
              "the torch form instead")
        form = "torch"
    net, spec = load_model_dir(model_dir)
    check_classes(test_ds, spec)
    predict = create_predictor(form, net if form == "torch" else export_dir)
    logits = predict_dataset(predict, test_ds, spec, desc=f"predict test ({form})")
    metrics = metrics_from_logits(test_ds.labels, logits, spec.class_names)
    metrics["form"] = form
    return logits, metrics, form


def _champion_on(uri: str, name: str, test_ds: Any) -> dict | None:
    """The champion's predictions and metrics on the candidate's test maps, in the form it deploys (None when
    there is no champion)."""
    from waferflow.tracking import get_champion

    with tempfile.TemporaryDirectory() as tmp:
        info = get_champion(uri, tmp, name=name)
        if info is None:
            return None
        form = info.tags.get("served_form") or info.tags.get("deployment_form") or "torch"
        logits, champ_metrics, form = predict_test(info.model_dir, info.export_dir, form, test_ds)
    print(f"[waferflow] champion v{info.version} on this test set ({form}): "
          f"accuracy {champ_metrics['overall']['accuracy']:.4f}")
    return {"version": info.version, "metrics": champ_metrics, "predictions": logits.argmax(1)}


def gate_and_register(uri: str, run_id: str, *, parent_run_id: str, model_dir: str, test_file: str | os.PathLike,
                      test_data_hash: str | None, metrics: Mapping[str, str], gates: Mapping[str, Any],
                      name: str, verdicts_dir: str | os.PathLike, export_dir: str | None = None
                      ) -> tuple[GateReport, str]:
    """Judge every gate and register ``run_id`` as a new version whose tags and card carry the verdicts.

    The gates read the form that will be deployed: the candidate predicts the test maps in the gates'
    ``deployment_form`` (from ``export_dir``; e.g. ``onnx_int8`` or ``onnx_fp32_tta``), and accuracy, macro-F1 and
    per-class recall are judged on those predictions; the INT8 drop compares the torch test metrics with INT8's.
    When there is a champion it predicts the same maps in the form it deploys, and "not worse" is a paired test on
    them. ``verdicts_dir`` gets ``gates.json`` (the report with the new ``version``) and ``deployed_metrics.json``.

    Args:
        metrics: ``{"test": metrics.json, "int8": metrics.json, "latency": latency.json}`` paths.
        gates: GateConfig overrides, e.g. ``{"min_accuracy": 0.95}``.
        export_dir: The candidate's export dir (the ONNX forms).

    Returns:
        ``(report, version)``: the gate report and the registered version.
    """
    from waferflow.data.contract import load_dataset
    from waferflow.tracking import register_candidate

    cfg = load_config(GateConfig, overrides=dict(gates))
    test_ds = load_dataset(test_file, require_labels=True)
    logits, deployed, form = predict_test(model_dir, export_dir, cfg.deployment_form, test_ds)
    preds = logits.argmax(1)
    candidate = {"metrics": deployed, "reference_metrics": json.loads(Path(metrics["test"]).read_text()),
                 "int8_metrics": json.loads(Path(metrics["int8"]).read_text()),
                 "latency": json.loads(Path(metrics["latency"]).read_text()),
                 "labels": test_ds.labels, "predictions": preds}
    print(f"[waferflow] the gates read {form} on {len(test_ds)} test maps: accuracy "
          f"{deployed['overall']['accuracy']:.4f}, macro-F1 {deployed['overall']['macro_f1']:.4f}")
    report = check_gates(candidate, cfg, champion=_champion_on(uri, name, test_ds))
    for r in report.results:
        print(f"[waferflow] gate {r.describe()}")
    print(f"[waferflow] gates {report.reason}")
    version = register_candidate(uri, run_id, report, name=name, pipeline_run_id=parent_run_id,
                                 test_data_hash=test_data_hash,
                                 predictions={"labels": test_ds.labels, "predictions": preds})
    result = report.to_dict()
    result["version"], result["gated_form"] = str(version), form
    os.makedirs(verdicts_dir, exist_ok=True)
    atomic_write_json(os.path.join(verdicts_dir, "deployed_metrics.json"), deployed)
    atomic_write_json(os.path.join(verdicts_dir, "gates.json"), result)
    return report, str(version)


def close_pipeline_run(uri: str, experiment: str, pipeline_run: str, state: str, error: str | None = None,
                       task: str | None = None) -> str | None:
    """End this pipeline run's MLflow parent run (found by its ``kfp_run`` tag), FINISHED when ``state`` is
    SUCCEEDED; otherwise record it FAILED with the error and the failing task (creating a FAILED run when the
    failure came before the parent run existed). Returns the failed run's id, or None."""
    from waferflow.tracking import client_for, end_run, record_failed_run

    client = client_for(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string=f"tags.kfp_run = '{pipeline_run}'", max_results=1)
    parent = runs[0].info.run_id if runs else None
    if state == "SUCCEEDED":
        if parent:
            end_run(uri, parent, "FINISHED")
        return None
    err = error or f"pipeline {pipeline_run} ended {state}"
    rid = record_failed_run(uri, parent, error=str(err), stage=task or None, experiment=experiment)
    print(f"[waferflow] recorded the failed pipeline run in MLflow: run {rid} ({state}: {err})")
    return rid
