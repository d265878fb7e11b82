"""Ingest real wafer maps into the data contract.

Three sources are understood (see :func:`ingest`):

* a dataset ``.npz`` in either layout of the contract (extra keys such as
  ``maps_64`` or ``orig_index`` are ignored);
* WM-811K's ``LSWMD.pkl``, a pandas DataFrame pickle. A pickle can run code
  or forge memory when it is loaded, so it is read only by a guarded
  pure-Python unpickler (:func:`safe_load_dataframe`): an explicit allow-list
  of numpy/pandas globals (everything else is refused before it is imported),
  every numpy dtype checked against the one numpy builds from its type string,
  and decoded arrays counted against a limit;
* a folder of PNG images with one subfolder per class (real PNGs only, no
  symlinks unless allowed, a pixel limit per image).

Every input is read within :class:`DecodeLimits`; whatever a bad file makes
the readers raise becomes a :class:`~waferflow.errors.DataError` naming the
file and the problem.

Unlabeled rows of an LSWMD table, and the maps of a PNG folder's
``unlabeled/`` subfolder, become a separate, unlabeled dataset (a pipeline
run's pool; adaptive BN and drift use it).
"""

from __future__ import annotations

import io
import lzma
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from waferflow.data.contract import (
    VALID_VALUES,
    StagedFiles,
    WaferDataset,
    load_dataset,
    manifest_path,
    resize_nearest,
    save_dataset,
)
from waferflow.config import progress_enabled
from waferflow.errors import DataError

# WM-811K's nine classes in the order the shared .npz files use (sorted names).
WM811K_CLASSES = ("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none")

LSWMD_COLUMNS = ("waferMap", "failureType")
PNG_SUFFIXES = (".png",)
#: the subfolder of a PNG folder that holds unlabeled maps (the pool), not a class
UNLABELED_FOLDER = "unlabeled"

# PNG grey levels -> die codes. A folder uses ONE of these codings for all its images:
#   "raw":    0 off-wafer, 1 pass, 2 fail (the values themselves)
#   "scaled": 0 off-wafer, 127 or 128 pass, 255 fail (what an 8-bit viewer shows)
PNG_CODINGS: dict[str, dict[int, int]] = {
    "raw": {0: 0, 1: 1, 2: 2},
    "scaled": {0: 0, 127: 1, 128: 1, 255: 2},
}


