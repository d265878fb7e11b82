"""MLflow tracking, model registry with a model card, gated promotion, audit trail, retries.

The pipeline calls these; see docs/REGISTRY.md for the design and the signatures. Modules, lowest first:
``client`` (retries, URIs), ``lock``, ``audit``, ``artifacts``, ``model_logging``, ``runs`` (run lifecycle),
``candidate`` (logging a candidate), ``registration``, ``promotion``, ``champion`` (read side).
"""

from waferflow.tracking.artifacts import download_run_artifacts
from waferflow.tracking.audit import (CHALLENGER, CHAMPION, DEFAULT_MODEL_NAME, audit_history,
                                      record_pipeline_failure)
from waferflow.tracking.candidate import log_candidate
from waferflow.tracking.champion import ChampionInfo, champion_version, get_champion, get_version, list_versions, show_version
from waferflow.tracking.client import RetryPolicy, client_for, resolve_tracking_uri, with_retries
from waferflow.tracking.lock import promotion_lock
from waferflow.tracking.promotion import PromotionResult, promote, promote_if_passing, rollback
from waferflow.tracking.registration import register_candidate
from waferflow.tracking.runs import (end_run, ensure_experiment, open_candidate_run, record_failed_run,
                                     start_pipeline_run, track_system_metrics)

__all__ = [
    "CHALLENGER", "CHAMPION", "DEFAULT_MODEL_NAME", "ChampionInfo", "PromotionResult", "RetryPolicy",
    "audit_history", "champion_version", "client_for", "download_run_artifacts", "end_run", "ensure_experiment",
    "get_champion", "get_version", "list_versions", "log_candidate", "open_candidate_run", "promote", "promote_if_passing",
    "promotion_lock", "record_pipeline_failure", "record_failed_run", "register_candidate", "resolve_tracking_uri",
    "rollback", "show_version", "start_pipeline_run", "track_system_metrics", "with_retries",
]
