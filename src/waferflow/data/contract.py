"""The data contract: one ``.npz`` (no pickle) plus a JSON manifest.

Maps are uint8 with 0 = off-wafer, 1 = passing die, 2 = failing die (WM-811K's
own coding). They are stored either fixed-size (``maps`` [N, H, W]) or
variable-size (``maps_flat``, ``shapes`` [N, 2], ``offsets`` [N+1]).
Labels are ``labels`` int [N] (``label`` accepted as an alias) indexing
``class_names`` [K]; ``lots`` str [N] is optional. A dataset may be unlabeled
(no ``labels``), which adaptive BN and drift use.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from waferflow.config import _json_default
from waferflow.errors import DataError

VALID_VALUES = (0, 1, 2)
MANIFEST_SUFFIX = ".json"


def _all_valid(a: np.ndarray) -> bool:
    """True when every value is 0/1/2; a fast max() check for the usual uint8 maps."""
    if a.dtype == np.uint8:
        return a.size == 0 or int(a.max()) <= 2
    return bool(np.isin(a, VALID_VALUES).all())


def validate_maps(maps: np.ndarray | Sequence[np.ndarray], where: str = "maps") -> None:
    """Check dtype, shape and die coding of one or many maps.

    Raises:
        DataError: naming the first offending map and value.
    """
    arrs = [maps] if isinstance(maps, np.ndarray) and maps.ndim == 3 else maps
    if isinstance(maps, np.ndarray) and maps.ndim not in (1, 3):
        raise DataError(f"{where} must be [N, H, W]; got shape {maps.shape}")
    offset = 0
    for arr in arrs:
        arr = np.asarray(arr)
        if arr.dtype.kind == "f" and np.isnan(arr).any():
            idx = offset + (int(np.argwhere(np.isnan(arr).reshape(len(arr), -1).any(1))[0][0]) if arr.ndim == 3 else 0)
            raise DataError(f"{where}: NaN in map {idx}; maps must be integers 0/1/2 (0 off-wafer, 1 pass, 2 fail)")
        if arr.dtype.kind not in "uif" and arr.dtype != bool:
            raise DataError(f"{where}: dtype {arr.dtype} is not numeric; maps must be uint8 0/1/2")
        if arr.ndim == 3:
            if 0 in arr.shape[1:]:
                raise DataError(f"{where}: empty map shape {arr.shape[1:]}")
            flat = arr.reshape(len(arr), -1)
            if _all_valid(flat):
                offset += len(arr)
                continue
            bad = ~np.isin(flat, VALID_VALUES)
            if bad.any():
                i = int(np.argwhere(bad.any(1))[0][0])
                v = flat[i][bad[i]][0]
                raise DataError(
                    f"{where}: values must be 0/1/2 (0 off-wafer, 1 pass, 2 fail); found {v.item()!r} in map {offset + i}. "
                    "Recode the die values before ingest (e.g. WM-811K's own coding)."
                )
            offset += len(arr)
        elif arr.ndim == 2:
            if 0 in arr.shape:
                raise DataError(f"{where}: map {offset} has an empty shape {arr.shape}")
            bad = ~np.isin(arr, VALID_VALUES)
            if bad.any():
                raise DataError(
                    f"{where}: values must be 0/1/2 (0 off-wafer, 1 pass, 2 fail); found {arr[bad][0].item()!r} in map {offset}"
                )
            offset += 1
        else:
            raise DataError(f"{where}: map {offset} must be 2-D, got shape {arr.shape}")


def resize_nearest(m: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of one 2-D map or a batch [N, H, W].

    Values are categories, so no interpolation ever mixes them.
    """
    h_out, w_out = (size, size) if isinstance(size, int) else size
    h, w = m.shape[-2:]
    if (h, w) == (h_out, w_out):
        return m.copy()
    rows = np.minimum((np.arange(h_out) * h / h_out + h / (2 * h_out)).astype(np.int64), h - 1)
    cols = np.minimum((np.arange(w_out) * w / w_out + w / (2 * w_out)).astype(np.int64), w - 1)
    return m[..., rows[:, None], cols[None, :]]