# --------------------------------------------------------------------------- safe unpickling
def _latin1_encode(obj: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Stand-in for ``_codecs.encode`` that protocol-2 pickles use to rebuild bytes."""
    if not isinstance(obj, str) or encoding.lower() not in ("latin1", "latin-1", "iso-8859-1", "utf-8", "utf8"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(obj).__name__}, {encoding!r})")
    return obj.encode(encoding, errors)


# Globals that pickles of a pandas DataFrame of numpy arrays, floats and strings
# use. Listed by pickling such frames with pandas 2.3/numpy 2.4 (protocols 2-5)
# and pandas 1.5.3/numpy 1.26 (protocol 2, Int64Index) and recording every
# find_class call; older pandas paths (0.18-0.19 ``pandas.indexes``,
# ``pandas.core.index``) are added from pandas' own compat map. ``_codecs.encode``
# (protocol-2 bytes) is answered with :func:`_latin1_encode`, never the real codec.
_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # builtins (py2 names are mapped by the unpickler's fix_imports)
    ("builtins", "slice"), ("__builtin__", "slice"),
    ("builtins", "bytes"), ("__builtin__", "bytes"),
    # numpy arrays, dtypes and scalars (numpy 1.x ``core`` and 2.x ``_core``)
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    # pandas frame, series, block managers and blocks
    ("pandas.core.frame", "DataFrame"), ("pandas.core.series", "Series"),
    ("pandas.core.internals.managers", "BlockManager"), ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.internals", "BlockManager"), ("pandas.core.internals", "SingleBlockManager"),
    ("pandas._libs.internals", "_unpickle_block"), ("pandas.core.internals.blocks", "new_block"),
    # pandas indexes, current and legacy locations
    ("pandas.core.indexes.base", "_new_Index"), ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.indexes.numeric", "Int64Index"), ("pandas.core.indexes.numeric", "UInt64Index"),
    ("pandas.core.indexes.numeric", "Float64Index"),
    ("pandas.indexes.base", "_new_Index"), ("pandas.indexes.base", "Index"),
    ("pandas.indexes.numeric", "Int64Index"), ("pandas.indexes.numeric", "Float64Index"),
    ("pandas.indexes.range", "RangeIndex"),
    ("pandas.core.index", "_new_Index"), ("pandas.core.index", "Index"), ("pandas.core.index", "Int64Index"),
    ("pandas.core.base", "FrozenNDArray"), ("pandas.core.indexes.frozen", "FrozenNDArray"),
    ("pandas.core.base", "FrozenList"), ("pandas.core.indexes.frozen", "FrozenList"),
})

# Old locations that pandas 2.x no longer has, on top of pandas' own compat map.
_EXTRA_LOCATIONS = {
    ("pandas.core.index", "_new_Index"): ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.index", "Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.index", "Int64Index"): ("pandas.core.indexes.base", "Index"),
    ("pandas.core.internals", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals", "SingleBlockManager"): ("pandas.core.internals.managers", "SingleBlockManager"),
}


def _resolve(module: str, name: str, source: str, base_find: Callable[[str, str], Any]) -> Any:
    if (module, name) not in _ALLOWED:
        raise DataError(
            f"refused to load {module}.{name} from {source}: it is not on the allow-list of numpy/pandas globals "
            "a WM-811K DataFrame pickle needs. The file may be malicious or not an LSWMD table; convert it to a "
            "dataset .npz in a trusted environment instead."
        )
    from pandas.compat.pickle_compat import _class_locations_map

    key = (module, name)
    module, name = _EXTRA_LOCATIONS.get(key, _class_locations_map.get(key, key))
    return base_find(module, name)


_MIB = 1 << 20


@dataclass(frozen=True)
class DecodeLimits:
    """Bounds on what reading one input may decode.

    Attributes:
        max_decoded_mib: Arrays decoded from the file plus the maps it yields, in MiB (``--max-decoded-mib``).
            The default admits the whole WM-811K ``LSWMD.pkl`` (about 1.2 GiB of maps).
        max_map_pixels: Pixels of one map or image (``--max-map-pixels``); WM-811K's largest map has 43k.
        allow_symlinks: Follow symlinks inside a PNG folder (``--allow-symlinks``), only to targets inside it.
    """

    max_decoded_mib: float = 2048.0
    max_map_pixels: int = 1 << 22
    allow_symlinks: bool = False

    def budget(self, source: str) -> "DecodeBudget":
        return DecodeBudget(int(self.max_decoded_mib * _MIB), source)


class DecodeBudget:
    """Counts decoded bytes against :attr:`DecodeLimits.max_decoded_mib` and refuses past it."""

    def __init__(self, limit_bytes: int, source: str) -> None:
        self.limit, self.used, self.source = limit_bytes, 0, source

    def charge(self, nbytes: int, what: str) -> None:
        """Add ``nbytes``; raise DataError naming the limit and how to raise it when the total passes it."""
        self.used += int(nbytes)
        if self.used > self.limit:
            raise DataError(
                f"{self.source}: decoding {what} would pass the limit of {self.limit / _MIB:g} MiB "
                f"(--max-decoded-mib); the file decodes to more than that. If it is trusted and that big, raise "
                "--max-decoded-mib")


def _check_dtype(d: Any, source: str) -> np.dtype:
    """Refuse a dtype that numpy would not build from its own type string (forged flags, fields, subarrays)."""
    if not isinstance(d, np.dtype):
        raise DataError(f"{source}: expected a numpy dtype in the pickle, found {type(d).__name__}")
    if d.names is not None or d.subdtype is not None:
        raise DataError(f"{source}: refused structured dtype {d.str!r}; WM-811K tables hold plain arrays")
    ref = np.dtype(d.str)
    if (d.flags, d.itemsize, d.kind, d.alignment) != (ref.flags, ref.itemsize, ref.kind, ref.alignment):
        raise DataError(f"{source}: refused a forged numpy dtype {d.str!r} (flags {d.flags}, expected "
                        f"{ref.flags}); the file is malicious or corrupt")
    return d


_NDARRAY = object()  # what find_class gives for numpy.ndarray: usable only as _reconstruct's first argument


def _guarded_unpickler(file: Any, source: str, budget: DecodeBudget) -> Any:
    """Pure-Python unpickler (pandas' compat unpickler) with the allow-list, dtype checks and the byte budget.

    Every BUILD of a numpy dtype is checked right after it is applied, before anything uses the dtype; every
    array that is built is charged to the budget before its memory is allocated.
    """
    from pandas.compat import pickle_compat

    class _Guarded(pickle_compat.Unpickler):
        dispatch = dict(pickle_compat.Unpickler.dispatch)

        def find_class(self, module: str, name: str) -> Any:
            return _guarded_global(module, name, source, budget, super().find_class)

        def load_build(self) -> None:
            inst, state = self.stack[-2], self.stack[-1]
            if isinstance(inst, np.ndarray):
                _charge_array_state(state, budget, source)
            pickle_compat.Unpickler.load_build(self)
            if isinstance(inst, np.dtype):
                _check_dtype(inst, source)

        dispatch[pickle.BUILD[0]] = load_build

    return _Guarded(file, encoding="latin1")


class _BoundedReader:
    """File wrapper that refuses any single read larger than the limit (a huge declared bytes object).

    For a compressed pickle it also counts every decompressed byte against ``stream`` (a small file must not
    decompress into gigabytes of strings); a plain file's stream is bounded by its own size.
    """

    def __init__(self, f: Any, budget: DecodeBudget, stream: DecodeBudget | None = None) -> None:
        self._f, self._budget, self._stream = f, budget, stream

    def _check(self, n: int | None) -> None:
        if n is not None and n > self._budget.limit:
            self._budget.charge(n, f"a {n}-byte object")

    def _count(self, data: Any) -> Any:
        if self._stream is not None:
            self._stream.charge(data if isinstance(data, int) else len(data), "the decompressed pickle stream")
        return data

    def read(self, n: int = -1) -> bytes:
        self._check(n if n >= 0 else None)
        return self._count(self._f.read(n))

    def readinto(self, b: Any) -> int:
        self._check(len(b))
        return self._count(self._f.readinto(b))

    def readline(self, limit: int = -1) -> bytes:
        return self._count(self._f.readline(limit))


def _charge_array_state(state: Any, budget: DecodeBudget, source: str) -> None:
    """ndarray.__setstate__((version, shape, dtype, fortran, data)): check the dtype, charge its bytes."""
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise DataError(f"{source}: malformed numpy array state in the pickle")
    shape, dtype = state[-4], _check_dtype(state[-3], source)
    if not isinstance(shape, tuple) or not all(isinstance(x, int) and 0 <= x for x in shape):
        raise DataError(f"{source}: malformed numpy array shape in the pickle")
    budget.charge(int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 1), f"a {shape} array")


def _guarded_global(module: str, name: str, source: str, budget: DecodeBudget, base_find: Callable) -> Any:
    if (module, name) == ("_codecs", "encode"):
        return _latin1_encode
    if (module, name) == ("numpy", "ndarray"):
        return _NDARRAY
    obj = _resolve(module, name, source, base_find)
    if name == "dtype":
        return lambda *args: _check_dtype(np.dtype(*args), source)
    if name == "_reconstruct":
        def reconstruct(cls: Any, shape: Any, typecode: Any) -> np.ndarray:
            if cls is not _NDARRAY or shape != (0,):
                raise DataError(f"{source}: refused numpy _reconstruct({type(cls).__name__}, {shape!r}); only "
                                "plain arrays are admitted")
            return obj(np.ndarray, shape, typecode)
        return reconstruct
    if name == "_frombuffer":
        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            if _check_dtype(dtype, source).hasobject:
                raise DataError(f"{source}: refused an object array built from raw bytes (forged pickle)")
            budget.charge(len(buf), "an array")
            return obj(buf, dtype, shape, order)
        return frombuffer
    if name == "scalar":
        return lambda dtype, *rest: obj(_check_dtype(dtype, source), *rest)
    return obj


_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ": "xz"}


def _open_pickle(p: Path) -> Any:
    """Open a pickle, transparently decompressing gzip/bz2/xz and a zip holding one .pkl."""
    import bz2
    import gzip

    with open(p, "rb") as f:
        head = f.read(6)
    for magic, kind in _COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind](p, "rb")
    if head.startswith(b"PK"):
        try:
            zf = zipfile.ZipFile(p)
        except zipfile.BadZipFile as e:
            raise DataError(f"{p} is not a readable zip ({e}); is it truncated or corrupt?") from None
        members = [n for n in zf.namelist() if n.endswith((".pkl", ".pickle"))]
        if len(members) != 1:
            raise DataError(f"{p} is a zip with {len(members)} .pkl files; it must hold exactly one LSWMD .pkl")
        return zf.open(members[0])
    return open(p, "rb")


def safe_load_dataframe(path: str | Path, limits: DecodeLimits | None = None) -> Any:
    """Load a pandas DataFrame pickle through the guarded unpickler.

    Only allow-listed numpy/pandas globals are admitted (refused before they are imported), every numpy dtype
    is checked against the one numpy builds from its type string, and decoded arrays are charged to
    ``limits.max_decoded_mib``. The pure-Python unpickler reads both current and old pandas layouts.
    gzip/bz2/xz-compressed pickles and a zip holding one ``.pkl`` are read as well.

    Raises:
        DataError: for a refused global or dtype, the decoded-size limit, a truncated/corrupt file, or an
            object that is not a DataFrame.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    budget = (limits or DecodeLimits()).budget(p.name)
    try:
        with _open_pickle(p) as f:
            stream = None if isinstance(f, io.BufferedReader) else (limits or DecodeLimits()).budget(p.name)
            obj = _guarded_unpickler(_BoundedReader(f, budget, stream), p.name, budget).load()
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{p}: unpickling ran out of memory; the file is corrupt or far larger than an LSWMD "
                        "table") from None
    except Exception as e:  # noqa: BLE001 - any failure of a crafted pickle becomes one clear refusal
        raise DataError(f"{p} could not be unpickled ({type(e).__name__}: {str(e)[:200]}); is it truncated or "
                        "corrupt? Re-download LSWMD.pkl or check that it is a pandas DataFrame pickle") from None
    if not isinstance(obj, pd.DataFrame):
        raise DataError(f"{p} holds a {type(obj).__name__}, not a pandas DataFrame; expected a WM-811K LSWMD table")
    return obj


# --------------------------------------------------------------------------- results
@dataclass
class IngestResult:
    """What :func:`ingest` produced.

    Attributes:
        dataset: The main dataset (the labeled rows of an LSWMD table, the class
            subfolders of a PNG folder; the whole input for ``.npz``).
        unlabeled: Unlabeled LSWMD rows, or a PNG folder's ``unlabeled/`` maps, as an
            unlabeled dataset, or None.
        report: Counts and notes about the conversion (JSON-serializable).
    """

    dataset: WaferDataset
    unlabeled: WaferDataset | None = None
    report: dict[str, Any] = field(default_factory=dict)


def _pack(maps: list[np.ndarray], class_names: tuple[str, ...], labels: np.ndarray | None,
          lots: np.ndarray | None, size: int | None, source: str) -> WaferDataset:
    """Maps of any sizes -> a dataset, fixed-size when ``size`` is given, else variable layout."""
    meta = {"source": source}
    if size is not None:
        arr = np.empty((len(maps), size, size), dtype=np.uint8)
        for i, m in enumerate(maps):
            arr[i] = resize_nearest(m, size)
        return WaferDataset(class_names=class_names, labels=labels, maps=arr, lots=lots, meta=meta)
    shapes = np.asarray([m.shape for m in maps], dtype=np.int32).reshape(len(maps), 2)
    offsets = np.zeros(len(maps) + 1, dtype=np.int64)
    np.cumsum(shapes[:, 0].astype(np.int64) * shapes[:, 1], out=offsets[1:])
    flat = np.empty(int(offsets[-1]), dtype=np.uint8)
    for m, a, b in zip(maps, offsets[:-1], offsets[1:]):
        flat[a:b] = m.ravel()
    return WaferDataset(class_names=class_names, labels=labels, maps_flat=flat, shapes=shapes, offsets=offsets,
                        lots=lots, meta=meta)


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise DataError(f"--size must be a positive integer, got {size!r}")


# --------------------------------------------------------------------------- npz
def ingest_npz(path: str | Path, size: int | None = None, limits: DecodeLimits | None = None) -> IngestResult:
    """Read a dataset ``.npz`` (either layout; ``label`` alias allowed; extra keys are never read)."""
    _check_size(size)
    limits = limits or DecodeLimits()
    ds = load_dataset(path, max_decoded_mib=limits.max_decoded_mib)
    big = int(np.argmax(ds.map_shapes().prod(axis=1, dtype=np.int64)))
    if int(np.prod(ds.map_shapes()[big], dtype=np.int64)) > limits.max_map_pixels:
        raise DataError(f"{path}: map {big} is {tuple(int(x) for x in ds.map_shapes()[big])}, over the limit of "
                        f"{limits.max_map_pixels} pixels (--max-map-pixels); raise it if such maps are real")
    if size is not None:
        ds = WaferDataset(class_names=ds.class_names, labels=ds.labels, maps=ds.resized(size), lots=ds.lots,
                          meta=dict(ds.meta))
    return IngestResult(dataset=ds, report={"source": str(path), "format": "npz", "n_maps": len(ds)})


# --------------------------------------------------------------------------- LSWMD
_LABEL_DEPTH = 4  # [['Center']] is two levels deep; a few more are tolerated


def _label_of(value: Any, row: int) -> str | None:
    """WM-811K label cell -> class name, or None when unlabeled ([['Center']], [], '', NaN).

    Raises:
        DataError: a cell that holds several values, a number, or nesting deeper than a label ever has.
    """
    for _ in range(_LABEL_DEPTH + 1):
        if value is None or (isinstance(value, float) and np.isnan(value)):
            return None
        if isinstance(value, (str, bytes)):
            s = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
            return s.strip() or None
        if isinstance(value, np.generic):
            value = value.item()
            continue
        if not isinstance(value, (np.ndarray, list, tuple)):
            raise DataError(f"row {row}: failureType holds a {type(value).__name__}; expected a class name such "
                            "as [['Center']] or an empty array")
        n = value.size if isinstance(value, np.ndarray) else len(value)
        if n == 0:
            return None
        if n != 1:
            raise DataError(f"row {row}: failureType holds {n} values; expected one nested label such as "
                            "[['Center']] or an empty array")
        value = value.flat[0] if isinstance(value, np.ndarray) else value[0]
    raise DataError(f"row {row}: failureType is nested deeper than {_LABEL_DEPTH} levels; expected [['Center']]")


def _map_of(value: Any, row: int, source: str, max_pixels: int) -> np.ndarray:
    if not isinstance(value, np.ndarray):
        raise DataError(f"{source}: waferMap of row {row} is a {type(value).__name__}; expected a 2-D array")
    m = np.asarray(value)
    if m.size > max_pixels:
        raise DataError(f"{source}: waferMap of row {row} has {m.size} pixels {m.shape}, over the limit of "
                        f"{max_pixels} (--max-map-pixels); raise it if such maps are real")
    if m.dtype == np.uint8 and m.ndim == 2 and m.size and m.max() <= 2:  # fast path: the usual, valid map
        return m
    if m.ndim != 2 or 0 in m.shape:
        raise DataError(f"{source}: waferMap of row {row} must be a non-empty 2-D array; got shape {m.shape}")
    if m.dtype.kind not in "uifb":
        raise DataError(f"{source}: waferMap of row {row} has dtype {m.dtype}; expected integers 0/1/2")
    if m.dtype.kind == "f" and np.isnan(m).any():
        raise DataError(f"{source}: waferMap of row {row} contains NaN; maps must be 0/1/2")
    bad = ~np.isin(m, VALID_VALUES)
    if bad.any():
        raise DataError(f"{source}: waferMap of row {row} has value {m[bad][0].item()!r}; values must be 0 off-wafer, "
                        "1 pass, 2 fail (WM-811K coding)")
    return m.astype(np.uint8)


def _lots_of(df: Any, source: str) -> np.ndarray | None:
    if "lotName" not in df.columns:
        return None
    col = df["lotName"].to_numpy()
    for i, v in enumerate(col):
        if not isinstance(v, (str, bytes, int, float, np.generic)):
            raise DataError(f"{source}: lotName of row {i} is a {type(v).__name__}; expected a lot name")
    return col.astype(str)


def _read_rows(df: Any, name: str, limits: DecodeLimits) -> tuple[list[np.ndarray], list[str | None]]:
    """Maps and label names of every row, each map checked and charged to the decoded-size limit once."""
    from tqdm import tqdm

    wafer_col, label_col = df["waferMap"].to_numpy(), df["failureType"].to_numpy()
    budget, seen = limits.budget(name), {}
    maps: list[np.ndarray] = []
    names: list[str | None] = []
    for i in tqdm(range(len(df)), desc=f"ingest {name}", unit="map", disable=not progress_enabled()):
        first = seen.setdefault(id(wafer_col[i]), i)
        if first != i:
            raise DataError(f"{name}: waferMap of row {i} is the same array object as row {first}'s (a pickle memo "
                            "reference); LSWMD tables never share maps, so the file is crafted or corrupt")
        m = _map_of(wafer_col[i], i, name, limits.max_map_pixels)
        budget.charge(m.size, f"the maps up to row {i}")
        maps.append(m)
        names.append(_label_of(label_col[i], i))
    return maps, names


def ingest_lswmd(path: str | Path, size: int | None = None, limits: DecodeLimits | None = None) -> IngestResult:
    """Read WM-811K ``LSWMD.pkl`` safely; labeled rows -> dataset, unlabeled rows -> ``unlabeled``.

    Class names are WM-811K's nine names (same indices as the shared ``.npz``
    files) when every label is one of them, else the sorted set of labels.
    ``lotName`` becomes ``lots``.

    Raises:
        DataError: refused pickle content, a limit passed, missing columns, bad maps or labels.
    """
    _check_size(size)
    limits = limits or DecodeLimits()
    p = Path(path)
    df = safe_load_dataframe(p, limits)
    missing = [c for c in LSWMD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p.name}: missing column(s) {missing}; an LSWMD table has waferMap, dieSize, lotName, "
                        f"waferIndex, trianTestLabel, failureType (found {[str(c)[:40] for c in df.columns]})")
    if len(df) == 0:
        raise DataError(f"{p.name}: the table has no rows; nothing to ingest")
    lot_col = _lots_of(df, p.name)
    maps, names = _read_rows(df, p.name, limits)
    del df

    labeled_idx = [i for i, n in enumerate(names) if n is not None]
    unlabeled_idx = [i for i, n in enumerate(names) if n is None]
    found = sorted({n for n in names if n is not None})
    class_names = WM811K_CLASSES if set(found) <= set(WM811K_CLASSES) else tuple(found)
    index = {c: k for k, c in enumerate(class_names)}
    source = str(p)

    def build(idx: list[int], labeled: bool) -> WaferDataset:
        return _pack([maps[i] for i in idx], class_names,
                     np.asarray([index[names[i]] for i in idx], dtype=np.int64) if labeled else None,
                     None if lot_col is None else lot_col[idx], size, source)

    report = {"source": source, "format": "lswmd", "rows": len(maps), "labeled": len(labeled_idx),
              "unlabeled": len(unlabeled_idx), "lots": None if lot_col is None else int(len(set(lot_col)))}
    if not labeled_idx:
        # Only unlabeled maps (e.g. a production dump): the main output is that unlabeled set.
        report["note"] = "no labeled rows: the main output is unlabeled"
        return IngestResult(dataset=build(unlabeled_idx, False), unlabeled=None, report=report)
    unl = build(unlabeled_idx, False) if unlabeled_idx else None
    return IngestResult(dataset=build(labeled_idx, True), unlabeled=unl, report=report)


