"""Model registry: versions with a model card, gate tags, aliases, guarded promotion and an audit trail.

Design (see docs/REGISTRY.md):

* Aliases only: ``challenger`` is the newest registered candidate; ``champion`` moves only when every gate passed
  (or a person overrides with a reason).
* Audit trail: one registered-model tag per entry, key ``audit.<utc ns, 20 digits>.<random>``, value a JSON
  object. Each writer adds its own key, so concurrent writers never read-modify-write a shared value and cannot
  lose each other's entries; sorting keys gives time order.
* Promotion lock: a fenced lock in :mod:`waferflow.tracking.lock` (epochs of ``<name>.promotion-lock.<n>``, a
  token per holder, leases judged on the registry server's clock). Every alias move under the lock checks the
  token first, so a holder whose lock was broken stops before it moves ``champion``.
* Order of a promotion: tags, card and audit *intent* first; the alias move is the last and single step that
  changes ``champion``; then the audit entry is marked *applied*. A failure before or during the move leaves
  ``champion`` where it was.
* Under the lock the current champion is re-read; when it moved since the gates were evaluated, the candidate is
  compared with the new champion (same test-set hash required) and refused when worse.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from waferflow.errors import RegistryError
from waferflow.gates import GateConfig, GateReport, gate_vs_champion
from waferflow.tracking.card import build_model_card, weights_provenance
from waferflow.tracking.lock import LockHandle, promotion_lock
from waferflow.tracking.retry import RetryPolicy, with_retries
from waferflow.tracking.runs import (EXPORT_ARTIFACT, INFO_DIR, MODEL_DIR_ARTIFACT, TAG_LOGGED_MODEL, TAG_PYFUNC_FORM,
                                     _fluent, client_for, download_run_artifacts)

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "wafer-defect-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."
PREDICTIONS_FILE = "test_predictions.json"
CONFIG_ARTIFACT = "config/resolved_config.json"  # the candidate's training config, as log_candidate logs it


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion attempt did."""

    promoted: bool
    version: str
    old_champion: str | None
    new_champion: str | None
    reason: str
    audit_key: str | None = None


@dataclass(frozen=True)
class ChampionInfo:
    """The current champion, downloaded: ``model_dir`` (model.json, weights.pt, ...) and ``export_dir``."""

    version: str
    run_id: str | None
    tags: dict[str, str]
    model_dir: Path
    export_dir: Path
    metrics: dict = field(default_factory=dict)


def default_actor() -> str:
    """``$USER`` (or the login name), else ``"unknown"``."""
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        with contextlib.suppress(Exception):
            user = getpass.getuser()
    return user or "unknown"


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _r(uri: str, what: str, fn: Callable[[], Any], retry: RetryPolicy | None) -> Any:
    return with_retries(fn, what=what, uri=uri, policy=retry)


def _ensure_registered_model(c, uri: str, name: str, retry) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _r(uri, "create registered model", lambda: c.create_registered_model(
            name, description="Wafer-map defect classifier. Versions carry a model card and gate tags; "
            "see the `champion` and `challenger` aliases."), retry)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _alias_version(c, uri: str, name: str, alias: str, retry) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        mv = _r(uri, f"read alias {alias}", lambda: c.get_model_version_by_alias(name, alias), retry)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return str(mv.version)


def _summary_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    out = {}
    for k, v in tags.items():
        if k.startswith("metric."):
            with contextlib.suppress(ValueError):
                out[k[len("metric."):]] = float(v)
    return out


# ---------------------------------------------------------------- audit trail
def _audit(c, uri: str, name: str, entry: Mapping[str, Any], retry, key: str | None = None) -> str:
    key = key or f"{AUDIT_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
    value = json.dumps(dict(entry), sort_keys=True, default=str)
    _r(uri, "write audit entry", lambda: c.set_registered_model_tag(name, key, value), retry)
    return key


def audit_history(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                  ) -> list[dict]:
    """Every audit entry of ``name``, oldest first (each dict has ``key`` added).

    Entry fields: ``ts``, ``action`` (register, challenger, promote, manual_promote, rollback, reject),
    ``alias``, ``old_version``, ``new_version``, ``actor``, ``reason``, ``metrics``, ``status``
    (applied / intent / failed / decision).
    """
    c = client_for(tracking_uri)
    rm = _r(tracking_uri, "read registered model", lambda: c.get_registered_model(name), retry)
    out = []
    for k in sorted(k for k in rm.tags if k.startswith(AUDIT_PREFIX)):
        try:
            e = json.loads(rm.tags[k])
        except json.JSONDecodeError:
            e = {"action": "unreadable", "raw": rm.tags[k]}
        e["key"] = k
        out.append(e)
    return out


