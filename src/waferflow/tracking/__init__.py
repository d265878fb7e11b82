"""MLflow tracking, model registry with a model card, gated promotion, audit trail, retries.

The pipeline calls these; see docs/REGISTRY.md for the design and the signatures.
"""

from waferflow.tracking.registry import (
    CHALLENGER,
    CHAMPION,
    DEFAULT_MODEL_NAME,
    ChampionInfo,
    PromotionResult,
    audit_history,
    champion_version,
    get_champion,
    list_versions,
    promote,
    promote_if_passing,
    promotion_lock,
    record_pipeline_failure,
    register_candidate,
    rollback,
    show_version,
)
from waferflow.tracking.retry import RetryPolicy, with_retries
from waferflow.tracking.runs import (
    end_run,
    log_candidate,
    open_candidate_run,
    record_failed_run,
    resolve_tracking_uri,
    start_pipeline_run,
    track_system_metrics,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "DEFAULT_MODEL_NAME", "ChampionInfo", "PromotionResult", "RetryPolicy",
    "audit_history", "champion_version", "end_run", "get_champion", "list_versions", "log_candidate", "open_candidate_run",
    "promote", "promote_if_passing", "promotion_lock", "record_pipeline_failure", "record_failed_run", "register_candidate",
    "resolve_tracking_uri", "rollback", "show_version", "start_pipeline_run", "track_system_metrics",
    "with_retries",
]