# --------------------------------------------------------------------------- PNG folders
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _read_png(path: Path, limits: DecodeLimits, budget: DecodeBudget) -> np.ndarray:
    """One greyscale PNG, format and size checked from its header before any pixel is decoded."""
    import warnings

    from PIL import Image

    with open(path, "rb") as f:
        if f.read(8) != _PNG_MAGIC:
            raise DataError(f"{path} is not a PNG file (its first bytes are not the PNG signature); save maps as "
                            "PNG, not BMP/TIFF/GIF renamed to .png")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=["PNG"]) as im:
                pixels = im.width * im.height
                if pixels > limits.max_map_pixels:
                    raise DataError(f"{path} is {im.width}x{im.height} = {pixels} pixels, over the limit of "
                                    f"{limits.max_map_pixels} (--max-map-pixels); raise it if such maps are real")
                budget.charge(pixels * len(im.getbands()), f"image {path.name}")
                im.load()
                mode = im.mode
                arr = np.asarray(im)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files (OSError, SyntaxError, bomb)
        raise DataError(f"{path} is not a readable PNG ({type(e).__name__}: {str(e)[:200]}); is it truncated "
                        "or corrupt?") from None
    if mode in ("L", "P", "I", "I;16"):
        if mode == "P":
            raise DataError(f"{path} is a palette PNG; save maps as 8-bit greyscale (mode L) with levels "
                            "0/1/2 or 0/127/255")
        return arr
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
            return rgb[..., 0]
        raise DataError(f"{path} is a colour image; save maps as greyscale (0/1/2 or 0/127/255 levels)")
    raise DataError(f"{path} has PNG mode {mode}; save maps as 8-bit greyscale (mode L)")


