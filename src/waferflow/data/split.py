"""Stratified, seeded, lot-aware train/val/test splits with a manifest.

* Without lots: stratified by class (scikit-learn ``train_test_split`` with
  ``stratify``). Classes with fewer than ``MIN_STRATIFY`` maps cannot be spread
  over three splits; they go to TRAIN whole, and the manifest lists them under
  ``small_classes`` (documented fallback, also logged as a warning).
* With lots: whole lots are assigned to one split (scikit-learn
  ``StratifiedGroupKFold``, which balances class proportions over folds as far
  as whole lots allow), so no lot is in two splits. Lots that hold a class with fewer than ``MIN_STRATIFY``
  maps go to TRAIN whole, as without lots (the manifest's ``small_classes`` and ``notes`` say so): a class
  with one or two labeled maps can only be learned from training.
* ``labels_per_class`` / ``label_fraction`` thin out the labels of TRAIN only
  (few-label regime); the removed train maps are kept as an unlabeled set.
* Exact-duplicate maps (same bytes and shape) found in more than one split are
  reported in the manifest.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from waferflow.config import atomic_write_json, progress_enabled
from waferflow.data.contract import WaferDataset, dataset_hash, save_dataset
from waferflow.errors import DataError

log = logging.getLogger(__name__)

MIN_STRATIFY = 3  # a class needs one map per split to be stratified
SPLITS = ("train", "val", "test")


@dataclass
class SplitResult:
    """Train/val/test datasets, the manifest, and (few-label regime) the unlabeled rest of train."""

    train: WaferDataset
    val: WaferDataset
    test: WaferDataset
    manifest: dict[str, Any]
    unlabeled: WaferDataset | None = None
    indices: dict[str, np.ndarray] = field(default_factory=dict)


def map_hashes(ds: WaferDataset) -> list[str]:
    """sha256 of each map's shape and bytes (exact-duplicate detection)."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(len(ds)), desc="hash maps", unit="map", disable=not progress_enabled()):
        m = np.ascontiguousarray(ds.get(i), dtype=np.uint8)
        out.append(hashlib.sha256(f"{m.shape}".encode() + m.tobytes()).hexdigest())
    return out


def _check_fractions(val: float, test: float, labels_per_class: int | None, label_fraction: float | None) -> None:
    for name, f in (("val", val), ("test", test)):
        if not (0.0 <= f < 1.0) or math.isnan(f):
            raise DataError(f"--{name} must be a fraction in [0, 1), got {f}")
    if val + test >= 1.0:
        raise DataError(f"--val + --test = {val + test:.3f} leaves nothing for train; keep their sum below 1")
    if labels_per_class is not None and label_fraction is not None:
        raise DataError("give either --labels-per-class or --label-fraction, not both")
    if labels_per_class is not None and labels_per_class < 1:
        raise DataError(f"--labels-per-class must be >= 1, got {labels_per_class}")
    if label_fraction is not None and not (0.0 < label_fraction <= 1.0):
        raise DataError(f"--label-fraction must be in (0, 1], got {label_fraction}")


def _stratified(y: np.ndarray, val: float, test: float, seed: int) -> tuple[dict[str, np.ndarray], list[str]]:
    from sklearn.model_selection import train_test_split

    counts = np.bincount(y)
    small = np.flatnonzero((counts > 0) & (counts < MIN_STRATIFY))
    idx = np.arange(len(y))
    keep = ~np.isin(y, small)
    pool, forced_train = idx[keep], idx[~keep]
    parts = {"train": pool, "val": pool[:0], "test": pool[:0]}
    try:
        if test > 0 and len(pool):
            rest, te = train_test_split(pool, test_size=test, stratify=y[pool], random_state=seed)
            parts["test"], parts["train"] = te, rest
        if val > 0 and len(parts["train"]):
            rest = parts["train"]
            tr, va = train_test_split(rest, test_size=val / (1.0 - test), stratify=y[rest], random_state=seed + 1)
            parts["train"], parts["val"] = tr, va
    except ValueError as e:
        raise DataError(
            f"cannot stratify {len(pool)} maps over {int((counts >= MIN_STRATIFY).sum())} classes with val={val}, "
            f"test={test} ({e}); use more maps, larger --val/--test fractions, or fewer classes"
        ) from None
    parts["train"] = np.sort(np.concatenate([parts["train"], forced_train]))
    return {k: np.sort(v) for k, v in parts.items()}, [str(c) for c in small]


