"""Guarded promotion: moving ``champion`` under the fenced promotion lock, manual overrides and rollbacks.

* ``champion`` moves only when every gate passed (or a person overrides with a reason).
* Promotion lock: :mod:`waferflow.tracking.lock`. Every alias move under the lock checks the holder's token first
  (:meth:`LockHandle.check`), so a holder whose lock was broken stops before it moves ``champion``.
* Order of a promotion: audit *intent* first; the alias move is the last and single step that changes
  ``champion``; then the audit entry is marked *applied* (:func:`waferflow.tracking.audit.move_alias`). A failure
  before or during the move leaves ``champion`` where it was.
* Under the lock the current champion is re-read; when it moved since the gates were evaluated, the candidate is
  compared with the new champion (same test-set hash required) and refused when worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

from waferflow.errors import RegistryError
from waferflow.gates import GateConfig, GateReport, gate_vs_champion
from waferflow.tracking.artifacts import INFO_DIR, PREDICTIONS_FILE, read_run_jsons
from waferflow.tracking.audit import (CHAMPION, DEFAULT_MODEL_NAME, alias_version, audit_history, champion_stack,
                                      default_actor, existing_version_tags, move_alias, now_iso, summary_metrics,
                                      version_tags, write_audit)
from waferflow.tracking.client import RetryingClient, RetryPolicy
from waferflow.tracking.lock import promotion_lock
from waferflow.tracking.registration import as_report


@dataclass(frozen=True)
class PromotionResult:
    """What a promotion attempt did."""

    promoted: bool
    version: str
    old_champion: str | None
    new_champion: str | None
    reason: str
    audit_key: str | None = None


def _reject(c: RetryingClient, name: str, cur: str | None, version: str, actor: str, why: str,
            metrics: Mapping) -> PromotionResult:
    key = write_audit(c, name, {"ts": now_iso(), "action": "reject", "alias": CHAMPION, "old_version": cur,
                                "new_version": version, "actor": actor, "reason": why, "metrics": metrics,
                                "status": "decision"})
    return PromotionResult(False, version, cur, cur, why, key)


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
    gate_report = as_report(gate_report)
    c = RetryingClient(tracking_uri, retry)
    tags = existing_version_tags(c, name, version)
    metrics = summary_metrics(tags)
    if not gate_report.passed:
        return _reject(c, name, alias_version(c, name, CHAMPION), version, actor, "gates " + gate_report.reason,
                       metrics)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:v{version}", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = alias_version(c, name, CHAMPION)
        if cur == version:
            return PromotionResult(False, version, cur, cur, "already champion")
        moved = cur is not None and cur != gate_report.champion_version
        refusal = _recheck_against(c, name, tags, cur, gate_report.config) if moved else None
        if refusal:
            return _reject(c, name, cur, version, actor, refusal, metrics)
        reason = "every gate passed" + (f" (vs champion v{gate_report.champion_version})"
                                        if gate_report.champion_version else " (no champion yet: absolute gates)")
        if moved:
            reason += f"; re-checked against current champion v{cur}: not worse"
        key = move_alias(c, name, CHAMPION, version, action="promote", actor=actor, reason=reason,
                         metrics=metrics, old=cur, before_move=_before_move, fence=lock)
    return PromotionResult(True, version, cur, version, reason, key)


def _recheck_against(c: RetryingClient, name: str, tags: Mapping[str, str], cur: str, cfg: GateConfig
                     ) -> str | None:
    """Why the candidate (``tags``) must not replace champion ``cur``, which moved after the gates ran; None: ok."""
    cur_tags = version_tags(c, name, cur)
    h1, h2 = tags.get("test_data_hash", "unknown"), cur_tags.get("test_data_hash", "unknown")
    if h1 == "unknown" or h1 != h2:
        return (f"champion moved to v{cur} after these gates were evaluated and v{cur} was evaluated on a "
                f"different or unknown test set ({h2[:12]} vs {h1[:12]}); re-run the gates against v{cur}")
    m1, m2 = summary_metrics(tags), summary_metrics(cur_tags)
    rel = f"{INFO_DIR}/{PREDICTIONS_FILE}"
    mine, theirs = (read_run_jsons(c, t["run_id"], [rel])[rel] if t.get("run_id") else None
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
    c = RetryingClient(tracking_uri, retry)
    tags = existing_version_tags(c, name, version)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:v{version}", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = alias_version(c, name, CHAMPION)
        if cur == version:
            return PromotionResult(False, version, cur, cur, "already champion")
        full = f"manual override: {reason.strip()} (gates passed: {tags.get('gates.passed', 'unknown')}" + (
            f", violations: {tags.get('gates.violations')})" if tags.get("gates.passed") == "false" else ")")
        key = move_alias(c, name, CHAMPION, version, action="manual_promote", actor=actor, reason=full,
                         metrics=summary_metrics(tags), old=cur, before_move=_before_move, fence=lock)
    return PromotionResult(True, version, cur, version, full, key)


def rollback(tracking_uri: str, *, reason: str, actor: str | None = None, name: str = DEFAULT_MODEL_NAME,
             lock_timeout_s: float = 60.0, retry: RetryPolicy | None = None) -> PromotionResult:
    """Move ``champion`` back to the previous champion (per the audit trail), recorded.

    Raises:
        RegistryError: No previous champion, the alias was moved outside waferflow, or MLflow unreachable.
    """
    if not reason or not reason.strip():
        raise RegistryError("a rollback needs --reason")
    actor = actor or default_actor()
    c = RetryingClient(tracking_uri, retry)
    with promotion_lock(tracking_uri, name, owner=f"{actor}:rollback", timeout_s=lock_timeout_s,
                        retry=retry) as lock:
        cur = alias_version(c, name, CHAMPION)
        stack = champion_stack(audit_history(tracking_uri, name=name, retry=retry))
        if not stack or cur is None:
            raise RegistryError(f"'{name}' has no champion to roll back")
        if stack[-1] != cur:
            raise RegistryError(f"champion is v{cur} but the audit trail ends at v{stack[-1]}: the alias was moved "
                                "outside waferflow; use `waferflow registry promote VERSION --reason ...`")
        if len(stack) < 2:
            raise RegistryError(f"v{cur} is the first champion of '{name}'; there is no previous champion")
        prev = stack[-2]
        key = move_alias(c, name, CHAMPION, prev, action="rollback", actor=actor, reason=reason.strip(),
                         metrics=summary_metrics(version_tags(c, name, prev)), old=cur, fence=lock)
    return PromotionResult(True, prev, cur, prev, reason.strip(), key)