def record_pipeline_failure(tracking_uri: str, name: str, *, run_id: str, error: str, stage: str | None = None,
                            pipeline_run: str | None = None, state: str | None = None,
                            retry: RetryPolicy | None = None) -> str:
    """Write a ``pipeline_failed`` decision into ``name``'s audit trail (no alias changes). Returns its key."""
    c = client_for(tracking_uri)
    _ensure_registered_model(c, tracking_uri, name, retry)
    cur = _alias_version(c, tracking_uri, name, CHAMPION, retry)
    return _audit(c, tracking_uri, name, {
        "ts": _now_iso(), "action": "pipeline_failed", "alias": None, "old_version": cur, "new_version": None,
        "actor": f"pipeline {pipeline_run or run_id}", "status": "decision", "metrics": {},
        "reason": f"{state or 'FAILED'} at stage {stage or 'unknown'}: {error[:500]} (run {run_id}); champion "
                  "unchanged"}, retry)


def _as_report(gate_report: GateReport | Mapping[str, Any]) -> GateReport:
    if isinstance(gate_report, GateReport):
        return gate_report
    if isinstance(gate_report, Mapping) and "results" in gate_report:
        return GateReport.from_dict(gate_report)
    raise RegistryError("gate_report must be a waferflow.gates.GateReport (or its to_dict()); "
                        "get one from waferflow.gates.check_gates")


# ---------------------------------------------------------------- registration
def _test_hash(manifest: Mapping | None) -> str | None:
    if not manifest:
        return None
    if isinstance(manifest.get("test"), Mapping) and manifest["test"].get("content_sha256"):
        return str(manifest["test"]["content_sha256"])
    return str(manifest["content_sha256"]) if manifest.get("content_sha256") else None


def _read_run_jsons(uri: str, run_id: str, rels: list[str], retry) -> dict[str, dict | None]:
    """JSON artifacts of a run by relative path (None where the run has no such file); each folder is listed
    once, whatever the number of files read from it."""
    c = client_for(uri)
    present: set[str] = set()
    for folder in sorted({rel.rpartition("/")[0] for rel in rels}):
        listing = _r(uri, f"list {folder or 'artifacts'}", lambda: c.list_artifacts(run_id, folder or None), retry)
        present.update(f.path for f in listing)
    out: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory() as td:
        for rel in rels:
            if rel not in present:
                out[rel] = None
                continue
            local = _r(uri, f"download {rel}", lambda: c.download_artifacts(run_id, rel, td), retry)
            out[rel] = json.loads(Path(local).read_text())
    return out


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
    gate_report = _as_report(gate_report)
    c = client_for(tracking_uri)
    run = _r(tracking_uri, "read candidate run", lambda: c.get_run(run_id), retry)
    rtags = run.data.tags
    form = gate_report.config.deployment_form
    # a deployment form that was not logged (no INT8 export, TensorRT) is served as FP32; the tag says so
    served = form if rtags.get(TAG_LOGGED_MODEL + form) else "onnx_fp32"
    model_id = rtags.get(TAG_LOGGED_MODEL + served)
    pyfunc_id = rtags.get(TAG_LOGGED_MODEL + "pyfunc") if rtags.get(TAG_PYFUNC_FORM) == served else None
    if not model_id:
        raise RegistryError(f"run {run_id} has no logged ONNX model; call log_candidate with an export dir "
                            "(log_models=True) before register_candidate")
    info = _read_run_jsons(tracking_uri, run_id, [f"{INFO_DIR}/{f}" for f in (
        "model.json", "metrics.json", "int8_metrics.json", "latency.json", "data_manifest.json",
        "self_training.json")] + [CONFIG_ARTIFACT], retry)
    spec = info[f"{INFO_DIR}/model.json"] or {}
    metrics = info[f"{INFO_DIR}/metrics.json"] or {}
    manifest = info[f"{INFO_DIR}/data_manifest.json"]
    if predictions is not None:
        _r(tracking_uri, "log test predictions", lambda: c.log_dict(run_id, {
            "labels": [int(x) for x in predictions["labels"]], "predictions": [int(x) for x in predictions["predictions"]],
            "test_data_hash": test_data_hash or _test_hash(manifest)}, f"{INFO_DIR}/{PREDICTIONS_FILE}"), retry)
    if pyfunc_id is None:  # logged around another form (or before pyfuncs were logged): wrap the served one now
        pyfunc_id = _r(tracking_uri, "log raw-map pyfunc",
                       lambda: _log_raw_map_model(tracking_uri, run_id, model_id, spec), retry)
    pipeline_run_id = pipeline_run_id or rtags.get("mlflow.parentRunId")
    git = rtags.get("git_commit", "unknown")
    card = build_model_card(name=name, spec=spec, metrics=metrics, gate_report=gate_report,
                            int8_metrics=info[f"{INFO_DIR}/int8_metrics.json"], latency=info[f"{INFO_DIR}/latency.json"],
                            manifest=manifest, run_id=run_id, pipeline_run_id=pipeline_run_id, git_commit=git,
                            config=info[CONFIG_ARTIFACT], self_training=info[f"{INFO_DIR}/self_training.json"],
                            serving={"Registered model (raw maps -> class names)": f"models:/{pyfunc_id}",
                                     f"ONNX form inside it ({served})": f"models:/{model_id}"})
    tags = _version_tags_for(spec, rtags, manifest, gate_report, metrics, run_id, pipeline_run_id, git,
                             test_data_hash)
    tags["served_form"] = served
    _ensure_registered_model(c, tracking_uri, name, retry)
    def create():
        # the sqlalchemy registry resolves ``models:/<id>`` through the *global* tracking URI
        with _fluent(tracking_uri):
            return c.create_model_version(name, source=f"models:/{pyfunc_id}", run_id=run_id, tags=tags,
                                          description=card, model_id=pyfunc_id)
    mv = _r(tracking_uri, "create model version", create, retry)
    version = str(mv.version)
    summary = _summary_metrics(tags)
    _audit(c, tracking_uri, name, {"ts": _now_iso(), "action": "register", "alias": None, "old_version": None,
                                   "new_version": version, "actor": actor, "status": "decision",
                                   "reason": f"registered run {run_id}; gates {gate_report.reason}",
                                   "metrics": summary}, retry)
    if set_challenger:
        _move_alias(c, tracking_uri, name, CHALLENGER, version, action="challenger", actor=actor,
                    reason="newest registered candidate", metrics=summary, retry=retry)
    return version