def _small_class_lots(y: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """``(mask of maps in a lot that holds a class with < MIN_STRATIFY maps, those classes)``: such a class cannot
    be in every split, and a model can only learn it from training, so its lots stay whole in train."""
    counts = np.bincount(y)
    small = np.flatnonzero((counts > 0) & (counts < MIN_STRATIFY))
    return np.isin(groups, np.unique(groups[np.isin(y, small)])), [int(c) for c in small]


def _lot_aware(y: np.ndarray, lots: np.ndarray, val: float, test: float, seed: int,
               notes: list[str]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Lots kept whole, stratified by class where possible; lots holding a class too small to stratify go to train.
    Returns ``(parts, the small classes)``."""
    from sklearn.model_selection import GroupShuffleSplit, StratifiedGroupKFold

    uniq, groups = np.unique(lots, return_inverse=True)
    forced, small = _small_class_lots(y, groups)
    n_need = int(val > 0) + int(test > 0) + 1
    if len(np.unique(groups[~forced])) < n_need:
        raise DataError(f"lot-aware split needs at least {n_need} lots, found {len(np.unique(groups[~forced]))}"
                        + (f" besides the {len(np.unique(groups[forced]))} kept in train for classes with fewer "
                           f"than {MIN_STRATIFY} maps" if forced.any() else "")
                        + "; add lots, set --val/--test to 0, or drop 'lots' to split per wafer")
    if forced.any():
        n_lots = len(np.unique(groups[forced]))
        notes.append(f"{int(forced.sum())} maps in {n_lots} lot{'s' if n_lots != 1 else ''} go to train whole: "
                     f"they hold a class with fewer than {MIN_STRATIFY} maps, which only training can teach")

    def take(idx: np.ndarray, frac: float, s: int) -> tuple[np.ndarray, np.ndarray]:
        n_groups = len(np.unique(groups[idx]))
        k = int(min(max(2, round(1.0 / frac)), n_groups))
        if np.bincount(y[idx]).max() >= k:
            cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=s)
            with warnings.catch_warnings():  # "least populated class has fewer members than n_splits" is expected
                warnings.simplefilter("ignore", UserWarning)
                rest, held = next(cv.split(idx, y[idx], groups[idx]))
        else:
            # Every class is smaller than the number of folds: stratifying is impossible, keep lots whole only.
            notes.append(f"classes too small to stratify over {k} lot folds: lots drawn at random (GroupShuffleSplit)")
            n_held = max(1, round(frac * n_groups))
            cv = GroupShuffleSplit(n_splits=1, test_size=n_held, random_state=s)
            rest, held = next(cv.split(idx, y[idx], groups[idx]))
        return idx[rest], idx[held]

    idx = np.flatnonzero(~forced)
    parts = {"train": idx, "val": idx[:0], "test": idx[:0]}
    if test > 0:
        parts["train"], parts["test"] = take(idx, test, seed)
    if val > 0:
        parts["train"], parts["val"] = take(parts["train"], val / (1.0 - test), seed + 1)
    parts["train"] = np.concatenate([parts["train"], np.flatnonzero(forced)])
    return {k: np.sort(v) for k, v in parts.items()}, small


def _few_labels(y: np.ndarray, train_idx: np.ndarray, n_classes: int, seed: int,
                labels_per_class: int | None, label_fraction: float | None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed + 2)
    keep = []
    for c in range(n_classes):
        cand = train_idx[y[train_idx] == c]
        if len(cand) == 0:
            continue
        n = labels_per_class if labels_per_class is not None else max(1, math.ceil(label_fraction * len(cand)))
        keep.append(rng.permutation(cand)[: min(n, len(cand))])
    kept = np.sort(np.concatenate(keep)) if keep else train_idx[:0]
    return kept, np.setdiff1d(train_idx, kept)


def sample_pool(ds: WaferDataset, n: int, seed: int = 0) -> tuple[WaferDataset, dict[str, Any]]:
    """At most ``n`` maps of an unlabeled pool, drawn evenly over its lots when it has lots (0 = keep all).

    Each lot gives its share ``n * lot_size / total`` (rounded by largest remainder), so a few large lots cannot
    crowd out the rest; without lots the draw is uniform. The order of the kept maps is the pool's.

    Returns:
        ``(pool, report)`` with ``{"pool": total, "kept": kept, "lots": lots or None}``.
    """
    total = len(ds)
    report: dict[str, Any] = {"pool": total, "kept": total, "lots": None}
    if n <= 0 or total <= n:
        return ds, report
    rng = np.random.default_rng(seed)
    if ds.lots is None:
        idx = np.sort(rng.choice(total, size=n, replace=False))
    else:
        names, inv, counts = np.unique(ds.lots, return_inverse=True, return_counts=True)
        raw = n * counts / total
        share = np.floor(raw).astype(int)
        for j in np.argsort(-(raw - share), kind="stable")[: n - int(share.sum())]:
            share[j] += 1
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(inv == j), size=int(share[j]), replace=False)
                                      for j in range(len(names)) if share[j]]))
        report["lots"] = int(len(names))
    report["kept"] = int(len(idx))
    return ds.subset(idx), report


def split_dataset(ds: WaferDataset, val: float = 0.15, test: float = 0.15, seed: int = 0,
                  labels_per_class: int | None = None, label_fraction: float | None = None,
                  lot_aware: bool | None = None) -> SplitResult:
    """Split a labeled dataset into train/val/test.

    Args:
        ds: Labeled dataset (lots optional).
        val: Fraction of maps (or, lot-aware, of lots) for validation.
        test: Fraction for test.
        seed: Random seed; the same seed gives the same split.
        labels_per_class: Keep at most N labeled maps per class in train.
        label_fraction: Keep this fraction (at least 1) of each class's train maps.
        lot_aware: Keep lots whole; default True when ``ds.lots`` is set.

    Returns:
        A :class:`SplitResult`; nothing is written (see :func:`write_split`).

    Raises:
        DataError: unlabeled or invalid data, bad fractions, too few maps or lots.
    """
    ds.validate(require_labels=True)
    _check_fractions(val, test, labels_per_class, label_fraction)
    y = ds.labels
    lot_aware = ds.lots is not None if lot_aware is None else lot_aware
    if lot_aware and ds.lots is None:
        raise DataError("lot-aware split asked for, but the dataset has no 'lots'")
    small: list[str] = []
    notes: list[str] = []
    if lot_aware:
        parts, small_idx = _lot_aware(y, ds.lots, val, test, seed, notes)
    else:
        parts, small_idx = _stratified(y, val, test, seed)
    small = [ds.class_names[int(c)] for c in small_idx]
    if small:
        log.warning("classes %s have fewer than %d maps: all of them go to train (not stratified%s)",
                    small, MIN_STRATIFY, ", with their whole lots" if lot_aware else "")
    unl_idx = None
    if labels_per_class is not None or label_fraction is not None:
        parts["train"], unl_idx = _few_labels(y, parts["train"], ds.num_classes, seed, labels_per_class,
                                              label_fraction)
    for name in ("train",) + tuple(n for n, f in (("val", val), ("test", test)) if f > 0):
        if len(parts[name]) == 0:
            raise DataError(f"the {name} split came out empty ({len(ds)} maps); use more maps or larger fractions")

    subsets = {k: ds.subset(parts[k]) for k in SPLITS}
    unlabeled = None
    if unl_idx is not None and len(unl_idx):
        u = ds.subset(unl_idx)
        u.labels = None
        unlabeled = u

    hashes = map_hashes(ds)
    where: dict[str, dict[str, list[int]]] = {}
    for name in SPLITS:
        for i in parts[name]:
            where.setdefault(hashes[int(i)], {}).setdefault(name, []).append(int(i))
    dups = [{"map_sha256": h, "splits": w} for h, w in where.items() if len(w) > 1]
    manifest: dict[str, Any] = {
        "seed": seed, "val": val, "test": test, "lot_aware": lot_aware,
        "labels_per_class": labels_per_class, "label_fraction": label_fraction,
        "class_names": list(ds.class_names), "source_sha256": dataset_hash(ds),
        "source": ds.meta.get("source", "unknown"),
        "splits": {
            k: {"n_maps": len(subsets[k]), "class_counts": subsets[k].class_counts(),
                "content_sha256": dataset_hash(subsets[k]),
                "n_lots": None if subsets[k].lots is None else int(len(np.unique(subsets[k].lots)))}
            for k in SPLITS
        },
        "small_classes": small,
        "notes": notes,
        "duplicates_across_splits": {"n_groups": len(dups), "n_maps": int(sum(sum(len(v) for v in d["splits"].values())
                                                                             for d in dups)),
                                     "groups": dups[:50]},
    }
    if unlabeled is not None:
        manifest["splits"]["unlabeled"] = {"n_maps": len(unlabeled), "content_sha256": dataset_hash(unlabeled),
                                           "note": "train maps whose labels were held back (few-label regime)"}
    if lot_aware:
        lots_by = {k: set(subsets[k].lots.tolist()) for k in SPLITS}
        shared = (lots_by["train"] & lots_by["val"]) | (lots_by["train"] & lots_by["test"]) | (lots_by["val"] & lots_by["test"])
        if shared:  # guaranteed by group k-fold; checked because the promise matters downstream
            raise RuntimeError(f"internal error: lots in two splits: {sorted(shared)[:5]}")
    return SplitResult(train=subsets["train"], val=subsets["val"], test=subsets["test"], manifest=manifest,
                       unlabeled=unlabeled, indices=parts)


# what a split folder may hold; anything else in --out means it is not a split folder and is not replaced
_SPLIT_FILES = {f"{k}{ext}" for k in SPLITS + ("unlabeled",) for ext in (".npz", ".json")} | {"manifest.json"}


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir() or out.is_symlink():
        raise DataError(f"--out {out} is a file or a link; give a folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in _SPLIT_FILES)
    if others:
        raise DataError(f"--out {out} holds files that a split does not write ({others[:5]}); a split folder is "
                        "replaced as a whole, so give a new or empty folder, or an earlier split folder")


def write_split(result: SplitResult, out_dir: str | Path) -> dict[str, Any]:
    """Write ``train.npz``, ``val.npz``, ``test.npz`` (+ ``unlabeled.npz``) and ``manifest.json``, all or nothing.

    Empty splits (fraction 0) are not written. All datasets are validated before the first file is written.
    The files are written to a temporary sibling folder that then replaces ``out_dir`` as a whole, so no file
    of an earlier split (a stale ``test.npz``, say) survives, and a failure leaves ``out_dir`` as it was.
    An existing ``out_dir`` is replaced only when it holds nothing but split files.

    Returns:
        The manifest (with the file names added).

    Raises:
        DataError: ``out_dir`` is a file or holds other files, or it cannot be written.
    """
    out = Path(out_dir)
    _check_replaceable(out)
    todo = {k: getattr(result, k) for k in SPLITS if len(getattr(result, k))}
    if result.unlabeled is not None:
        todo["unlabeled"] = result.unlabeled
    for ds in todo.values():
        ds.validate()
    man = dict(result.manifest)
    man["files"] = {}
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as e:
        raise DataError(f"cannot write the split to {out}: {e}") from None
    try:
        for k, ds in todo.items():
            save_dataset(ds, tmp / f"{k}.npz", source=man.get("source"), extra={"split": k})
            man["files"][k] = f"{k}.npz"
        atomic_write_json(tmp / "manifest.json", man)
        tmp.chmod(0o777 & ~_umask())
        _swap_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return man


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _swap_dir(new: Path, out: Path) -> None:
    """Put folder ``new`` at ``out``; an existing ``out`` is moved aside first and deleted after."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
