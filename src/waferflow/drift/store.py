"""Drift and the MLflow registry: the champion and its reference, and the decision log.

The reference is stored with the model version as the run artifact ``drift_reference/`` of the version's run
(:func:`store_reference`); :func:`resolve_champion` downloads the champion with it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waferflow.drift.reference import REFERENCE_DIRNAME
from waferflow.errors import RegistryError

DRIFT_EXPERIMENT = "waferflow-drift"


@dataclass(frozen=True)
class ChampionRef:
    """Where the champion's files are: the model dir, its reference folder (None = not stored), version, run."""

    model_dir: Path
    reference_dir: Path | None
    version: str | None
    run_id: str | None
    uri: str


def resolve_champion(tracking_uri: str, dest_dir: str | os.PathLike,
                     name: str = "wafer-defect-classifier") -> ChampionRef:
    """Download the champion of ``name`` and its stored drift reference.

    Raises:
        RegistryError: no champion (say how to make one).
    """
    from mlflow.exceptions import MlflowException

    from waferflow.tracking import download_run_artifacts, get_champion

    info = get_champion(tracking_uri, dest_dir, name=name)
    if info is None:
        raise RegistryError(
            f"registered model {name!r} has no champion in {tracking_uri}; train one with `waferflow run` "
            "(or pass --model DIR), then check drift"
        )
    ref_dir: Path | None = info.model_dir / REFERENCE_DIRNAME
    if not ref_dir.is_dir():
        ref_dir = info.model_dir.parent / REFERENCE_DIRNAME
        try:
            download_run_artifacts(tracking_uri, info.run_id, REFERENCE_DIRNAME, ref_dir)
        except (RegistryError, MlflowException, OSError):
            ref_dir = None
    return ChampionRef(info.model_dir, ref_dir, info.version, info.run_id, f"models:/{name}@champion")


def store_reference(tracking_uri: str, run_id: str, reference_dir: str | os.PathLike) -> None:
    """Log ``reference_dir`` as the ``drift_reference/`` artifact of the model version's run."""
    from waferflow.tracking import client_for

    client_for(tracking_uri).log_artifacts(run_id, str(reference_dir), artifact_path=REFERENCE_DIRNAME)


def log_decision(decision: dict[str, Any], out_dir: str | os.PathLike, tracking_uri: str,
                 experiment: str = DRIFT_EXPERIMENT) -> str:
    """Log a drift decision (thresholds, scores, the report files) as an MLflow run; return its run id."""
    import json

    from waferflow.tracking import client_for, ensure_experiment

    c = client_for(tracking_uri)
    exp = ensure_experiment(tracking_uri, experiment)
    run = c.create_run(exp, tags={"waferflow.kind": "drift-check",
                                  "drift_detected": str(decision["drift_detected"]).lower(),
                                  "reference_model": str(decision.get("reference_model")),
                                  "current": str(decision.get("current"))})
    rid = run.info.run_id
    try:
        for k, v in decision["thresholds"].items():
            c.log_param(rid, f"threshold.{k}", v)
        for k in ("share", "embedding_score", "prediction_js", "n_current", "to_label", "seconds"):
            c.log_metric(rid, k, float(decision[k]))
        c.log_metric(rid, "drift_detected", float(decision["drift_detected"]))
        for f, v in decision["feature_scores"].items():
            c.log_metric(rid, f"feature.{f}", float(v))
        c.set_tag(rid, "reasons", json.dumps(decision["reasons"])[:5000])
        out = Path(out_dir)
        for f in ("report.html", "report.json", "decision.json", "to_label.csv"):
            if (out / f).is_file():
                c.log_artifact(rid, str(out / f), artifact_path="drift")
        c.set_terminated(rid, "FINISHED")
    except Exception:
        c.set_terminated(rid, "FAILED")
        raise
    return rid