def _log_raw_map_model(uri: str, run_id: str, onnx_model_id: str, spec: Mapping[str, Any]) -> str:
    """Download the logged ONNX model and log the raw-map pyfunc around it; returns the pyfunc's model id."""
    from waferflow.tracking.runs import log_pyfunc

    with tempfile.TemporaryDirectory() as td:
        onnx_path = Path(td) / "model.onnx"
        _download_logged_onnx(uri, onnx_model_id, onnx_path, None)
        spec_path = Path(td) / "model.json"
        spec_path.write_text(json.dumps(dict(spec)))
        return log_pyfunc(uri, run_id, onnx_path, spec_path)


def _version_tags_for(spec, rtags, manifest, gate_report: GateReport, metrics, run_id, pipeline_run_id, git,
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


def _move_alias(c, uri: str, name: str, alias: str, version: str, *, action: str, actor: str, reason: str,
                metrics: Mapping, retry, old: str | None = None, before_move: Callable[[], None] | None = None,
                fence: LockHandle | None = None) -> str:
    """Audit intent -> (fence check) -> move alias (the single step that changes it) -> mark applied.

    Returns the audit key. With ``fence``, the move happens only while that promotion lock is still held.
    """
    old = old if old is not None else _alias_version(c, uri, name, alias, retry)
    entry = {"ts": _now_iso(), "action": action, "alias": alias, "old_version": old, "new_version": version,
             "actor": actor, "reason": reason, "metrics": dict(metrics), "status": "intent"}
    key = _audit(c, uri, name, entry, retry)
    try:
        if before_move is not None:
            before_move()
        if fence is not None:
            fence.check()
        _r(uri, f"set alias {alias}", lambda: c.set_registered_model_alias(name, alias, version), retry)
    except BaseException as e:
        with contextlib.suppress(Exception):
            _audit(c, uri, name, {**entry, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]},
                   RetryPolicy(attempts=1), key=key)
        raise
    _audit(c, uri, name, {**entry, "status": "applied"}, retry, key=key)
    return key


def _version_tags(c, uri: str, name: str, version: str, retry) -> dict[str, str]:
    mv = _r(uri, f"read version {version}", lambda: c.get_model_version(name, version), retry)
    return dict(mv.tags)


