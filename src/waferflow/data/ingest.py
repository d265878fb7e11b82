"""Ingest real wafer maps into the data contract.

Three sources are understood (see :func:`ingest`):

* a dataset ``.npz`` in either layout of the contract (extra keys such as
  ``maps_64`` or ``orig_index`` are ignored);
* WM-811K's ``LSWMD.pkl``, a pandas DataFrame pickle. A pickle can run code
  when it is loaded, so it is read only through :class:`SafeDataFrameUnpickler`,
  which admits an explicit allow-list of numpy/pandas globals and refuses
  everything else before it is imported;
* a folder of PNG images with one subfolder per class.

Unlabeled rows of an LSWMD table become a separate, unlabeled dataset
(adaptive BN and drift use it).
"""

from __future__ import annotations

import lzma
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from waferflow.data.contract import (
    VALID_VALUES,
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


class SafeDataFrameUnpickler(pickle.Unpickler):
    """C unpickler that admits only the allow-listed numpy/pandas globals.

    Args:
        file: A binary file object.
        source: Name used in error messages.
    """

    def __init__(self, file: Any, source: str = "pickle") -> None:
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return _resolve(module, name, self.source, super().find_class)


def _compat_unpickler(file: Any, source: str) -> pickle.Unpickler:
    """pandas' pure-Python compat unpickler (old pickle layouts) with the same allow-list."""
    from pandas.compat import pickle_compat

    class _Safe(pickle_compat.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("_codecs", "encode"):
                return _latin1_encode
            return _resolve(module, name, source, super().find_class)

    return _Safe(file, encoding="latin1")


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


def safe_load_dataframe(path: str | Path) -> Any:
    """Load a pandas DataFrame pickle through the allow-list unpickler.

    Tries the fast C unpickler first and falls back to pandas' compat unpickler
    for pickles written by old pandas versions; both refuse any global that is
    not on the allow-list, before importing it. gzip/bz2/xz-compressed pickles
    and a zip holding one ``.pkl`` are read as well.

    Raises:
        DataError: for a refused global, a truncated/corrupt file, or an object
            that is not a DataFrame.
    """
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p} does not exist")
    errors: list[str] = []
    for make in (lambda f: SafeDataFrameUnpickler(f, p.name), lambda f: _compat_unpickler(f, p.name)):
        try:
            with _open_pickle(p) as f:
                obj = make(f).load()
            break
        except DataError:
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
                ImportError, MemoryError, UnicodeDecodeError, OSError, zipfile.BadZipFile, lzma.LZMAError) as e:
            # OSError covers gzip/zip CRC and header errors of compressed files.
            errors.append(f"{type(e).__name__}: {e}")
    else:
        raise DataError(
            f"{p} could not be unpickled ({errors[-1]}); is it truncated or corrupt? Re-download LSWMD.pkl "
            "or check that it is a pandas DataFrame pickle"
        )
    if not isinstance(obj, pd.DataFrame):
        raise DataError(f"{p} holds a {type(obj).__name__}, not a pandas DataFrame; expected a WM-811K LSWMD table")
    return obj


