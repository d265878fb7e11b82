"""Data manifests as the tracking layer reads them: one per split (train, val, test, unlabeled)."""

from __future__ import annotations

from typing import Any, Mapping

SPLITS = ("train", "val", "test", "unlabeled")


def split_manifests(manifest: Mapping[str, Any] | None) -> dict[str, dict]:
    """``{split: manifest}`` of a combined manifest (train/val/test/unlabeled), or ``{"test": m}`` for a single
    dataset manifest (what older runs logged)."""
    if not manifest:
        return {}
    out = {k: dict(manifest[k]) for k in SPLITS if isinstance(manifest.get(k), Mapping)}
    if not out and "content_sha256" in manifest:
        out["test"] = dict(manifest)
    return out
