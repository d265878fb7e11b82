"""Builders of crafted and corrupted inputs for the ingest readers (used by the tests and benchmarks/bench_fuzz.py).

Nothing here is collected by pytest; every builder writes a small file under a given folder.
"""

from __future__ import annotations

import io
import lzma
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np


# --------------------------------------------------------------------------- forged pickles
class _ForgedDtype:
    """Pickles as numpy.dtype('O8') rebuilt from a state with flags=0: an object dtype numpy does not refcount."""

    def __reduce__(self):
        return (np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))


class _ForgedArray:
    """Pickles as _frombuffer(pointer bytes, forged dtype): numpy would read the bytes as a PyObject*."""

    def __init__(self, pointer: bytes) -> None:
        self.pointer = pointer

    def __reduce__(self):
        from numpy._core.numeric import _frombuffer

        return (_frombuffer, (self.pointer, _ForgedDtype(), (1,), "C"))


def lswmd_frame(n: int = 4, seed: int = 0):
    """A small LSWMD-shaped DataFrame (modern pandas), every row labeled."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = [{"waferMap": rng.integers(0, 3, size=(20, 22)).astype(np.uint8), "lotName": f"lot{i}",
             "failureType": np.array([["Center" if i % 2 else "none"]])} for i in range(n)]
    return pd.DataFrame(rows)


def forged_dtype_pickle(path: Path, pointer: bytes = b"AAAAAAAA") -> Path:
    """An LSWMD table whose first label cell is an object array read from raw ``pointer`` bytes."""
    df = lswmd_frame()
    df.at[0, "failureType"] = _ForgedArray(pointer)
    path.write_bytes(pickle.dumps(df, protocol=5))
    return path


def bad_block_placement_pickle(path: Path, locs: list[int]) -> Path:
    """An LSWMD table whose one block claims the column positions ``locs`` (out of range, or repeated)."""
    from pandas._libs.internals import BlockPlacement

    df = lswmd_frame(3)
    df._mgr.blocks[0]._mgr_locs = BlockPlacement(np.asarray(locs, dtype=np.intp))
    path.write_bytes(pickle.dumps(df, protocol=5))
    return path


def memo_bomb_xz(path: Path, side: int = 1000, rows: int = 300) -> Path:
    """An xz pickle whose ``rows`` rows all refer to ONE side x side map through the pickle memo."""
    import pandas as pd

    m = np.zeros((side, side), np.uint8)
    df = pd.DataFrame({"waferMap": [m] * rows, "failureType": [np.array([["none"]])] * rows})
    path.write_bytes(lzma.compress(pickle.dumps(df, protocol=4), preset=9 | lzma.PRESET_EXTREME))
    return path


# --------------------------------------------------------------------------- npz
def npz_bytes(arrays: dict[str, np.ndarray], compressed: bool = False) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def valid_arrays(n: int = 6, side: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"maps": rng.integers(0, 3, size=(n, side, side)).astype(np.uint8),
            "labels": (np.arange(n) % 2).astype(np.int64), "class_names": np.array(["a", "b"])}


def npz_declaring(path: Path, key: str, shape: tuple[int, ...], dtype: str = "|u1") -> Path:
    """A valid dataset plus member ``key`` whose .npy header declares ``shape`` but holds no data."""
    hdr = io.BytesIO()
    np.lib.format.write_array_header_1_0(hdr, {"descr": dtype, "fortran_order": False, "shape": shape})
    body = io.BytesIO(npz_bytes({k: v for k, v in valid_arrays().items() if k != key}))
    with zipfile.ZipFile(body, "a") as zf:
        zf.writestr(key + ".npy", b"\x93NUMPY" + bytes([1, 0]) + hdr.getvalue()[8:])
    path.write_bytes(body.getvalue())
    return path


# --------------------------------------------------------------------------- PNG
def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares width x height greyscale pixels and holds (almost) no image data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1))  # one row; decoding would need all of them
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def grey_png(path: Path, m: np.ndarray, fmt: str = "PNG") -> Path:
    from PIL import Image

    Image.fromarray(m.astype(np.uint8), mode="L").save(path, format=fmt)
    return path


# --------------------------------------------------------------------------- corruption
def corrupt(data: bytes, ops: list[tuple[str, int, int]]) -> bytes:
    """Apply structured corruptions: ("flip", pos, byte), ("cut", pos, _), ("dup", pos, length),
    ("zero", pos, length), ("insert", pos, byte); positions wrap around the data length."""
    b = bytearray(data)
    for op, pos, arg in ops:
        if not b:
            break
        pos %= len(b)
        if op == "flip":
            b[pos] ^= (arg % 255) + 1
        elif op == "cut":
            del b[pos:]
        elif op == "dup":
            b[pos:pos] = b[pos:pos + max(arg % 64, 1)]
        elif op == "zero":
            b[pos:pos + max(arg % 16, 1)] = bytes(len(b[pos:pos + max(arg % 16, 1)]))
        elif op == "insert":
            b.insert(pos, arg % 256)
    return bytes(b)


def seeds(folder: Path, lswmd_fixture: Path) -> dict[str, tuple[str, bytes]]:
    """Valid inputs of each reader to corrupt: name -> (file suffix, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    png = grey_png(folder / "seed.png", np.random.default_rng(0).integers(0, 3, (24, 20)))
    small = pickle.dumps(lswmd_frame(6), protocol=5)
    return {
        "npz": (".npz", npz_bytes(valid_arrays())),
        "npz_compressed": (".npz", npz_bytes(valid_arrays(), compressed=True)),
        "pickle_p5": (".pkl", small),
        "pickle_legacy": (".pkl", lswmd_fixture.read_bytes()),
        "pickle_xz": (".pkl", lzma.compress(small)),
        "png": (".png", png.read_bytes()),
    }


def run_reader(data: bytes, suffix: str, folder: Path) -> str:
    """Ingest one corrupted input; ``"ok"`` or ``"refused"`` (a DataError). Any other exception propagates."""
    from waferflow.data.ingest import DecodeLimits, ingest
    from waferflow.errors import DataError

    limits = DecodeLimits(max_decoded_mib=64, max_map_pixels=1 << 16)
    if suffix == ".png":
        (folder / "cls").mkdir(parents=True, exist_ok=True)
        (folder / "cls" / "x.png").write_bytes(data)
        src = folder
    else:
        src = folder / f"input{suffix}"
        src.write_bytes(data)
    try:
        ingest(src, limits=limits)
        return "ok"
    except DataError as e:
        assert "\n" not in str(e).strip() or len(str(e)) < 2000
        return "refused"
