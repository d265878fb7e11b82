"""The whole drift check as one call: read the batch, find the champion and its reference, judge, log, retrain.

Every input is checked before anything is launched: an empty batch, an unknown die coding or a missing reference
raise a :class:`~waferflow.errors.WaferflowError` and the launcher is never called.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from waferflow.config import atomic_write_json
from waferflow.drift.config import DriftConfig
from waferflow.drift.detect import judge_drift
from waferflow.drift.features import check_batch
from waferflow.drift.reference import REFERENCE_DIRNAME, load_reference
from waferflow.drift.retrain import RetrainPlan, load_batch, plan_retrain
from waferflow.errors import ConfigError

log = logging.getLogger(__name__)

#: ``launcher(plan) -> dict`` starts the training pipeline (kfp.local or kfp.Client) and says what it started.
Launcher = Callable[[RetrainPlan], dict]


def _load_model(model: str | None, tracking_uri: str, workdir: Path, registered_model_name: str):
    """(model, spec, model ref string, default reference dir or None)."""
    from waferflow.models import load_model_dir

    if model and not model.startswith("models:/"):
        m, spec = load_model_dir(model)
        return m, spec, str(model), Path(model) / REFERENCE_DIRNAME
    name = registered_model_name
    if model:
        body = model[len("models:/"):]
        if "@" not in body or body.split("@", 1)[1] != "champion":
            raise ConfigError(f"--model {model}: drift is judged against the champion; use models:/NAME@champion "
                              "or a model directory")
        name = body.split("@", 1)[0]
    from waferflow.drift.store import resolve_champion

    ch = resolve_champion(tracking_uri, workdir / "champion", name=name)
    m, spec = load_model_dir(ch.model_dir)
    return m, spec, f"{ch.uri} (v{ch.version})", ch.reference_dir


def run_drift_check(current: str | os.PathLike, out_dir: str | os.PathLike, *, model: str | None = None,
                reference: str | os.PathLike | None = None, cfg: DriftConfig | None = None,
                tracking_uri: str | None = None, workdir: str | os.PathLike = "waferflow_runs",
                registered_model_name: str = "wafer-defect-classifier", retrain: bool = False,
                launcher: Launcher | None = None, train_data: str | os.PathLike | None = None,
                log_to_mlflow: bool = True, prepare_retrain: bool = False) -> dict[str, Any]:
    """Check a batch of new maps for drift against the champion; on drift (and ``retrain``), start a retrain.

    Args:
        current: New maps (``.npz`` labeled or not, or ``LSWMD.pkl``).
        out_dir: Output folder (report.html, report.json, decision.json, to_label.csv, retrain inputs).
        model: A model dir or ``models:/NAME@champion``; None = the registry's champion.
        reference: The reference folder; None = the one stored with the model.
        cfg: Thresholds.
        tracking_uri: MLflow URI (None: ``$MLFLOW_TRACKING_URI``, else the embedded store in ``workdir``).
        workdir: Folder for the embedded store and the downloaded champion.
        registered_model_name: Registered model whose champion is used.
        retrain: Start the training pipeline when drift is found.
        launcher: Starts the pipeline (required with ``retrain``).
        train_data: Base training data that labeled new maps join.
        log_to_mlflow: Log the decision as an MLflow run.
        prepare_retrain: On drift, write the retrain's inputs (``retrain_plan`` in the decision) without
            launching anything (the drift-monitor pipeline launches in its next task).

    Returns:
        The decision (also ``out_dir/decision.json``), with ``retrain`` filled when one was started.
    """
    from waferflow.tracking import resolve_tracking_uri

    cfg = cfg or DriftConfig()
    if retrain and launcher is None:
        raise ConfigError("retrain=True needs a launcher (kfp.local or a kfp.Client host)")
    wd = Path(workdir).expanduser().resolve()
    batch = load_batch(current)
    maps = batch.all_maps
    check_batch(maps, what=f"batch {current}")
    uri = resolve_tracking_uri(tracking_uri, wd)
    net, spec, model_ref, default_ref = _load_model(model, uri, wd, registered_model_name)
    ref_path = reference or default_ref
    if ref_path is None:
        from waferflow.errors import DataError

        raise DataError(f"the champion {model_ref} has no drift reference stored with it; build it with "
                        "`waferflow drift-reference --model DIR --data TRAIN.npz` or pass --reference DIR")
    ref = load_reference(ref_path)
    n_lab = len(batch.labeled) if batch.labeled is not None else 0
    n_unl = len(batch.unlabeled) if batch.unlabeled is not None else 0
    # all_maps puts the labeled maps first, then the unlabeled ones
    decision = judge_drift(net, spec, ref, maps, out_dir, cfg, current_source=str(current),
                           unlabeled_index=np.arange(n_lab, n_lab + n_unl))
    decision["model"] = model_ref
    if log_to_mlflow:
        decision["mlflow_run_id"] = _log(decision, out_dir, uri)
        decision["tracking_uri"] = uri
    if (retrain or prepare_retrain) and decision["drift_detected"]:
        plan = plan_retrain(batch, net, spec, out_dir, train_data=train_data)
        plan.drift_run, plan.tracking_uri = decision.get("mlflow_run_id", ""), uri
        decision["retrain_plan"] = {"data": plan.data, "pretrained": plan.pretrained, "unlabeled": plan.unlabeled,
                                    "notes": plan.notes}
        if retrain:
            atomic_write_json(Path(out_dir) / "decision.json", decision)
            try:
                started = launcher(plan)
            except Exception as e:
                decision["retrain"] = {"started": True, "failed": f"{type(e).__name__}: {e}"}
                atomic_write_json(Path(out_dir) / "decision.json", decision)
                raise
            decision["retrain"] = {"started": True, **started}
    elif retrain:
        decision["retrain"] = {"started": False, "why": "no drift"}
    atomic_write_json(Path(out_dir) / "decision.json", decision)
    return decision


def _log(decision: dict, out_dir, uri: str) -> str:
    from waferflow.drift.store import log_decision

    return log_decision(decision, out_dir, uri)