@dataclass
class WaferDataset:
    """Wafer maps with optional labels and lots.

    Exactly one of ``maps`` (fixed size, uint8 [N, H, W]) or the variable-size
    triple (``maps_flat``, ``shapes``, ``offsets``) is set.
    """

    class_names: tuple[str, ...]
    labels: np.ndarray | None = None
    maps: np.ndarray | None = None
    maps_flat: np.ndarray | None = None
    shapes: np.ndarray | None = None
    offsets: np.ndarray | None = None
    lots: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    # ---------------------------------------------------------------- basics
    def __post_init__(self) -> None:
        self.class_names = tuple(str(c) for c in self.class_names)
        if self.labels is not None:
            self.labels = np.asarray(self.labels).astype(np.int64, copy=False)
        if self.lots is not None:
            self.lots = np.asarray(self.lots).astype(str)

    @property
    def fixed_size(self) -> bool:
        return self.maps is not None

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        if self.maps is not None:
            return int(self.maps.shape[0])
        return 0 if self.shapes is None else int(self.shapes.shape[0])

    def map_shapes(self) -> np.ndarray:
        """[N, 2] original (H, W) of each map."""
        if self.maps is not None:
            return np.tile(np.asarray(self.maps.shape[1:], dtype=np.int32), (len(self), 1))
        return np.asarray(self.shapes)

    def get(self, i: int) -> np.ndarray:
        """Map ``i`` at its own size."""
        if self.maps is not None:
            return self.maps[i]
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return self.maps_flat[a:b].reshape(tuple(int(x) for x in self.shapes[i]))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.get(i)

    def resized(self, size: int, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """uint8 [n, size, size], nearest-neighbour resized (for models and features)."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        if self.maps is not None:
            return np.ascontiguousarray(resize_nearest(self.maps[idx], size)).astype(np.uint8, copy=False)
        out = np.empty((len(idx), size, size), dtype=np.uint8)
        for j, i in enumerate(idx):
            out[j] = resize_nearest(self.get(int(i)), size)
        return out

    def subset(self, indices: Sequence[int] | np.ndarray) -> "WaferDataset":
        idx = np.asarray(indices, dtype=np.int64)
        common = dict(
            class_names=self.class_names,
            labels=None if self.labels is None else self.labels[idx],
            lots=None if self.lots is None else self.lots[idx],
            meta=dict(self.meta),
        )
        if self.maps is not None:
            return WaferDataset(maps=self.maps[idx], **common)
        shapes = np.asarray(self.shapes)[idx]
        sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1]
        offsets = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(sizes, out=offsets[1:])
        flat = np.empty(int(offsets[-1]), dtype=np.uint8)
        for j, i in enumerate(idx):
            flat[offsets[j]:offsets[j + 1]] = self.maps_flat[self.offsets[i]:self.offsets[i + 1]]
        return WaferDataset(maps_flat=flat, shapes=shapes.astype(np.int32), offsets=offsets, **common)

    def class_counts(self) -> dict[str, int]:
        if self.labels is None:
            return {}
        counts = np.bincount(self.labels, minlength=self.num_classes)
        return {c: int(n) for c, n in zip(self.class_names, counts)}

    # ------------------------------------------------------------ validation
    def validate(self, require_labels: bool = False, allow_empty_classes: bool = True) -> "WaferDataset":
        """Check the whole contract. Returns ``self``.

        Raises:
            DataError: what is wrong and how to fix it.
        """
        n = len(self)
        if n == 0:
            raise DataError("dataset is empty: it holds no maps. Point to a file with at least one map.")
        if (self.maps is None) == (self.maps_flat is None):
            raise DataError("dataset must have exactly one of 'maps' or 'maps_flat'/'shapes'/'offsets'")
        if self.maps is not None:
            if self.maps.ndim != 3:
                raise DataError(f"'maps' must be [N, H, W]; got shape {self.maps.shape}")
            validate_maps(self.maps)
        else:
            if self.shapes is None or self.offsets is None:
                raise DataError("variable-size layout needs 'maps_flat', 'shapes' and 'offsets' together")
            shapes, offsets = np.asarray(self.shapes), np.asarray(self.offsets)
            if shapes.ndim != 2 or shapes.shape[1] != 2:
                raise DataError(f"'shapes' must be [N, 2]; got {shapes.shape}")
            if offsets.shape != (n + 1,):
                raise DataError(f"'offsets' must be [N+1] = [{n + 1}]; got {offsets.shape}")
            if (shapes <= 0).any():
                i = int(np.argwhere((shapes <= 0).any(1))[0][0])
                raise DataError(f"map {i} has a non-positive shape {tuple(shapes[i])}")
            sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1]
            if offsets[0] != 0 or not np.array_equal(np.diff(offsets), sizes):
                raise DataError("'offsets' disagree with 'shapes': offsets[i+1]-offsets[i] must equal H*W of map i")
            if offsets[-1] != self.maps_flat.size:
                raise DataError(
                    f"'maps_flat' has {self.maps_flat.size} values but offsets end at {int(offsets[-1])}: file truncated?"
                )
            flat = self.maps_flat
            if flat.dtype.kind == "f" and np.isnan(flat).any():
                pos = int(np.argmax(np.isnan(flat)))
                raise DataError(f"NaN in map {int(np.searchsorted(offsets, pos, side='right') - 1)}; maps must be 0/1/2")
            bad = None if _all_valid(flat) else ~np.isin(flat, VALID_VALUES)
            if bad is not None and bad.any():
                pos = int(np.argmax(bad))
                i = int(np.searchsorted(offsets, pos, side="right") - 1)
                raise DataError(
                    f"values must be 0/1/2 (0 off-wafer, 1 pass, 2 fail); found {flat[pos].item()!r} in map {i}"
                )
        if not self.class_names:
            raise DataError("'class_names' is empty; a dataset needs at least one class name")
        if len(set(self.class_names)) != len(self.class_names):
            raise DataError(f"'class_names' has duplicates: {list(self.class_names)}")
        if self.labels is None:
            if require_labels:
                raise DataError("this step needs labels, but the dataset has no 'labels' array")
        else:
            if self.labels.shape != (n,):
                raise DataError(f"'labels' has {self.labels.shape[0] if self.labels.ndim else 0} entries but there are {n} maps")
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                bad_i = int(np.argmax((self.labels < 0) | (self.labels >= self.num_classes)))
                raise DataError(
                    f"label {int(self.labels[bad_i])} of map {bad_i} is out of range 0..{self.num_classes - 1} "
                    f"for {self.num_classes} class names"
                )
            if not allow_empty_classes:
                counts = np.bincount(self.labels, minlength=self.num_classes)
                empty = [c for c, k in zip(self.class_names, counts) if k == 0]
                if empty:
                    raise DataError(
                        f"class(es) {empty} have no maps; drop them from class_names or add labeled maps for them"
                    )
        if self.lots is not None and self.lots.shape != (n,):
            raise DataError(f"'lots' has {len(self.lots)} entries but there are {n} maps")
        return self

    # --------------------------------------------------------------- to/from
    def to_arrays(self) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {"class_names": np.asarray(self.class_names, dtype=str)}
        if self.maps is not None:
            out["maps"] = np.ascontiguousarray(self.maps, dtype=np.uint8)
        else:
            out["maps_flat"] = np.ascontiguousarray(self.maps_flat, dtype=np.uint8)
            out["shapes"] = np.asarray(self.shapes, dtype=np.int32)
            out["offsets"] = np.asarray(self.offsets, dtype=np.int64)
        if self.labels is not None:
            out["labels"] = self.labels.astype(np.int64)
        if self.lots is not None:
            out["lots"] = self.lots.astype(str)
        if self.meta.get("taxonomy"):
            # travels inside the file, so every later step (split, train, drift) knows which geometric
            # transforms keep the labels; a plain unicode array, no pickle
            out["taxonomy"] = np.asarray(str(self.meta["taxonomy"]))
        return out


def concat_datasets(parts: list[WaferDataset]) -> WaferDataset:
    """Concatenate datasets with the same class names (variable layout unless all share one fixed shape).

    Raises:
        DataError: different class names, or labels on only some parts.
    """
    names = parts[0].class_names
    for d in parts[1:]:
        if d.class_names != names:
            raise DataError(f"cannot join datasets with classes {list(names)} and {list(d.class_names)}; "
                            "the new maps must use the champion's class names")
    labeled = [d.labeled for d in parts]
    if any(labeled) and not all(labeled):
        raise DataError("cannot join labeled and unlabeled maps into one training set")
    labels = np.concatenate([d.labels for d in parts]) if all(labeled) else None
    # lots keep the lot-aware split honest after a join; kept only when every part has them
    lots = np.concatenate([d.lots for d in parts]) if all(d.lots is not None for d in parts) else None
    taxonomies = {d.meta.get("taxonomy") for d in parts}
    meta = {"taxonomy": taxonomies.pop()} if len(taxonomies) == 1 and None not in taxonomies else {}
    shapes = [tuple(d.map_shapes()[0]) if d.fixed_size and len(d) else None for d in parts]
    if all(s is not None for s in shapes) and len(set(shapes)) == 1:
        return WaferDataset(class_names=names, labels=labels, lots=lots, meta=meta,
                            maps=np.concatenate([d.maps for d in parts]))
    maps = [m.ravel() for d in parts for m in d]
    shp = np.concatenate([d.map_shapes() for d in parts]).astype(np.int32)
    offsets = np.r_[0, np.cumsum([m.size for m in maps])].astype(np.int64)
    return WaferDataset(class_names=names, labels=labels, lots=lots, meta=meta,
                        maps_flat=np.concatenate(maps).astype(np.uint8),
                        shapes=shp, offsets=offsets)


def dataset_hash(ds: WaferDataset) -> str:
    """sha256 over the maps, shapes, labels, class names and lots (content, not file bytes).

    The ``taxonomy`` entry is metadata, not content: the same maps keep the same hash with or without it, so
    registry comparisons against champions hashed before it travelled in the file still match.
    """
    h = hashlib.sha256()
    for k, v in sorted(ds.to_arrays().items()):
        if k == "taxonomy":
            continue
        h.update(k.encode())
        h.update(str(v.dtype).encode())
        h.update(str(v.shape).encode())
        if v.dtype.kind == "U":
            h.update("\x00".join(v.tolist()).encode())
        else:
            h.update(np.ascontiguousarray(v))  # the buffer itself: no copy of a large maps array
    return h.hexdigest()


def manifest_of(ds: WaferDataset, source: str | None = None, extra: dict | None = None) -> dict[str, Any]:
    shapes = ds.map_shapes()
    man: dict[str, Any] = {
        "n_maps": len(ds),
        "layout": "fixed" if ds.fixed_size else "variable",
        "class_names": list(ds.class_names),
        "class_counts": ds.class_counts(),
        "labeled": ds.labeled,
        "has_lots": ds.lots is not None,
        "shape_stats": {
            "h_min": int(shapes[:, 0].min()), "h_max": int(shapes[:, 0].max()), "h_median": float(np.median(shapes[:, 0])),
            "w_min": int(shapes[:, 1].min()), "w_max": int(shapes[:, 1].max()), "w_median": float(np.median(shapes[:, 1])),
        },
        "content_sha256": dataset_hash(ds),
        "source": source if source is not None else ds.meta.get("source", "unknown"),
    }
    for k in ("taxonomy", "seed", "generator"):
        if k in ds.meta:
            man[k] = ds.meta[k]
    if extra:
        man.update(extra)
    return man


def manifest_path(npz_path: str | Path) -> Path:
    p = Path(npz_path)
    return p.with_name(p.stem + MANIFEST_SUFFIX) if p.suffix == ".npz" else p.with_name(p.name + MANIFEST_SUFFIX)


class StagedFiles:
    """Several output files written to temporary siblings and put into place together.

    ``path(final)`` gives the temporary path to write ``final`` to; ``remove(final)`` schedules a stale file for
    removal. :meth:`commit` renames every file into place and removes the stale ones; leaving the ``with`` block
    on an error deletes the temporary files, so a failure leaves no new file and no half-written one.
    """

    def __init__(self) -> None:
        self._pairs: list[tuple[Path, Path]] = []
        self._stale: list[Path] = []

    def path(self, final: str | Path) -> Path:
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
        self._pairs.append((Path(tmp), final))
        return Path(tmp)

    def remove(self, final: str | Path) -> None:
        self._stale.append(Path(final))

    def commit(self) -> None:
        """Rename every file into place, then remove the stale ones; on a failure, undo the renames done."""
        umask = os.umask(0)
        os.umask(umask)
        done: list[Path] = []
        backups: list[tuple[Path, Path]] = []
        try:
            for tmp, final in self._pairs:
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give what a plain open() would
                if final.exists() and not final.is_dir():
                    bak = Path(tempfile.mkstemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent)[1])
                    os.replace(final, bak)
                    backups.append((bak, final))
                os.replace(tmp, final)
                done.append(final)
        except BaseException:
            for final in done:
                final.unlink(missing_ok=True)
            for bak, final in backups:
                os.replace(bak, final)
            raise
        for bak, _ in backups:
            bak.unlink(missing_ok=True)
        for stale in self._stale:
            stale.unlink(missing_ok=True)
        self._pairs, self._stale = [], []

    def discard(self) -> None:
        for tmp, _ in self._pairs:
            tmp.unlink(missing_ok=True)
        self._pairs = []

    def __enter__(self) -> "StagedFiles":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.discard()


def _write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Uncompressed ``.npz`` with fixed timestamps (same content, same bytes), streamed to ``path``."""
    with open(path, "wb") as f, zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED) as zf:
        for k, v in arrays.items():
            info = zipfile.ZipInfo(k + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            v = np.asarray(v)
            with zf.open(info, "w", force_zip64=v.nbytes > 2**31) as member:
                np.lib.format.write_array(member, v, allow_pickle=False)
        zf.close()
        f.flush()
        os.fsync(f.fileno())


def save_dataset(ds: WaferDataset, path: str | Path, source: str | None = None, extra: dict | None = None,
                 staged: StagedFiles | None = None) -> dict:
    """Validate, then write ``path`` (.npz, uncompressed, deterministic bytes) and its manifest.

    Nothing is written when the dataset is invalid. With ``staged``, both files go to its temporary paths and
    appear only at its ``commit()``; without, they are put into place at once (each file atomically).

    Returns:
        The manifest dict.
    """
    ds.validate()
    man = manifest_of(ds, source=source, extra=extra)
    with StagedFiles() as own:
        st = staged if staged is not None else own
        _write_npz(ds.to_arrays(), st.path(path))
        st.path(manifest_path(path)).write_text(json.dumps(man, indent=2, default=_json_default) + "\n")
        if staged is None:
            own.commit()
    return man


# The keys of the contract; a dataset file's other keys (``maps_64``, ``orig_index``, ...) are never read.
CONTRACT_KEYS = ("maps", "maps_flat", "shapes", "offsets", "labels", "label", "class_names", "lots", "taxonomy")
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_member(zf: zipfile.ZipFile, member: str, key: str, p: Path, left: float) -> np.ndarray:
    """One ``.npy`` member, its declared size checked against ``left`` bytes before it is read."""
    with zf.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version not in _NPY_HEADERS:
            raise DataError(f"{p}: '{key}' uses .npy format {version}, which is not read; re-save it with np.savez")
        shape, _, dtype = _NPY_HEADERS[version](f)
    if dtype.hasobject:
        raise DataError(f"{p} holds pickled object arrays ('{key}'), which are refused; store plain arrays")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if nbytes > left:
        raise DataError(f"{p}: '{key}' declares {shape} x {dtype} = {nbytes / 2**20:.1f} MiB, past the limit of "
                        "--max-decoded-mib for this file; the file is corrupt or crafted, or, if it is trusted and "
                        "that big, raise --max-decoded-mib")
    with zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def read_npz_arrays(path: str | Path, max_decoded_mib: float | None = None) -> dict[str, np.ndarray]:
    """The contract's arrays of a ``.npz`` (other keys are never read), each declared size checked first.

    Args:
        path: The ``.npz`` file.
        max_decoded_mib: Limit on the decoded bytes of all read arrays together; None for no limit.

    Raises:
        DataError: missing, truncated or corrupt file, object arrays, or an array past the limit.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p} does not exist")
    # np.load treats a non-zip file as a raw pickle; check the zip container first so that a truncated
    # or corrupt file is reported as such and not as "pickled data".
    if not p.is_file() or not zipfile.is_zipfile(p):
        raise DataError(f"{p} is not a readable .npz (zip) file; is it truncated or corrupt? Re-create or re-download it")
    left = float("inf") if max_decoded_mib is None else max_decoded_mib * 2**20
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            members = {n[:-4]: n for n in zf.namelist() if n.endswith(".npy")}
            for key in CONTRACT_KEYS:
                if key in members:
                    arrays[key] = _read_member(zf, members[key], key, p, left)
                    left -= arrays[key].nbytes
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{p}: an array is too large to fit in memory; the file is corrupt or crafted") from None
    except Exception as e:  # noqa: BLE001 - zip/zlib/npy errors of a bad file all mean the same to the user
        raise DataError(f"{p} is not a readable .npz ({type(e).__name__}: {str(e)[:200]}); is it truncated or "
                        "corrupt? Re-create or re-download it") from None
    return arrays


def load_dataset(path: str | Path, require_labels: bool = False, max_decoded_mib: float | None = None
                 ) -> WaferDataset:
    """Load and validate a dataset ``.npz`` of either layout (never unpickles; reads only the contract's keys).

    Raises:
        DataError: for a missing, truncated or corrupt file, a limit passed, or a contract violation.
    """
    arrays = read_npz_arrays(path, max_decoded_mib)
    try:
        return dataset_from_arrays(arrays, source=str(path)).validate(require_labels=require_labels)
    except DataError as e:
        if str(path) in str(e):
            raise
        raise DataError(f"{path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - odd dtypes/shapes of a bad file end as one clear line
        raise DataError(f"{path}: its arrays do not follow the data contract ({type(e).__name__}: {str(e)[:200]}); "
                        "re-create the file with `waferflow ingest`") from None


def dataset_from_arrays(arrays: dict[str, np.ndarray], source: str = "arrays") -> WaferDataset:
    """Build a dataset from npz-style arrays (``label`` is an alias of ``labels``)."""
    a = dict(arrays)
    if "labels" not in a and "label" in a:
        a["labels"] = a.pop("label")
    labels = a.get("labels")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.dtype.kind == "f":
            if np.isnan(labels).any():
                raise DataError(f"{source}: NaN in 'labels'; every label must be an integer class index")
            if not np.all(labels == np.round(labels)):
                raise DataError(f"{source}: 'labels' must be integers")
        elif labels.dtype.kind not in "iu":
            raise DataError(f"{source}: 'labels' must be integers, got dtype {labels.dtype}")
    if "class_names" in a:
        if np.asarray(a["class_names"]).ndim != 1:
            raise DataError(f"{source}: 'class_names' must be a 1-D array of names, got shape "
                            f"{np.asarray(a['class_names']).shape}")
        class_names = tuple(str(c) for c in np.asarray(a["class_names"]).tolist())
    elif labels is not None and len(labels):
        class_names = tuple(str(i) for i in range(int(labels.max()) + 1))
    else:
        raise DataError(f"{source}: no 'class_names' array; add one with the name of each class index")
    meta: dict[str, Any] = {"source": source}
    if "taxonomy" in a:
        tax = np.asarray(a["taxonomy"])
        if tax.dtype.kind != "U" or tax.size != 1:
            raise DataError(f"{source}: 'taxonomy' must be one string (e.g. 'wm811k'), got dtype {tax.dtype} "
                            f"shape {tax.shape}")
        meta["taxonomy"] = str(tax.reshape(()))
    if "maps" in a:
        maps = np.asarray(a["maps"])
        if maps.ndim != 3:
            raise DataError(f"{source}: 'maps' must be [N, H, W]; got shape {maps.shape}")
        validate_maps(maps, where=f"{source}: maps")
        return WaferDataset(class_names=class_names, labels=labels, maps=maps.astype(np.uint8, copy=False),
                            lots=a.get("lots"), meta=meta)
    if "maps_flat" in a:
        missing = [k for k in ("shapes", "offsets") if k not in a]
        if missing:
            raise DataError(f"{source}: variable-size layout needs {missing} next to 'maps_flat'")
        flat = np.asarray(a["maps_flat"])
        shapes, offsets = (_index_array(a[k], k, source) for k in ("shapes", "offsets"))
        if flat.dtype.kind == "f" and np.isnan(flat).any():
            raise DataError(f"{source}: NaN in 'maps_flat'; maps must be 0/1/2")
        return WaferDataset(class_names=class_names, labels=labels, maps_flat=flat.astype(np.uint8, copy=False) if flat.dtype.kind in "ui" and _all_valid(flat) else flat,
                            shapes=shapes.astype(np.int32), offsets=offsets.astype(np.int64),
                            lots=a.get("lots"), meta=meta)
    raise DataError(f"{source}: no maps found; expected 'maps' [N,H,W] or 'maps_flat'+'shapes'+'offsets'")


def _index_array(a: np.ndarray, key: str, source: str) -> np.ndarray:
    """``shapes``/``offsets`` as integers that fit their stored types (int32 / int64), never wrapped."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu":
        raise DataError(f"{source}: '{key}' must be integers, got dtype {a.dtype}")
    top = np.iinfo(np.int32 if key == "shapes" else np.int64).max
    if a.size and (int(a.max()) > top or int(a.min()) < 0):
        raise DataError(f"{source}: '{key}' holds {int(a.max()) if int(a.max()) > top else int(a.min())}, outside "
                        f"0..{top}; the file is corrupt")
    return a


def read_manifest(npz_path: str | Path) -> dict:
    p = manifest_path(npz_path)
    return json.loads(p.read_text()) if p.exists() else {}
