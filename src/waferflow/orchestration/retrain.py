"""Start the training pipeline that a drift decision asks for: on a Kubeflow host with ``kfp.Client``, or here
through the kfp.local launcher. The ``start_training`` component and ``waferflow drift --retrain`` call this."""

from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

from waferflow.profiles import Profile


def submit_training(host: str, profile: Profile, namespace: str | None = None, run_name: str = "") -> dict:
    """Start the training pipeline for ``profile`` on the Kubeflow Pipelines ``host``.

    Compiles it and calls ``kfp.Client().create_run_from_pipeline_package`` through
    :func:`waferflow.orchestration.cluster.submit` (token from ``$KFP_TOKEN`` or the pod's service account).
    The profile's values (its ``data`` and ``pretrained`` among them) are the run's parameter defaults.

    Args:
        host: KFP API host (in a cluster pod, e.g. ``http://ml-pipeline.kubeflow:8888``).
        profile: A :class:`waferflow.profiles.Profile`.
        namespace: Kubeflow namespace (multi-user installs).
        run_name: Run name (default: ``waferflow-retrain-<time>``).

    Returns:
        ``{"where": "kfp", "host", "run_id", "run_name"}``.
    """
    from waferflow.orchestration.cluster import submit

    name = run_name or time.strftime("waferflow-retrain-%Y%m%d-%H%M%S")
    run_id = submit(host, profile, pipeline="training", run_name=name, namespace=namespace)
    return {"where": "kfp", "host": host, "run_id": run_id, "run_name": name}


def retrain_profile(plan: Mapping[str, Any], profile: str, overrides: Sequence[str],
                    cluster: Mapping[str, Any]) -> Profile:
    """The training profile a retrain plan asks for: ``profile`` with the drift monitor's own cluster options,
    the user's ``key=value`` overrides, and the plan's ``data``, ``pretrained`` and ``unlabeled`` when it names
    them."""
    from waferflow.config import parse_override
    from waferflow.orchestration.sources import RETRAIN_INPUTS
    from waferflow.profiles import get_profile

    ov: dict[str, Any] = {f"cluster.{k}": v for k, v in dict(cluster).items()}
    ov.update(parse_override(item) for item in overrides)
    for key in RETRAIN_INPUTS:
        if plan.get(key):
            ov[key] = plan[key]
    return get_profile(profile, ov)


def submit_retrain(plan: Mapping[str, Any], run_id: str, tracking_uri: str, host: str, *, profile: str,
                   overrides: Sequence[str], cluster: Mapping[str, Any], namespace: str | None = None,
                   out=None) -> dict:
    """Submit a retrain plan to ``host``: its local files are logged as artifacts of the drift run ``run_id`` and
    handed over as ``runs:/`` URIs (the retrain's pods cannot read the drift side's disk). Returns
    :func:`submit_training`'s dict."""
    import sys

    from waferflow.orchestration.sources import publish_retrain_inputs

    plan = publish_retrain_inputs(dict(plan), run_id, tracking_uri)
    print(f"[waferflow] retrain inputs: data={plan.get('data') or '(profile default)'} "
          f"pretrained={plan.get('pretrained') or '(profile default)'} unlabeled={plan.get('unlabeled') or '(none)'}",
          file=out or sys.stdout)
    return submit_training(host, retrain_profile(plan, profile, overrides, cluster), namespace=namespace)


def start_retrain(decision_dir: str | os.PathLike, *, host: str, namespace: str, profile: str,
                  overrides: Sequence[str], cluster: Mapping[str, Any], workdir: str) -> str:
    """Start the training pipeline with ``decision_dir/decision.json``'s retrain plan.

    On a cluster (``host`` given) the retrain's pods cannot read this pod's disk, so the plan's files are handed
    over as MLflow URIs of the drift run's artifacts. Without ``host`` the run goes through kfp.local in
    ``workdir``.

    Returns:
        The KFP run id, or the local run folder.
    """
    with open(os.path.join(decision_dir, "decision.json"), encoding="utf-8") as f:
        d = json.load(f)
    plan = d["retrain_plan"]
    if host:
        from waferflow.orchestration.runtime import tracking_uri as resolve_uri

        res = submit_retrain(plan, d["mlflow_run_id"], resolve_uri(d.get("tracking_uri", "")), host,
                             profile=profile, overrides=overrides, cluster=cluster, namespace=namespace or None)
        print(f"[waferflow] retrain submitted to {host}: run {res['run_id']}")
        return str(res["run_id"])
    prof = retrain_profile(plan, profile, overrides, cluster)
    from waferflow.orchestration.local import run_local

    res = run_local(prof, workdir=workdir or "waferflow_runs")
    print(f"[waferflow] retrain ran through kfp.local: {res.run_dir}; champion {res.champion}")
    return str(res.run_dir)
