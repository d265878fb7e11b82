"""The registered model's audit trail, its aliases, and the one audited step that moves an alias.

Audit trail: one registered-model tag per entry, key ``audit.<utc ns, 20 digits>.<random>``, value a JSON object.
Each writer adds its own key, so concurrent writers never read-modify-write a shared value and cannot lose each
other's entries; sorting keys gives time order.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import time
import uuid
from datetime import datetime, timezone
from typing import Any, Callable, Mapping

from waferflow.errors import RegistryError
from waferflow.tracking.client import RetryingClient, RetryPolicy
from waferflow.tracking.lock import LockHandle

DEFAULT_MODEL_NAME = "wafer-defect-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
AUDIT_PREFIX = "audit."


def default_actor() -> str:
    """``$USER`` (or the login name), else ``"unknown"``."""
    user = os.environ.get("USER") or os.environ.get("USERNAME")
    if not user:
        with contextlib.suppress(Exception):
            user = getpass.getuser()
    return user or "unknown"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


CLASSIFIER_DESCRIPTION = ("Wafer-map defect classifier. Versions carry a model card and gate tags; see the `champion` "
                          "and `challenger` aliases.")


def ensure_registered_model(c: RetryingClient, name: str, description: str = CLASSIFIER_DESCRIPTION) -> None:
    from mlflow.exceptions import MlflowException

    try:
        c.call("create registered model", c.raw.create_registered_model, name, description=description)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def alias_version(c: RetryingClient, name: str, alias: str) -> str | None:
    """The version ``alias`` points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        mv = c.call(f"read alias {alias}", c.raw.get_model_version_by_alias, name, alias)
    except MlflowException as e:
        if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise
    return str(mv.version)


def version_tags(c: RetryingClient, name: str, version: str) -> dict[str, str]:
    mv = c.call(f"read version {version}", c.raw.get_model_version, name, version)
    return dict(mv.tags)


def existing_version_tags(c: RetryingClient, name: str, version: str) -> dict[str, str]:
    """Tags of ``version``; a clear error when it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return version_tags(c, name, version)
    except MlflowException as e:
        raise RegistryError(f"model '{name}' has no version {version} at {c.uri}; see `waferflow registry list`"
                            ) from e


def summary_metrics(tags: Mapping[str, str]) -> dict[str, float]:
    """The ``metric.*`` version tags as floats."""
    out = {}
    for k, v in tags.items():
        if k.startswith("metric."):
            with contextlib.suppress(ValueError):
                out[k[len("metric."):]] = float(v)
    return out


def write_audit(c: RetryingClient, name: str, entry: Mapping[str, Any], key: str | None = None) -> str:
    """Write one audit entry (a new key unless ``key`` is given); returns its key."""
    key = key or f"{AUDIT_PREFIX}{time.time_ns():020d}.{uuid.uuid4().hex[:8]}"
    value = json.dumps(dict(entry), sort_keys=True, default=str)
    c.call("write audit entry", c.raw.set_registered_model_tag, name, key, value)
    return key


def audit_history(tracking_uri: str, *, name: str = DEFAULT_MODEL_NAME, retry: RetryPolicy | None = None
                  ) -> list[dict]:
    """Every audit entry of ``name``, oldest first (each dict has ``key`` added).

    Entry fields: ``ts``, ``action`` (register, challenger, promote, manual_promote, rollback, reject),
    ``alias``, ``old_version``, ``new_version``, ``actor``, ``reason``, ``metrics``, ``status``
    (applied / intent / failed / decision).
    """
    c = RetryingClient(tracking_uri, retry)
    rm = c.call("read registered model", c.raw.get_registered_model, name)
    out = []
    for k in sorted(k for k in rm.tags if k.startswith(AUDIT_PREFIX)):
        try:
            e = json.loads(rm.tags[k])
        except json.JSONDecodeError:
            e = {"action": "unreadable", "raw": rm.tags[k]}
        e["key"] = k
        out.append(e)
    return out


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


def record_pipeline_failure(tracking_uri: str, name: str, *, run_id: str, error: str, stage: str | None = None,
                            pipeline_run: str | None = None, state: str | None = None,
                            retry: RetryPolicy | None = None) -> str:
    """Write a ``pipeline_failed`` decision into ``name``'s audit trail (no alias changes). Returns its key."""
    c = RetryingClient(tracking_uri, retry)
    ensure_registered_model(c, name)
    cur = alias_version(c, name, CHAMPION)
    return write_audit(c, name, {
        "ts": now_iso(), "action": "pipeline_failed", "alias": None, "old_version": cur, "new_version": None,
        "actor": f"pipeline {pipeline_run or run_id}", "status": "decision", "metrics": {},
        "reason": f"{state or 'FAILED'} at stage {stage or 'unknown'}: {error[:500]} (run {run_id}); champion "
                  "unchanged"})


def move_alias(c: RetryingClient, name: str, alias: str, version: str, *, action: str, actor: str, reason: str,
               metrics: Mapping, old: str | None = None, before_move: Callable[[], None] | None = None,
               fence: LockHandle | None = None) -> str:
    """Audit intent -> (fence check) -> move alias (the single step that changes it) -> mark applied.

    Returns the audit key. With ``fence``, the move happens only while that promotion lock is still held.
    """
    old = old if old is not None else alias_version(c, name, alias)
    entry = {"ts": now_iso(), "action": action, "alias": alias, "old_version": old, "new_version": version,
             "actor": actor, "reason": reason, "metrics": dict(metrics), "status": "intent"}
    key = write_audit(c, name, entry)
    try:
        if before_move is not None:
            before_move()
        if fence is not None:
            fence.check()
        c.call(f"set alias {alias}", c.raw.set_registered_model_alias, name, alias, version)
    except BaseException as e:
        with contextlib.suppress(Exception):
            write_audit(c.with_policy(RetryPolicy(attempts=1)), name,
                        {**entry, "status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}, key=key)
        raise
    write_audit(c, name, {**entry, "status": "applied"}, key=key)
    return key