def promote_if_passing(
    tracking_uri: str,
    version: str,
    gate_report: GateReport | Mapping[str, Any],
    *,
    name: str = DEFAULT_MODEL_NAME,
    actor: str = "pipeline",
    lock_timeout_s: float = 60.0,
    retry: RetryPolicy | None = None,
    _before_move: Callable[[], None] | None = None,
) -> PromotionResult:
    """Move ``champion`` to ``version`` only if every gate passed and it is still not worse than the champion.

    Evaluates nothing itself: ``gate_report`` comes from :func:`waferflow.gates.check_gates` against the champion
    named in ``gate_report.champion_version``. Under the promotion lock the champion is re-read; if it moved
    meanwhile (another promotion won a race), the candidate's test metrics (version tags) are compared with the
    new champion's, which must come from the same test set, and the promotion is refused when worse. Every
    decision (promote or reject) is recorded in the audit trail.

    Returns:
        A :class:`PromotionResult`; ``promoted`` is False when a gate failed or the re-check refused.

    Raises:
        RegistryError: MLflow unreachable; ``champion`` is then unchanged.
    """
    version = str(version)
    gate_report = _as_report(gate_report)
    c = client_for(tracking_uri)
    tags = _existing_version_tags(c, tracking_uri, name, version, retry)
    metrics = _summary_metrics(tags)
    if not gate_report.passed:
        why = "gates " + gate_report.reason
        cur = _alias_version(c, tracking_uri, name, CHAMPION, retry)
        key = _audit(c, tracking_uri, name, {"ts": _now_iso(), "action": "reject", "alias": CHAMPION,
                                             "old_version": cur, "new_version": version, "actor": actor,
                                             "reason": why, "metrics": metrics, "status": "decision"}, retry)
        return PromotionResult(False, version, cur, cur, why, key)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:v{version}", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = _alias_version(c, tracking_uri, name, CHAMPION, retry)
        if cur == version:
            return PromotionResult(False, version, cur, cur, "already champion")
        refusal = None
        if cur is not None and cur != gate_report.champion_version:
            refusal = _recheck_against(c, tracking_uri, name, version, tags, cur, gate_report.config, retry)
        if refusal:
            key = _audit(c, tracking_uri, name, {"ts": _now_iso(), "action": "reject", "alias": CHAMPION,
                                                 "old_version": cur, "new_version": version, "actor": actor,
                                                 "reason": refusal, "metrics": metrics, "status": "decision"}, retry)
            return PromotionResult(False, version, cur, cur, refusal, key)
        reason = "every gate passed" + (f" (vs champion v{gate_report.champion_version})"
                                        if gate_report.champion_version else " (no champion yet: absolute gates)")
        if cur is not None and cur != gate_report.champion_version:
            reason += f"; re-checked against current champion v{cur}: not worse"
        key = _move_alias(c, tracking_uri, name, CHAMPION, version, action="promote", actor=actor, reason=reason,
                          metrics=metrics, retry=retry, old=cur, before_move=_before_move, fence=lock)
    return PromotionResult(True, version, cur, version, reason, key)


def _recheck_against(c, uri, name, version, tags, cur, cfg: GateConfig, retry) -> str | None:
    cur_tags = _version_tags(c, uri, name, cur, retry)
    h1, h2 = tags.get("test_data_hash", "unknown"), cur_tags.get("test_data_hash", "unknown")
    if h1 == "unknown" or h1 != h2:
        return (f"champion moved to v{cur} after these gates were evaluated and v{cur} was evaluated on a "
                f"different or unknown test set ({h2[:12]} vs {h1[:12]}); re-run the gates against v{cur}")
    m1, m2 = _summary_metrics(tags), _summary_metrics(cur_tags)
    rel = f"{INFO_DIR}/{PREDICTIONS_FILE}"
    mine, theirs = (_read_run_jsons(uri, t["run_id"], [rel], retry)[rel] if t.get("run_id") else None
                    for t in (tags, cur_tags))
    paired = mine is not None and theirs is not None
    try:
        res = gate_vs_champion({"overall": m1}, {"overall": m2}, cfg, cur, mine if paired else None,
                               theirs if paired else None)
    except Exception as e:  # noqa: BLE001 - missing metric tags
        return f"cannot compare with current champion v{cur}: {e}"
    bad = [r for r in res if not r.passed]
    if bad:
        return f"champion moved to v{cur} meanwhile and this version is worse: " + "; ".join(
            r.describe() for r in bad)
    return None


