"""The read side of the registry: the champion (downloaded for re-evaluation), versions and one version's card."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from waferflow.errors import RegistryError
from waferflow.forms import EXPORT_FORMS
from waferflow.tracking.artifacts import (EXPORT_ARTIFACT, INFO_DIR, MODEL_DIR_ARTIFACT, TAG_LOGGED_MODEL,
                                          download_logged_onnx, download_run_artifacts, read_run_jsons)
from waferflow.tracking.audit import CHAMPION, DEFAULT_MODEL_NAME, alias_version, existing_version_tags, summary_metrics
from waferflow.tracking.client import RetryingClient, RetryPolicy


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion, downloaded: ``model_dir`` (model.json, weights.pt, ...) and ``export_dir``."""

    version: str
    run_id: str | None
    tags: dict[str, str]
    model_dir: Path
    export_dir: Path
    metrics: dict = field(default_factory=dict)


def champion_version(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                     ) -> str | None:
    """The version ``champion`` points to, or None (no champion, or no registered model yet). Downloads nothing."""
    from mlflow.exceptions import MlflowException

    try:
        return alias_version(RetryingClient(tracking_uri, retry), name, CHAMPION)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def list_versions(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                  ) -> list[dict]:
    """Every version (newest first): version, aliases, created, strategy, backbone, gates, key metrics."""
    c = RetryingClient(tracking_uri, retry)
    rm = c.call("read registered model", c.raw.get_registered_model, name)
    aliases: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(a)
    mvs = c.call("search versions", c.raw.search_model_versions, f"name='{name}'")
    out = []
    for mv in sorted(mvs, key=lambda m: int(m.version), reverse=True):
        t = mv.tags
        out.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(
                        timespec="seconds"),
                    "strategy": t.get("strategy"), "backbone": t.get("backbone"),
                    "gates_passed": t.get("gates.passed"), "violations": t.get("gates.violations"),
                    "metrics": summary_metrics(t), "run_id": mv.run_id})
    return out


def show_version(tracking_uri: str, version: str, *, name: str = DEFAULT_MODEL_NAME,
                 retry: RetryPolicy | None = None) -> dict:
    """One version: tags, aliases, gate results and the model card (description)."""
    c = RetryingClient(tracking_uri, retry)
    tags = existing_version_tags(c, name, str(version))
    mv = c.raw.get_model_version(name, str(version))
    rm = c.raw.get_registered_model(name)
    report = json.loads(tags["gates.report"]) if "gates.report" in tags else None
    return {"version": str(version), "aliases": sorted(a for a, v in (rm.aliases or {}).items()
                                                         if str(v) == str(version)),
            "tags": tags, "gates": report, "model_card": mv.description or "", "source": mv.source,
            "run_id": mv.run_id}


def get_champion(tracking_uri: str, dest_dir: str | os.PathLike, *, name: str = DEFAULT_MODEL_NAME,
                 retry: RetryPolicy | None = None) -> ChampionInfo | None:
    """Download the current champion so the caller can re-evaluate it on the same test set.

    Writes ``<dest_dir>/v<version>/model_dir`` (model.json, weights.pt, config.yaml, history.json) and
    ``<dest_dir>/v<version>/export`` (every logged ONNX form: model.onnx, model.int8.onnx, model.tta.onnx, ...;
    export.json, latency.json), atomically (temp folder, then rename).

    Returns:
        :class:`ChampionInfo`, or None when ``name`` has no champion (or does not exist yet).
    """
    return get_version(tracking_uri, dest_dir, CHAMPION, name=name, retry=retry)


def get_version(tracking_uri: str, dest_dir: str | os.PathLike, ref: str, *, name: str = DEFAULT_MODEL_NAME,
                retry: RetryPolicy | None = None) -> ChampionInfo | None:
    """Download version ``ref`` of ``name`` (an alias such as ``champion``, or a version number) like
    :func:`get_champion`. Returns None when the model or the alias does not exist; an unknown version number is an
    ``MlflowException`` (RESOURCE_DOES_NOT_EXIST)."""
    from mlflow.exceptions import MlflowException

    c = RetryingClient(tracking_uri, retry)
    try:
        c.call("read registered model", c.raw.get_registered_model, name)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = str(ref) if str(ref).isdigit() else alias_version(c, name, str(ref))
    if version is None:
        return None
    mv = c.call(f"read version {version}", c.raw.get_model_version, name, version)
    dest_root = Path(dest_dir)
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / f"v{version}"
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=dest_root))
    try:
        _download_champion(c, mv.run_id, tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rel = f"{INFO_DIR}/metrics.json"
    metrics = read_run_jsons(c, mv.run_id, [rel])[rel] or {}
    return ChampionInfo(version, mv.run_id, dict(mv.tags), final / "model_dir", final / "export", metrics)


def _download_champion(c: RetryingClient, run_id: str, tmp: Path) -> None:
    """The champion run's model dir and export dir (with its logged ONNX models) into ``tmp``."""
    from mlflow.exceptions import MlflowException

    download_run_artifacts(c.uri, run_id, MODEL_DIR_ARTIFACT, tmp / "model_dir", c.retry)
    export = tmp / "export"
    with contextlib.suppress(RegistryError, MlflowException):
        download_run_artifacts(c.uri, run_id, EXPORT_ARTIFACT, export, c.retry)
    export.mkdir(exist_ok=True)
    run = c.call("read champion run", c.raw.get_run, run_id)
    for form, fname in EXPORT_FORMS.items():
        mid = run.data.tags.get(TAG_LOGGED_MODEL + form)
        if mid:
            download_logged_onnx(c, mid, export / fname)