def _checked_entry(entry: Path, root: Path, allow_symlinks: bool) -> Path:
    """``entry`` itself, refused when it is a symlink (unless allowed, and then only to a target inside root)."""
    if not entry.is_symlink():
        return entry
    if not allow_symlinks:
        raise DataError(f"{entry} is a symlink; symlinks in a PNG folder are refused. Copy the file in, or pass "
                        "--allow-symlinks to follow links that stay inside the folder")
    target, real_root = entry.resolve(), root.resolve()
    if not target.is_relative_to(real_root):
        raise DataError(f"{entry} links to {target}, outside {real_root}; links may only point inside the folder")
    return entry


def _class_dirs(root: Path, limits: DecodeLimits) -> list[Path]:
    if not root.is_dir():
        raise DataError(f"{root} is not a folder of class subfolders")
    dirs = []
    for d in sorted(root.iterdir()):
        if d.name.startswith("."):
            continue
        if not _checked_entry(d, root, limits.allow_symlinks).is_dir():
            continue
        if d.name != d.name.strip() or not d.name.isprintable() or d.name in (".", ".."):
            raise DataError(f"{root}: class folder {d.name!r} is not a plain folder name; rename it to the class "
                            "name (printable, no leading or trailing spaces)")
        dirs.append(d)
    return dirs