def promote(tracking_uri: str, version: str, *, reason: str, actor: str | None = None,
            name: str = DEFAULT_MODEL_NAME, lock_timeout_s: float = 60.0, retry: RetryPolicy | None = None,
            _before_move: Callable[[], None] | None = None) -> PromotionResult:
    """Manual override: a person moves ``champion`` to ``version`` regardless of gates, with a reason.

    Raises:
        RegistryError: Empty reason, unknown version, or MLflow unreachable (``champion`` unchanged).
    """
    version = str(version)
    if not reason or not reason.strip():
        raise RegistryError("a manual promotion needs --reason (why a person overrides the gates)")
    actor = actor or default_actor()
    c = client_for(tracking_uri)
    tags = _existing_version_tags(c, tracking_uri, name, version, retry)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:v{version}", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = _alias_version(c, tracking_uri, name, CHAMPION, retry)
        if cur == version:
            return PromotionResult(False, version, cur, cur, "already champion")
        full = f"manual override: {reason.strip()} (gates passed: {tags.get('gates.passed', 'unknown')}" + (
            f", violations: {tags.get('gates.violations')})" if tags.get("gates.passed") == "false" else ")")
        key = _move_alias(c, tracking_uri, name, CHAMPION, version, action="manual_promote", actor=actor,
                          reason=full, metrics=_summary_metrics(tags), retry=retry, old=cur,
                          before_move=_before_move, fence=lock)
    return PromotionResult(True, version, cur, version, full, key)


def _existing_version_tags(c, uri, name, version, retry) -> dict[str, str]:
    from mlflow.exceptions import MlflowException

    try:
        return _version_tags(c, uri, name, version, retry)
    except MlflowException as e:
        raise RegistryError(f"model '{name}' has no version {version} at {uri}; see `waferflow registry list`"
                            ) from e


def champion_stack(history: list[dict]) -> list[str]:
    """Champion versions in order, from applied audit entries (promotions push, rollbacks pop)."""
    stack: list[str] = []
    for e in history:
        if e.get("alias") != CHAMPION or e.get("status") != "applied":
            continue
        if e.get("action") in ("promote", "manual_promote"):
            stack.append(str(e["new_version"]))
        elif e.get("action") == "rollback" and stack:
            stack.pop()
    return stack


def rollback(tracking_uri: str, *, reason: str, actor: str | None = None, name: str = DEFAULT_MODEL_NAME,
             lock_timeout_s: float = 60.0, retry: RetryPolicy | None = None) -> PromotionResult:
    """Move ``champion`` back to the previous champion (per the audit trail), recorded.

    Raises:
        RegistryError: No previous champion, the alias was moved outside waferflow, or MLflow unreachable.
    """
    if not reason or not reason.strip():
        raise RegistryError("a rollback needs --reason")
    actor = actor or default_actor()
    c = client_for(tracking_uri)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:rollback", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = _alias_version(c, tracking_uri, name, CHAMPION, retry)
        stack = champion_stack(audit_history(tracking_uri, name=name, retry=retry))
        if not stack or cur is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        if stack[-1] != cur:
            raise RegistryError(f"champion is v{cur} but the audit trail ends at v{stack[-1]}: the alias was moved "
                                "outside waferflow; use `waferflow registry promote VERSION --reason ...`")
        if len(stack) < 2:
            raise RegistryError(f"v{cur} is the first champion of '{name}'; there is no previous champion")
        prev = stack[-2]
        tags = _version_tags(c, tracking_uri, name, prev, retry)
        key = _move_alias(c, tracking_uri, name, CHAMPION, prev, action="rollback", actor=actor,
                          reason=reason.strip(), metrics=_summary_metrics(tags), retry=retry, old=cur, fence=lock)
    return PromotionResult(True, prev, cur, prev, reason.strip(), key)


# ---------------------------------------------------------------- read side
def champion_version(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                     ) -> str | None:
    """The version ``champion`` points to, or None (no champion, or no registered model yet). Downloads nothing."""
    from mlflow.exceptions import MlflowException

    try:
        return _alias_version(client_for(tracking_uri), tracking_uri, name, CHAMPION, retry)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise


def list_versions(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                  ) -> list[dict]:
    """Every version (newest first): version, aliases, created, strategy, backbone, gates, key metrics."""
    c = client_for(tracking_uri)
    rm = _r(tracking_uri, "read registered model", lambda: c.get_registered_model(name), retry)
    aliases: dict[str, list[str]] = {}
    for a, v in (rm.aliases or {}).items():
        aliases.setdefault(str(v), []).append(a)
    mvs = _r(tracking_uri, "search versions", lambda: c.search_model_versions(f"name='{name}'"), retry)
    out = []
    for mv in sorted(mvs, key=lambda m: int(m.version), reverse=True):
        t = mv.tags
        out.append({"version": str(mv.version), "aliases": sorted(aliases.get(str(mv.version), [])),
                    "created": datetime.fromtimestamp(mv.creation_timestamp / 1000, timezone.utc).isoformat(
                        timespec="seconds"),
                    "strategy": t.get("strategy"), "backbone": t.get("backbone"),
                    "gates_passed": t.get("gates.passed"), "violations": t.get("gates.violations"),
                    "metrics": _summary_metrics(t), "run_id": mv.run_id})
    return out


def show_version(tracking_uri: str, version: str, *, name: str = DEFAULT_MODEL_NAME,
                 retry: RetryPolicy | None = None) -> dict:
    """One version: tags, aliases, gate results and the model card (description)."""
    c = client_for(tracking_uri)
    tags = _existing_version_tags(c, tracking_uri, name, str(version), retry)
    mv = c.get_model_version(name, str(version))
    rm = c.get_registered_model(name)
    report = json.loads(tags["gates.report"]) if "gates.report" in tags else None
    return {"version": str(version), "aliases": sorted(a for a, v in (rm.aliases or {}).items()
                                                         if str(v) == str(version)),
            "tags": tags, "gates": report, "model_card": mv.description or "", "source": mv.source,
            "run_id": mv.run_id}


def get_champion(tracking_uri: str, dest_dir: str | os.PathLike, *, name: str = DEFAULT_MODEL_NAME,
                 retry: RetryPolicy | None = None) -> ChampionInfo | None:
    """Download the current champion so the caller can re-evaluate it on the same test set.

    Writes ``<dest_dir>/v<version>/model_dir`` (model.json, weights.pt, config.yaml, history.json) and
    ``<dest_dir>/v<version>/export`` (model.onnx, model.int8.onnx when logged, export.json, latency.json),
    atomically (temp folder, then rename).

    Returns:
        :class:`ChampionInfo`, or None when ``name`` has no champion (or does not exist yet).
    """
    from mlflow.exceptions import MlflowException

    c = client_for(tracking_uri)
    try:
        _r(tracking_uri, "read registered model", lambda: c.get_registered_model(name), retry)
    except MlflowException as e:
        if e.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = _alias_version(c, tracking_uri, name, CHAMPION, retry)
    if version is None:
        return None
    mv = _r(tracking_uri, "read champion version", lambda: c.get_model_version(name, version), retry)
    run_id = mv.run_id
    dest_root = Path(dest_dir)
    dest_root.mkdir(parents=True, exist_ok=True)
    final = dest_root / f"v{version}"
    tmp = Path(tempfile.mkdtemp(prefix=f".v{version}.", dir=dest_root))
    try:
        download_run_artifacts(tracking_uri, run_id, MODEL_DIR_ARTIFACT, tmp / "model_dir", retry)
        export = tmp / "export"
        with contextlib.suppress(RegistryError, MlflowException):
            download_run_artifacts(tracking_uri, run_id, EXPORT_ARTIFACT, export, retry)
        export.mkdir(exist_ok=True)
        run = _r(tracking_uri, "read champion run", lambda: c.get_run(run_id), retry)
        for form, fname in (("onnx_fp32", "model.onnx"), ("onnx_int8", "model.int8.onnx")):
            mid = run.data.tags.get(TAG_LOGGED_MODEL + form)
            if mid:
                _download_logged_onnx(tracking_uri, mid, export / fname, retry)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rel = f"{INFO_DIR}/metrics.json"
    metrics = _read_run_jsons(tracking_uri, run_id, [rel], retry)[rel] or {}
    return ChampionInfo(version, run_id, dict(mv.tags), final / "model_dir", final / "export", metrics)


def _download_logged_onnx(uri: str, model_id: str, dest: Path, retry) -> None:
    import mlflow

    with tempfile.TemporaryDirectory(dir=dest.parent) as td:
        def dl():
            with _fluent(uri):
                return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=td)
        got = Path(_r(uri, f"download model {model_id}", dl, retry))
        src = got / "model.onnx"
        if not src.is_file():
            raise RegistryError(f"logged model {model_id} has no model.onnx; it was not logged by waferflow")
        os.replace(src, dest)
