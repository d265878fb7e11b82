"""Readable per-map features, and the champion's view of each map.

Readable features are computed on each map at its own die-grid size (no resizing), vectorized per group of
maps that share a shape. They are what a yield engineer would look at:

=====================  ==========================================================================================
column                 meaning
=====================  ==========================================================================================
``fail_ratio``         failing dies / dies on the wafer
``ring_1..ring_4``     fail ratio in 4 equal-area rings, centre (``ring_1``) to edge (``ring_4``)
``edge_ratio``         fail ratio among edge dies (on-wafer dies that touch the off-wafer area or the grid border)
``quadrant_imbalance`` (max - min) of the 4 quadrants' share of the fails; 0 = even, 1 = all in one quadrant
``angular_conc``       length of the mean unit vector of the fails' angles; 0 = spread around, 1 = one direction
``n_clusters``         connected groups of failing dies (8-connectivity)
``largest_cluster``    dies in the largest group / dies on the wafer
``die_rows``           grid height H
``die_cols``           grid width W
``n_dies``             dies on the wafer
=====================  ==========================================================================================
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from waferflow.config import progress_enabled
from waferflow.data.contract import VALID_VALUES, WaferDataset
from waferflow.errors import DataError

N_RINGS = 4
READABLE_FEATURES: tuple[str, ...] = (
    "fail_ratio",
    *(f"ring_{i + 1}" for i in range(N_RINGS)),
    "edge_ratio",
    "quadrant_imbalance",
    "angular_conc",
    "n_clusters",
    "largest_cluster",
    "die_rows",
    "die_cols",
    "n_dies",
)

# 8-connectivity within a map, no connection across the stacked map axis.
_STRUCT_2D_IN_3D = np.zeros((3, 3, 3), dtype=bool)
_STRUCT_2D_IN_3D[1] = True


def check_batch(ds: WaferDataset, what: str = "batch") -> None:
    """Refuse an empty batch or one with a die coding other than 0/1/2.

    Raises:
        DataError: saying what is wrong and how to fix it.
    """
    if len(ds) == 0:
        raise DataError(f"the {what} holds no wafer maps; pass a file with at least one map")
    values = ds.maps if ds.maps is not None else ds.maps_flat
    bad = ~np.isin(np.asarray(values), VALID_VALUES)
    if bad.any():
        v = np.asarray(values)[bad].ravel()[0].item()
        raise DataError(
            f"the {what} has die value {v!r}; maps must use 0 = off-wafer, 1 = pass, 2 = fail "
            "(WM-811K's coding). Recode the maps, e.g. with `waferflow ingest`, before checking drift"
        )


def _features_same_shape(maps: np.ndarray) -> dict[str, np.ndarray]:
    """Features of a stack [n, H, W] of same-size maps."""
    from scipy import ndimage

    n, h, w = maps.shape
    on = maps > 0
    fail = maps == 2
    n_dies = on.sum(axis=(1, 2)).astype(np.float64)
    n_fail = fail.sum(axis=(1, 2)).astype(np.float64)
    safe_dies = np.maximum(n_dies, 1.0)

    # Wafer centre and radii from each map's on-wafer bounding box (per map, so off-centre crops still work).
    rows_any, cols_any = on.any(axis=2), on.any(axis=1)
    ri = np.arange(h)[None, :]
    ci = np.arange(w)[None, :]
    r0 = np.where(rows_any, ri, h).min(1)
    r1 = np.where(rows_any, ri, -1).max(1)
    c0 = np.where(cols_any, ci, w).min(1)
    c1 = np.where(cols_any, ci, -1).max(1)
    cy, cx = (r0 + r1) / 2.0, (c0 + c1) / 2.0
    ry = np.maximum((r1 - r0 + 1) / 2.0, 0.5)
    rx = np.maximum((c1 - c0 + 1) / 2.0, 0.5)
    dy = (np.arange(h)[None, :, None] - cy[:, None, None]) / ry[:, None, None]
    dx = (np.arange(w)[None, None, :] - cx[:, None, None]) / rx[:, None, None]
    rad = np.sqrt(dy**2 + dx**2)  # ~0 at the centre, ~1 at the wafer edge

    out: dict[str, np.ndarray] = {"fail_ratio": n_fail / safe_dies}

    # Equal-area rings on the unit disc: boundaries at sqrt(k / N_RINGS).
    edges = np.sqrt(np.arange(1, N_RINGS) / N_RINGS)
    ring_idx = np.digitize(rad, edges)
    for k in range(N_RINGS):
        in_ring = on & (ring_idx == k)
        d = in_ring.sum(axis=(1, 2))
        f = (fail & in_ring).sum(axis=(1, 2))
        out[f"ring_{k + 1}"] = np.where(d > 0, f / np.maximum(d, 1), 0.0)

    # Edge dies: on-wafer dies with an off-wafer (or out-of-grid) 4-neighbour.
    padded = np.pad(on, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    interior = padded[:, :-2, 1:-1] & padded[:, 2:, 1:-1] & padded[:, 1:-1, :-2] & padded[:, 1:-1, 2:]
    edge = on & ~interior
    ne = edge.sum(axis=(1, 2))
    out["edge_ratio"] = np.where(ne > 0, (fail & edge).sum(axis=(1, 2)) / np.maximum(ne, 1), 0.0)

    # Quadrant and angular balance of the fails.
    up = dy < 0
    left = dx < 0
    quads = np.stack(
        [(fail & q).sum(axis=(1, 2)) for q in (up & left, up & ~left, ~up & left, ~up & ~left)], axis=1
    ).astype(np.float64)
    share = quads / np.maximum(n_fail, 1.0)[:, None]
    out["quadrant_imbalance"] = np.where(n_fail > 0, share.max(1) - share.min(1), 0.0)
    ang = np.arctan2(dy, dx)
    with np.errstate(invalid="ignore", divide="ignore"):
        cs = (np.cos(ang) * fail).sum(axis=(1, 2))
        sn = (np.sin(ang) * fail).sum(axis=(1, 2))
    out["angular_conc"] = np.where(n_fail > 0, np.hypot(cs, sn) / np.maximum(n_fail, 1.0), 0.0)

    # Clusters: label all maps at once (no connectivity across the map axis).
    labels, n_lab = ndimage.label(fail, structure=_STRUCT_2D_IN_3D)
    n_clusters = np.zeros(n, dtype=np.float64)
    largest = np.zeros(n, dtype=np.float64)
    if n_lab:
        pos = np.nonzero(labels)
        lab = labels[pos]
        map_of = np.empty(n_lab + 1, dtype=np.int64)
        map_of[lab] = pos[0]
        sizes = np.bincount(lab, minlength=n_lab + 1)[1:]
        owners = map_of[1:]
        n_clusters = np.bincount(owners, minlength=n).astype(np.float64)
        np.maximum.at(largest, owners, sizes.astype(np.float64))
    out["n_clusters"] = n_clusters
    out["largest_cluster"] = largest / safe_dies
    out["die_rows"] = np.full(n, float(h))
    out["die_cols"] = np.full(n, float(w))
    out["n_dies"] = n_dies
    return out


def map_features(ds: WaferDataset, progress: bool | None = None) -> pd.DataFrame:
    """Readable features of every map, at each map's own die-grid size.

    Args:
        ds: The maps (fixed or variable size; labels are not needed).
        progress: Show a tqdm bar over shape groups (default: unless ``WAFERFLOW_PROGRESS=0``).

    Returns:
        A DataFrame with one row per map (same order as ``ds``) and the columns in ``READABLE_FEATURES``.

    Raises:
        DataError: for an empty batch or an unknown die coding.
    """
    check_batch(ds)
    n = len(ds)
    cols = {c: np.zeros(n, dtype=np.float64) for c in READABLE_FEATURES}
    if ds.maps is not None:
        groups = [(np.arange(n), np.asarray(ds.maps))]
    else:
        shapes = ds.map_shapes()
        keys, inv = np.unique(shapes, axis=0, return_inverse=True)
        inv = inv.ravel()
        groups = []
        for g in range(len(keys)):
            idx = np.nonzero(inv == g)[0]
            groups.append((idx, None))
    it = groups
    if progress_enabled(progress) and len(groups) > 1:
        from tqdm.auto import tqdm

        it = tqdm(groups, desc="map features", unit="shape")
    # Bound memory for big fixed-size batches by chunking.
    chunk = 4096
    for idx, stack in it:
        for s in range(0, len(idx), chunk):
            sub = idx[s : s + chunk]
            arr = stack[s : s + chunk] if stack is not None else np.stack([ds.get(int(i)) for i in sub])
            feats = _features_same_shape(arr.astype(np.uint8, copy=False))
            for c in READABLE_FEATURES:
                cols[c][sub] = feats[c]
    return pd.DataFrame(cols, columns=list(READABLE_FEATURES))