def ingest_png_folder(path: str | Path, size: int | None = None, limits: DecodeLimits | None = None,
                      unlabeled_ok: bool = False) -> IngestResult:
    """Read ``path/<class name>/*.png`` greyscale images; ``path/unlabeled/*.png`` are unlabeled maps.

    The ``unlabeled`` subfolder (:data:`UNLABELED_FOLDER`) is not a class: its maps become the result's
    ``unlabeled`` set (the pool of a pipeline run), as an LSWMD table's unlabeled rows do. A folder with no class
    subfolders is refused for its layout, unless ``unlabeled_ok`` (a pool is read): then the maps of ``unlabeled/``,
    or its own top-level PNGs, become the main output, unlabeled, with the placeholder class list ``['unlabeled']``.

    Grey levels are mapped back to die codes with ONE coding for the whole
    folder: ``raw`` (0/1/2 are the codes themselves) or ``scaled`` (0
    off-wafer, 127 or 128 pass, 255 fail). Any other level, or levels of both
    codings in one folder, is refused as ambiguous. Only real PNG files are
    read, each within ``limits.max_map_pixels``; symlinks are refused unless
    ``limits.allow_symlinks``, and then only to targets inside ``path``.

    Raises:
        DataError: no class folders and no unlabeled maps, no images, symlinks, a limit passed, unreadable or
            ambiguous images.
    """
    limits = limits or DecodeLimits()
    root = Path(path)
    dirs = _class_dirs(root, limits)
    class_dirs = [d for d in dirs if d.name != UNLABELED_FOLDER]
    if not class_dirs and not unlabeled_ok:
        raise DataError(f"{root} has no class subfolders; lay it out as {root}/<class name>/<map>.png "
                        f"(unlabeled maps in {root}/{UNLABELED_FOLDER}/)")
    pool_dirs = [d for d in dirs if d.name == UNLABELED_FOLDER] or ([] if class_dirs else [root])
    budget = limits.budget(str(root))
    groups = [_png_files(d, root, limits) for d in class_dirs]
    pool_files = [f for d in pool_dirs for f in _png_files(d, root, limits)]
    files = [f for g in groups for f in g] + pool_files
    if not files:
        where = f"the subfolders {[d.name for d in dirs]}" if dirs else "it"
        raise DataError(f"{root}: no .png files in {where}")
    raw_maps = []
    for f in files:
        img = _read_png(f, limits, budget)
        if img.ndim != 2 or 0 in img.shape:
            raise DataError(f"{f}: expected a 2-D greyscale image, got shape {img.shape}")
        raw_maps.append(img)
    coding, maps = _decode_levels(root, files, raw_maps)
    class_names = tuple(d.name for d in class_dirs)
    n_lab = len(files) - len(pool_files)
    labels = np.repeat(np.arange(len(groups), dtype=np.int64), [len(g) for g in groups])
    report = {"source": str(root), "format": "png", "coding": coding, "n_maps": n_lab, "classes": list(class_names),
              "unlabeled": len(pool_files)}
    if not n_lab:  # a dataset names at least one class: the maps' only one is the placeholder 'unlabeled'
        report["note"] = "no class folders: the main output is unlabeled"
        return IngestResult(dataset=_pack(maps, (UNLABELED_FOLDER,), None, None, size, str(root)), report=report)
    pool = _pack(maps[n_lab:], class_names, None, None, size, str(root)) if pool_files else None
    return IngestResult(dataset=_pack(maps[:n_lab], class_names, labels, None, size, str(root)), unlabeled=pool,
                        report=report)


