"""Drift stage: check new maps against the champion's reference (``waferflow.drift.check.run_drift_check``) and write
the evidently report as an ``HTML`` artifact, the scores as ``Metrics``, and the decision folder (decision.json,
to_label.csv, retrain inputs). ``start_training`` (its own file) starts the retrain on drift.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Metrics, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def check_drift(
    current: str,
    model: str,
    share_threshold: float,
    feature_threshold: float,
    embedding_threshold: float,
    prediction_threshold: float,
    train_data: str,
    tracking_uri: str,
    registered_model_name: str,
    report: Output[HTML],
    metrics: Output[Metrics],
    decision: Output[Artifact],
) -> NamedTuple("DriftResult", [("drift_detected", bool), ("share", float), ("embedding_score", float)]):
    """Check ``current`` (path of new maps) against the champion (``model`` = "" ) or a model dir / URI.

    Args:
        current: New maps (.npz or LSWMD.pkl): ``s3://BUCKET/KEY``, ``runs:/RUN_ID/PATH``, or a path the pod can
            read (under the PVC of ``cluster.data_pvc`` on a cluster).
        model: "" for the registry's champion, else a model dir or ``models:/NAME@champion``.
        share_threshold, feature_threshold, embedding_threshold, prediction_threshold: See DriftConfig.
        train_data: Base training data that labeled new maps join ("" = the new maps alone); same forms as
            ``current``.
        tracking_uri: MLflow URI ("" = ``$MLFLOW_TRACKING_URI`` from the Secret / launcher).
        registered_model_name: Registered model whose champion is used.
    """
    import os
    import shutil
    import tempfile
    from collections import namedtuple
    from pathlib import Path

    from waferflow.config import atomic_write_json
    from waferflow.drift.check import run_drift_check
    from waferflow.drift.config import DriftConfig
    from waferflow.orchestration.runtime import persist_metadata, stage, tracking_uri as resolve_uri, versions
    from waferflow.orchestration.sources import fetch_source

    with stage("drift_check", current=current) as rec:
        uri = resolve_uri(tracking_uri)
        cfg = DriftConfig(share_threshold=share_threshold, feature_threshold=feature_threshold,
                          embedding_threshold=embedding_threshold, prediction_threshold=prediction_threshold)
        work = tempfile.mkdtemp(prefix="waferflow-drift-")  # downloads and the champion; gone when done
        try:
            local_current = fetch_source(current, os.path.join(work, "current"), tracking_uri=uri)
            local_train = str(fetch_source(train_data, os.path.join(work, "train"), tracking_uri=uri)) \
                if train_data else None
            os.makedirs(decision.path, exist_ok=True)
            d = run_drift_check(local_current, decision.path, model=model or None, cfg=cfg, tracking_uri=uri,
                            workdir=work, registered_model_name=registered_model_name,
                            train_data=local_train, prepare_retrain=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        plan = d.get("retrain_plan")
        if plan and local_train and plan.get("data") == str(Path(local_train).resolve()):
            plan["data"] = train_data  # the base data unchanged: hand over its own URI, not this pod's copy
            atomic_write_json(os.path.join(decision.path, "decision.json"), d)
        shutil.copyfile(d["report_html"], report.path)
        for k in ("share", "embedding_score", "prediction_js", "n_current", "to_label"):
            metrics.log_metric(k, float(d[k]))
        metrics.log_metric("drift_detected", float(d["drift_detected"]))
        persist_metadata(metrics)
        decision.metadata.update({"drift_detected": d["drift_detected"], "reasons": d["reasons"],
                                  "model": d.get("model"), "versions": versions()})
        rec.update(drift_detected=d["drift_detected"], share=d["share"], embedding_score=d["embedding_score"])
        print(f"[waferflow] drift_check: drift_detected={d['drift_detected']}; " + "; ".join(d["reasons"]))
    out = namedtuple("DriftResult", ["drift_detected", "share", "embedding_score"])
    return out(bool(d["drift_detected"]), float(d["share"]), float(d["embedding_score"]))
