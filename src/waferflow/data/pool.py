"""The unlabeled pool of a run: the maps self-training pseudo-labels and adaptive BN reads.

A run's pool is the unlabeled part of its ``--data`` (an LSWMD table's unlabeled rows, a PNG folder's
``unlabeled/`` subfolder) joined with the maps of ``--unlabeled`` (a ``.npz`` in either layout, an ``LSWMD.pkl``,
a PNG folder: class subfolders and ``unlabeled/``, or PNGs at its top level when it has no subfolders); the data
stage then samples the joined pool to the profile's ``pool_size``. Labels a pool file carries are dropped as it is
read, so nothing downstream can read them; its class names become the labeled data's. Maps of ``--unlabeled``
identical to a labeled map (its validation and test maps too) or to one of ``--data``'s own unlabeled maps are
dropped (:func:`drop_known`), so passing a file that overlaps ``--data`` cannot put held-out maps into the pool
(duplicates within ``--unlabeled`` itself are kept, as repeated maps of a lot are).
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import numpy as np

from waferflow.data.contract import WaferDataset, concat_datasets
from waferflow.errors import DataError


def as_pool(ds: WaferDataset, class_names: tuple[str, ...]) -> WaferDataset:
    """``ds``'s maps (and lots) as unlabeled maps named with ``class_names``: its labels are gone."""
    return replace(ds, labels=None, class_names=tuple(class_names), meta={"source": ds.meta.get("source", "")})


def read_pool(src: str | Path, class_names: tuple[str, ...], size: int | None = None, limits=None) -> WaferDataset:
    """Every map of ``src`` as pool maps (see the module docstring), resized to ``size`` (None keeps their sizes).

    Raises:
        DataError: ``src`` cannot be read as maps (with the reader's reason), or holds none.
    """
    from waferflow.data.ingest import ingest

    res = ingest(src, size=size, limits=limits, unlabeled_ok=True)
    pool = join_pools(class_names, res.dataset, res.unlabeled)
    if pool is None:  # the readers refuse inputs without maps; this guards a reader that one day does not
        raise DataError(f"--unlabeled {src} holds no maps; give a .npz, an LSWMD.pkl or a PNG folder with maps in it")
    return pool


def drop_known(pool: WaferDataset, *known: WaferDataset | None) -> tuple[WaferDataset, list[int]]:
    """``pool`` without the maps identical (shape and every die) to a map of ``known`` (e.g. the labeled data,
    whose validation and test maps must not be pseudo-labelled, and the data's own pool), and how many maps each of
    ``known`` took out (a map found in several counts for the first)."""
    seen = [{_map_key(m) for m in k} if k is not None else set() for k in known]
    dropped = [0] * len(known)
    keep = []
    for i, m in enumerate(pool):
        key = _map_key(m)
        hit = next((j for j, s in enumerate(seen) if key in s), None)
        if hit is None:
            keep.append(i)
        else:
            dropped[hit] += 1
    return (pool if len(keep) == len(pool) else pool.subset(keep)), dropped


def _map_key(m: np.ndarray) -> bytes:
    return hashlib.sha256(repr(m.shape).encode() + np.ascontiguousarray(m, dtype=np.uint8).tobytes()).digest()


def join_pools(class_names: tuple[str, ...], *pools: WaferDataset | None) -> WaferDataset | None:
    """The given pools as one unlabeled dataset (None when none has a map); lots are kept where every part has
    them."""
    parts = [as_pool(p, class_names) for p in pools if p is not None and len(p)]
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else concat_datasets(parts)