def _png_files(folder: Path, root: Path, limits: DecodeLimits) -> list[Path]:
    """The PNG files directly in ``folder`` (sorted; symlinks checked as :func:`_checked_entry` does)."""
    return [f for f in sorted(x for x in folder.iterdir() if x.suffix.lower() in PNG_SUFFIXES)
            if _checked_entry(f, root, limits.allow_symlinks).is_file()]


def _decode_levels(root: Path, files: list[Path], raw_maps: list[np.ndarray]) -> tuple[str, list[np.ndarray]]:
    """``(coding, die-code maps)``: the one grey-level coding every image of the folder uses, applied."""
    levels = set()
    for m in raw_maps:
        levels.update(int(v) for v in np.unique(m))
    coding = next((name for name, table in PNG_CODINGS.items() if levels <= set(table)), None)
    if coding is None or (coding == "scaled" and {127, 128} <= levels):
        bad_file = next((f for f, m in zip(files, raw_maps)
                         if not set(np.unique(m).tolist()) <= set(PNG_CODINGS["raw"])), files[0])
        raise DataError(
            f"{root}: ambiguous grey levels {sorted(levels)[:10]} (e.g. in {bad_file}); use ONE coding for all images: "
            "raw 0/1/2 (0 off-wafer, 1 pass, 2 fail) or scaled 0/127/255 (or 0/128/255)"
        )
    lut = np.zeros(256 if max(levels) < 256 else max(levels) + 1, dtype=np.uint8)
    for v, code in PNG_CODINGS[coding].items():
        if v < len(lut):
            lut[v] = code
    return coding, [lut[m.astype(np.int64)] for m in raw_maps]


