"""The source-model stage's work: find the registered source model of the run's recipe, or pretrain and register it.

The stage runs once per pipeline run; the registry, not the kfp cache, is what makes it cheap: a run with new data
but the same recipe finds ``models:/wafer-source-<taxonomy>/<version>`` and trains nothing. No kfp import here.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from waferflow.config import load_config
from waferflow.train.source import SourceConfig, matching_taxonomy, pretrain_source, recipe, recipe_key

log = logging.getLogger(__name__)


def resolve_sources(class_names: Sequence[str], backbones: Sequence[str], settings: Mapping[str, Any],
                    input_size: int, pretrained: str, device: str, tracking_uri: str) -> dict[str, Any]:
    """One source model per backbone, as an MLflow URI, reused when the registry has the recipe.

    Args:
        class_names: The labeled data's classes (they choose the taxonomy).
        settings: :class:`SourceConfig` overrides; empty = the stage is off.

    Returns:
        ``{"taxonomy", "sources": {backbone: uri}, "reused": [...], "pretrained_now": [...], "seconds": {...},
        "note"}``; ``sources`` is empty when the stage is off or no taxonomy matches, and ``note`` says why.

    Raises:
        ConfigError: a bad setting (before anything is trained).
    """
    from waferflow.tracking.source import find_source, register_source, source_model_name

    out: dict[str, Any] = {"taxonomy": None, "sources": {}, "reused": [], "pretrained_now": [], "seconds": {}}
    if not settings:
        return {**out, "note": "off: the profile names no source recipe; candidates start from ImageNet"}
    cfg = load_config(SourceConfig, overrides=dict(settings))
    tax = matching_taxonomy(class_names)
    if tax is None:
        return {**out, "note": f"no synthetic taxonomy has the data's classes {list(class_names)}: every candidate "
                               "starts from ImageNet (source candidates included)"}
    name = source_model_name(tax)
    for b in backbones:
        rec = recipe(cfg, tax, b, input_size, pretrained)
        key = recipe_key(rec)
        uri = find_source(tracking_uri, name, key)
        if uri is not None:
            out["reused"].append(b)
        else:
            with tempfile.TemporaryDirectory(prefix="waferflow-source-") as tmp:
                res = pretrain_source(cfg, tax, b, input_size, tmp, pretrained=pretrained, device=device)
                summary = {"val_accuracy": res.best_val["accuracy"], "val_macro_f1": res.best_val["macro_f1"],
                           "train_seconds": res.train_seconds}
                uri = register_source(tracking_uri, name, Path(tmp), rec, key, summary)
            out["pretrained_now"].append(b)
            out["seconds"][b] = res.train_seconds
        out["sources"][b] = uri
        log.info("source model of %s: %s", b, uri)
    verb = ", ".join(f"{b}: {u}" for b, u in out["sources"].items())
    return {**out, "taxonomy": tax, "note": f"{tax} synthetic source ({verb}); reused {out['reused'] or 'none'}"}
