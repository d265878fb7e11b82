"""Drift monitoring: readable map features, the champion's view, an evidently report and a retrain decision.

Public API:
- :func:`map_features`, :data:`READABLE_FEATURES` (``features``)
- :func:`model_view`, :class:`EmbeddingPCA` (``model_view``)
- :func:`build_reference`, :func:`build_reference_from_model`, :func:`load_reference` (``reference``)
- :class:`DriftConfig` (``config``), :func:`judge_drift` (``detect``)
- :func:`run_drift_check` (``check``): the whole check, MLflow log and retrain trigger

Submodules are imported lazily so ``import waferflow.drift`` stays light.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "map_features": "features", "READABLE_FEATURES": "features", "check_batch": "features",
    "model_view": "model_view", "EmbeddingPCA": "model_view",
    "build_reference": "reference", "build_reference_from_model": "reference", "load_reference": "reference",
    "Reference": "reference", "REFERENCE_DIRNAME": "reference",
    "DriftConfig": "config", "judge_drift": "detect",
    "run_drift_check": "check",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"waferflow.drift.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'waferflow.drift' has no attribute {name!r}")