# --------------------------------------------------------------------------- dispatch + write
def detect_format(src: str | Path) -> str:
    """``npz``, ``lswmd`` or ``png`` from the path (and, for files, their first bytes)."""
    p = Path(src)
    if not p.exists():
        raise DataError(f"{p} does not exist; give a dataset .npz, an LSWMD.pkl or a folder of PNGs per class")
    if p.is_dir():
        return "png"
    with open(p, "rb") as f:
        head = f.read(6)
    pickle_suffix = any(x in (".pkl", ".pickle") for x in p.suffixes)
    if p.suffix == ".npz" or (head[:2] == b"PK" and not pickle_suffix):
        return "npz"
    if head[:1] == b"\x80" or pickle_suffix or any(head.startswith(m) for m in _COMPRESSED_MAGIC):
        return "lswmd"
    raise DataError(f"{p}: unknown input format; expected a .npz, an LSWMD .pkl or a folder of PNGs per class")


def ingest(src: str | Path, size: int | None = None, limits: DecodeLimits | None = None,
           unlabeled_ok: bool = False) -> IngestResult:
    """Convert ``src`` (a dataset .npz, an LSWMD.pkl or a PNG folder) to the data contract.

    Args:
        src: Input path.
        size: Resize every map to ``size`` x ``size`` with nearest-neighbour;
            None keeps each map's own size (variable layout).
        limits: Decoding bounds (:class:`DecodeLimits`); the defaults admit the whole WM-811K table.
        unlabeled_ok: A PNG folder without class subfolders is read as unlabeled maps (a pool) instead of
            being refused for its layout.

    Returns:
        An :class:`IngestResult`; nothing is written.

    Raises:
        DataError: for any invalid input, with what is wrong and how to fix it; whatever else a bad file makes
            the readers raise is turned into one, naming the file.
    """
    limits = limits or DecodeLimits()
    fmt = detect_format(src)
    reader = {"npz": ingest_npz, "lswmd": ingest_lswmd, "png": ingest_png_folder}[fmt]
    options = {"unlabeled_ok": True} if unlabeled_ok and fmt == "png" else {}
    try:
        result = reader(src, size=size, limits=limits, **options)
        result.dataset.validate()
        if result.unlabeled is not None:
            result.unlabeled.validate()
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{src}: reading it ran out of memory; lower --max-decoded-mib so that such files are "
                        "refused early, or check that the file is not corrupt") from None
    except Exception as e:  # noqa: BLE001 - a bad file must end in one clear line, not a traceback
        raise DataError(f"{src} could not be read as {fmt} ({type(e).__name__}: {str(e)[:200]}); the file is "
                        "corrupt or not in the expected layout (if it is valid, please report this)") from None
    return result


