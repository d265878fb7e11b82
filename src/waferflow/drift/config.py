"""Thresholds of the drift decision (a light module: the CLI reads its defaults for ``--help``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from waferflow.errors import ConfigError

__all__ = ["DriftConfig"]


@dataclass(frozen=True)
class DriftConfig:
    """Thresholds of the drift decision (calibrated at 1,000 maps a batch; see docs/DRIFT.md)."""

    share_threshold: float = 0.5
    feature_threshold: float = 0.1
    embedding_threshold: float = 0.6
    prediction_threshold: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("share_threshold", "feature_threshold", "embedding_threshold", "prediction_threshold"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ConfigError(f"{name} must be a positive number, got {v!r}")
        if self.share_threshold > 1:
            raise ConfigError(f"share_threshold is a share of features, in (0, 1]; got {self.share_threshold}")
        if not 0.5 < self.embedding_threshold <= 1:
            raise ConfigError(f"embedding_threshold is a ROC AUC in (0.5, 1]; got {self.embedding_threshold}")
