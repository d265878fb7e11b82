"""Drift stage: check new maps against the champion's reference; start the training pipeline on drift.

Two thin components and one helper:
- ``check_drift``: runs ``waferflow.drift.check.drift_check`` and writes the evidently report as an ``HTML``
  artifact, the scores as ``Metrics``, and the decision folder (decision.json, to_label.csv, retrain inputs).
- ``start_training``: starts the training pipeline from the decision's retrain plan: ``kfp.Client`` on a cluster
  (``host`` given; in-cluster service-account credentials), or the kfp.local launcher (``host`` empty).
- ``submit_training(host, profile)``: compile the training pipeline for a profile and create a run with
  ``kfp.Client().create_run_from_pipeline_package`` (also used by ``waferflow drift --retrain --host``).
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Input, Metrics, Output

from waferflow.components._images import CPU_IMAGE


def submit_training(host: str, profile, namespace=None, run_name: str = "") -> dict:
    """Start the training pipeline for ``profile`` on the Kubeflow Pipelines ``host``.

    Compiles it and calls ``kfp.Client().create_run_from_pipeline_package`` through
    ``waferflow.orchestration.cluster.submit`` (token from ``$KFP_TOKEN`` or the pod's service account).
    The profile's values (its ``data`` and ``pretrained`` among them) are the run's parameter defaults.

    Args:
        host: KFP API host (in a cluster pod, e.g. ``http://ml-pipeline.kubeflow:8888``).
        profile: A :class:`waferflow.profiles.Profile`.
        namespace: Kubeflow namespace (multi-user installs).
        run_name: Run name (default: ``waferflow-retrain-<time>``).

    Returns:
        ``{"where": "kfp", "host", "run_id", "run_name"}``.
    """
    import time

    from waferflow.orchestration.cluster import submit

    name = run_name or time.strftime("waferflow-retrain-%Y%m%d-%H%M%S")
    run_id = submit(host, profile, pipeline="training", run_name=name, namespace=namespace)
    return {"where": "kfp", "host": host, "run_id": run_id, "run_name": name}


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
    from waferflow.drift.check import drift_check
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
            d = drift_check(local_current, decision.path, model=model or None, cfg=cfg, tracking_uri=uri,
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


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def start_training(
    decision: Input[Artifact],
    host: str,
    namespace: str,
    profile: str,
    overrides: list,
    cluster: dict,
    workdir: str,
) -> str:
    """Start the training pipeline with the decision's retrain plan; return the run id (or local run dir).

    Args:
        decision: The ``check_drift`` decision folder (``decision.json`` with ``retrain_plan``).
        host: KFP host ("" = run it here through kfp.local).
        namespace: Kubeflow namespace ("" = default).
        profile: Training profile name.
        overrides: Profile overrides (``["key=value", ...]``).
        cluster: The drift monitor's own cluster options (image registry, Secret, GPU pool, namespace, service
            account): the training run it starts is compiled with them.
        workdir: kfp.local workdir (local only).
    """
    import json
    import os

    from waferflow.components.drift_check import submit_training
    from waferflow.profiles import get_profile

    with open(os.path.join(decision.path, "decision.json"), encoding="utf-8") as f:
        d = json.load(f)
    plan = d["retrain_plan"]
    if host:
        # The retrain's pods cannot read this pod's disk: hand them MLflow URIs of the drift run's artifacts.
        from waferflow.orchestration.runtime import tracking_uri as resolve_uri
        from waferflow.orchestration.sources import publish_retrain_inputs

        plan = publish_retrain_inputs(plan, d["mlflow_run_id"], resolve_uri(d.get("tracking_uri", "")))
        print(f"[waferflow] retrain inputs: data={plan.get('data') or '(profile default)'} "
              f"pretrained={plan.get('pretrained') or '(profile default)'}")
    from waferflow.config import parse_override

    ov = {f"cluster.{k}": v for k, v in dict(cluster).items()}
    ov.update(parse_override(item) for item in overrides)
    if plan.get("data"):
        ov["data"] = plan["data"]
    if plan.get("pretrained"):
        ov["pretrained"] = plan["pretrained"]
    prof = get_profile(profile, ov)
    if host:
        res = submit_training(host, prof, namespace=namespace or None)
        print(f"[waferflow] retrain submitted to {host}: run {res['run_id']}")
        return str(res["run_id"])
    from waferflow.orchestration.local import run_local

    res = run_local(prof, workdir=workdir or "waferflow_runs")
    print(f"[waferflow] retrain ran through kfp.local: {res.run_dir}; champion {res.champion}")
    return str(res.run_dir)