def default_unlabeled_path(out: str | Path) -> Path:
    """``NAME.npz`` -> ``NAME.unlabeled.npz`` next to it."""
    p = Path(out)
    return p.with_name((p.stem if p.suffix == ".npz" else p.name) + ".unlabeled.npz")


def write_ingest(result: IngestResult, out: str | Path, unlabeled_out: str | Path | None = None) -> dict[str, Any]:
    """Write the ingest result all or nothing.

    Every file (dataset, unlabeled dataset, their manifests) is written to a temporary sibling and renamed
    into place only when all were written; a failure leaves no new file. An unlabeled file of an earlier
    ingest at the unlabeled path is removed when this result has no unlabeled maps, so none goes stale.

    Returns:
        ``{"out": path, "manifest": {...}, "unlabeled_out": path | None, ...}``.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"--out must end in .npz, got {out}")
    result.dataset.validate()
    unl_path = Path(unlabeled_out) if unlabeled_out is not None else default_unlabeled_path(out)
    if unl_path.suffix != ".npz":
        raise DataError(f"--unlabeled-out must end in .npz, got {unl_path}")
    if unl_path.resolve() == out.resolve():
        raise DataError("--unlabeled-out must differ from --out")
    if result.unlabeled is not None:
        result.unlabeled.validate()
    src = result.report.get("source")
    info: dict[str, Any] = {"out": str(out), "manifest_path": str(manifest_path(out)), "unlabeled_out": None}
    try:
        with StagedFiles() as st:
            info["manifest"] = save_dataset(result.dataset, out, source=src, extra={"ingest": result.report},
                                            staged=st)
            if result.unlabeled is not None:
                save_dataset(result.unlabeled, unl_path, source=src, extra={"ingest": result.report}, staged=st)
                info["unlabeled_out"], info["unlabeled_maps"] = str(unl_path), len(result.unlabeled)
            else:
                st.remove(unl_path)
                st.remove(manifest_path(unl_path))
            st.commit()
    except OSError as e:
        raise DataError(f"could not write {out} ({e.strerror or e}: {e.filename or ''}); nothing was written. "
                        "Check that the output folders exist and are writable") from None
    return info
