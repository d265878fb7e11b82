"""Source models in the registry: registered once under ``wafer-source-<taxonomy>``, found again by their recipe.

A version carries the tag ``waferflow.source_recipe`` (the hash of :func:`waferflow.train.source.recipe`) and the
recipe itself as ``waferflow.source_recipe_json``. A later run with the same recipe, whatever its data, finds that
version and starts from ``models:/wafer-source-<taxonomy>/<version>`` instead of pretraining again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from waferflow.tracking.audit import ensure_registered_model
from waferflow.tracking.client import RetryingClient, RetryPolicy
from waferflow.tracking.runs import ensure_experiment, log_params, log_path, flatten

RECIPE_TAG = "waferflow.source_recipe"
SOURCE_EXPERIMENT = "waferflow-source"
ARTIFACT_PATH = "source_model"


def source_model_name(taxonomy: str) -> str:
    """The registered model of the source models of ``taxonomy`` (``wafer-source-wm811k``)."""
    return f"wafer-source-{taxonomy}"


def find_source(tracking_uri: str, name: str, key: str, retry: RetryPolicy | None = None) -> str | None:
    """``models:/NAME/VERSION`` of the newest ready version registered with recipe ``key``, else None."""
    c = RetryingClient(tracking_uri, retry)
    found = c.call("search source model versions", c.raw.search_model_versions, f"name='{name}'")
    ready = [v for v in found if v.tags.get(RECIPE_TAG) == key and str(v.status).upper() == "READY"]
    if not ready:
        return None
    return f"models:/{name}/{max(int(v.version) for v in ready)}"


def register_source(tracking_uri: str, name: str, model_dir: str | Path, rec: Mapping[str, Any], key: str,
                    summary: Mapping[str, Any] | None = None, retry: RetryPolicy | None = None) -> str:
    """Log ``model_dir`` in a run of the ``waferflow-source`` experiment and register it as a version of ``name``.

    Returns:
        ``models:/NAME/VERSION``.
    """
    c = RetryingClient(tracking_uri, retry)
    exp = ensure_experiment(tracking_uri, SOURCE_EXPERIMENT, retry)
    run = c.call("create source run", c.raw.create_run, exp, run_name=f"{name}-{key}",
                 tags={RECIPE_TAG: key, "waferflow.kind": "source_model"})
    rid = run.info.run_id
    try:
        log_params(c, rid, flatten(dict(rec)))
        for k, v in (summary or {}).items():
            if isinstance(v, (int, float)):
                c.call("log source metric", c.raw.log_metric, rid, k, float(v))
        log_path(c, rid, Path(model_dir), ARTIFACT_PATH)
    except Exception:
        c.raw.set_terminated(rid, "FAILED")
        raise
    c.call("finish source run", c.raw.set_terminated, rid, "FINISHED")
    ensure_registered_model(c, name, description="Synthetic-map source models (ImageNet -> synthetic) that "
                            "waferflow fine-tunes from; each version's tags hold its recipe.")
    tags = {RECIPE_TAG: key, "waferflow.source_recipe_json": json.dumps(dict(rec), sort_keys=True, default=str)}
    mv = c.call("register source model", c.raw.create_model_version, name,
                source=f"{run.info.artifact_uri}/{ARTIFACT_PATH}", run_id=rid, tags=tags)
    return f"models:/{name}/{mv.version}"