# --------------------------------------------------------------------------- results
@dataclass
class IngestResult:
    """What :func:`ingest` produced.

    Attributes:
        dataset: The main dataset (the labeled rows of an LSWMD table; the whole
            input for ``.npz`` and PNG sources).
        unlabeled: Unlabeled LSWMD rows as an unlabeled dataset, or None.
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
    flat = np.concatenate([m.ravel() for m in maps]).astype(np.uint8) if maps else np.zeros(0, np.uint8)
    return WaferDataset(class_names=class_names, labels=labels, maps_flat=flat, shapes=shapes, offsets=offsets,
                        lots=lots, meta=meta)


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise DataError(f"--size must be a positive integer, got {size!r}")


# --------------------------------------------------------------------------- npz
def ingest_npz(path: str | Path, size: int | None = None) -> IngestResult:
    """Read a dataset ``.npz`` (either layout; ``label`` alias and extra keys allowed)."""
    _check_size(size)
    ds = load_dataset(path)
    if size is not None:
        ds = WaferDataset(class_names=ds.class_names, labels=ds.labels, maps=ds.resized(size), lots=ds.lots,
                          meta=dict(ds.meta))
    return IngestResult(dataset=ds, report={"source": str(path), "format": "npz", "n_maps": len(ds)})


# --------------------------------------------------------------------------- LSWMD
def _label_of(value: Any, row: int) -> str | None:
    """WM-811K label cell -> class name, or None when unlabeled ([['Center']], [], '', NaN)."""
    if isinstance(value, np.ndarray) and value.dtype != object:  # fast path: [['Center']] or an empty array
        if value.size == 0:
            return None
        if value.size == 1:
            return _label_of(value.flat[0].item(), row)
    if value is None:
        return None
    if isinstance(value, float) and np.isnan(value):
        return None
    if isinstance(value, (str, bytes)):
        s = value.decode() if isinstance(value, bytes) else value
        return s.strip() or None
    arr = np.asarray(value, dtype=object)
    if arr.size == 0:
        return None
    if arr.size != 1:
        raise DataError(f"row {row}: failureType holds {arr.size} values ({arr.ravel()[:3].tolist()}...); "
                        "expected one nested label such as [['Center']] or an empty array")
    return _label_of(arr.ravel()[0], row)


def _map_of(value: Any, row: int, source: str) -> np.ndarray:
    m = np.asarray(value)
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


def ingest_lswmd(path: str | Path, size: int | None = None) -> IngestResult:
    """Read WM-811K ``LSWMD.pkl`` safely; labeled rows -> dataset, unlabeled rows -> ``unlabeled``.

    Class names are WM-811K's nine names (same indices as the shared ``.npz``
    files) when every label is one of them, else the sorted set of labels.
    ``lotName`` becomes ``lots``.

    Raises:
        DataError: refused pickle content, missing columns, bad maps or labels.
    """
    from tqdm import tqdm

    _check_size(size)
    p = Path(path)
    df = safe_load_dataframe(p)
    missing = [c for c in LSWMD_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{p.name}: missing column(s) {missing}; an LSWMD table has waferMap, dieSize, lotName, "
                        f"waferIndex, trianTestLabel, failureType (found {list(df.columns)})")
    if len(df) == 0:
        raise DataError(f"{p.name}: the table has no rows; nothing to ingest")
    wafer_col = df["waferMap"].to_numpy()
    label_col = df["failureType"].to_numpy()
    lot_col = df["lotName"].astype(str).to_numpy() if "lotName" in df.columns else None

    maps: list[np.ndarray] = []
    names: list[str | None] = []
    for i in tqdm(range(len(df)), desc=f"ingest {p.name}", unit="map", disable=not progress_enabled()):
        maps.append(_map_of(wafer_col[i], i, p.name))
        names.append(_label_of(label_col[i], i))

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

    report = {"source": source, "format": "lswmd", "rows": len(df), "labeled": len(labeled_idx),
              "unlabeled": len(unlabeled_idx), "lots": None if lot_col is None else int(len(set(lot_col)))}
    if not labeled_idx:
        # Only unlabeled maps (e.g. a production dump): the main output is that unlabeled set.
        report["note"] = "no labeled rows: the main output is unlabeled"
        return IngestResult(dataset=build(unlabeled_idx, False), unlabeled=None, report=report)
    unl = build(unlabeled_idx, False) if unlabeled_idx else None
    return IngestResult(dataset=build(labeled_idx, True), unlabeled=unl, report=report)


# --------------------------------------------------------------------------- PNG folders
def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path} is not a readable PNG ({e}); is it truncated or corrupt?") from None
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


def ingest_png_folder(path: str | Path, size: int | None = None) -> IngestResult:
    """Read ``path/<class name>/*.png`` greyscale images.

    Grey levels are mapped back to die codes with ONE coding for the whole
    folder: ``raw`` (0/1/2 are the codes themselves) or ``scaled`` (0
    off-wafer, 127 or 128 pass, 255 fail). Any other level, or levels of both
    codings in one folder, is refused as ambiguous.

    Raises:
        DataError: no class folders, no images, unreadable or ambiguous images.
    """
    root = Path(path)
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root} has no class subfolders; lay it out as {root}/<class name>/<map>.png")
    raw_maps: list[np.ndarray] = []
    labels: list[int] = []
    files: list[Path] = []
    for k, d in enumerate(class_dirs):
        for f in sorted(x for x in d.iterdir() if x.suffix.lower() in PNG_SUFFIXES):
            img = _read_png(f)
            if img.ndim != 2 or 0 in img.shape:
                raise DataError(f"{f}: expected a 2-D greyscale image, got shape {img.shape}")
            raw_maps.append(img)
            labels.append(k)
            files.append(f)
    if not raw_maps:
        raise DataError(f"{root}: no .png files in the class subfolders {[d.name for d in class_dirs]}")
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
    maps = [lut[m.astype(np.int64)] for m in raw_maps]
    class_names = tuple(d.name for d in class_dirs)
    ds = _pack(maps, class_names, np.asarray(labels, dtype=np.int64), None, size, str(root))
    return IngestResult(dataset=ds, report={"source": str(root), "format": "png", "coding": coding,
                                            "n_maps": len(maps), "classes": list(class_names)})


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


def ingest(src: str | Path, size: int | None = None) -> IngestResult:
    """Convert ``src`` (a dataset .npz, an LSWMD.pkl or a PNG folder) to the data contract.

    Args:
        src: Input path.
        size: Resize every map to ``size`` x ``size`` with nearest-neighbour;
            None keeps each map's own size (variable layout).

    Returns:
        An :class:`IngestResult`; nothing is written.

    Raises:
        DataError: for any invalid input, with what is wrong and how to fix it.
    """
    fmt = detect_format(src)
    result = {"npz": ingest_npz, "lswmd": ingest_lswmd, "png": ingest_png_folder}[fmt](src, size=size)
    result.dataset.validate()
    if result.unlabeled is not None:
        result.unlabeled.validate()
    return result


def default_unlabeled_path(out: str | Path) -> Path:
    """``NAME.npz`` -> ``NAME.unlabeled.npz`` next to it."""
    p = Path(out)
    return p.with_name((p.stem if p.suffix == ".npz" else p.name) + ".unlabeled.npz")


def write_ingest(result: IngestResult, out: str | Path, unlabeled_out: str | Path | None = None) -> dict[str, Any]:
    """Write the ingest result atomically (each file via temp + rename).

    Both datasets are validated before anything is written, so an invalid
    input leaves no output behind.

    Returns:
        ``{"out": path, "manifest": {...}, "unlabeled_out": path | None, ...}``.
    """
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"--out must end in .npz, got {out}")
    result.dataset.validate()
    unl_path = None
    if result.unlabeled is not None:
        result.unlabeled.validate()
        unl_path = Path(unlabeled_out) if unlabeled_out is not None else default_unlabeled_path(out)
        if unl_path.resolve() == out.resolve():
            raise DataError("--unlabeled-out must differ from --out")
    src = result.report.get("source")
    info: dict[str, Any] = {"out": str(out), "manifest": save_dataset(result.dataset, out, source=src,
                                                                      extra={"ingest": result.report})}
    info["manifest_path"] = str(manifest_path(out))
    info["unlabeled_out"] = None
    if unl_path is not None:
        save_dataset(result.unlabeled, unl_path, source=src, extra={"ingest": result.report})
        info["unlabeled_out"] = str(unl_path)
        info["unlabeled_maps"] = len(result.unlabeled)
    return info
