"""Crafted inputs against ingest and split (issue 14): each is refused with one clear line or accepted within the
limits; no signal death, no traceback, no partial or stale output, nothing executed."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from crafted import (bad_block_placement_pickle, forged_dtype_pickle, grey_png, lswmd_frame, memo_bomb_xz, npz_bytes, npz_declaring,
                     png_header_only, valid_arrays)

from waferflow.cli import main
from waferflow.data.contract import load_dataset, save_dataset
from waferflow.data.ingest import DecodeLimits, ingest, write_ingest
from waferflow.data.split import split_dataset, write_split
from waferflow.data.synth import generate
from waferflow.errors import DataError

REPO = Path(__file__).resolve().parents[2]


def _cli_err(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --------------------------------------------------------------------------- pickles
def test_forged_object_dtype_does_not_crash_the_process(tmp_path):
    src = forged_dtype_pickle(tmp_path / "forged.pkl")
    env = {**os.environ, "WAFERFLOW_PROGRESS": "0"}
    r = subprocess.run([sys.executable, "-m", "waferflow", "ingest", str(src), "--out", str(tmp_path / "o.npz")],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])  # not 139 / -11 (segfault)
    assert "forged numpy dtype" in r.stderr and r.stderr.strip().count("\n") == 0
    assert not (tmp_path / "o.npz").exists()


def test_forged_dtype_with_null_pointer_is_refused_not_accepted(tmp_path, capsys):
    src = forged_dtype_pickle(tmp_path / "forged0.pkl", pointer=b"\0" * 8)
    assert "forged numpy dtype" in _cli_err(capsys, ["ingest", str(src), "--out", str(tmp_path / "o.npz")])
    assert _files(tmp_path) == ["forged0.pkl"]


def test_memo_bomb_is_refused_before_it_expands(tmp_path, capsys):
    src = memo_bomb_xz(tmp_path / "bomb.pkl.xz")
    assert src.stat().st_size < 2000
    err = _cli_err(capsys, ["ingest", str(src), "--out", str(tmp_path / "o.npz")])
    assert "same array object" in err
    assert _files(tmp_path) == ["bomb.pkl.xz"]


def test_decoded_size_limit_names_itself_and_how_to_raise_it(tmp_path, dump_pickle, capsys):
    df = lswmd_frame(3)
    df["waferMap"] = [np.zeros((600, 600), np.uint8) for _ in range(3)]  # 3 distinct maps, 1.03 MiB
    src = dump_pickle(df, tmp_path / "big.pkl")
    err = _cli_err(capsys, ["ingest", str(src), "--out", str(tmp_path / "o.npz"), "--max-decoded-mib", "1"])
    assert "limit of 1 MiB (--max-decoded-mib)" in err and "raise" in err
    assert main(["ingest", str(src), "--out", str(tmp_path / "o.npz"), "--max-decoded-mib", "4"]) == 0


@pytest.mark.parametrize("locs", [[10**6, 2, 1], [-10**6, 2, 1], [0, 0, 0]])
def test_forged_block_placement_is_one_clear_error(tmp_path, capsys, locs):
    src = bad_block_placement_pickle(tmp_path / "blocks.pkl", locs)
    assert "blocks.pkl" in _cli_err(capsys, ["ingest", str(src), "--out", str(tmp_path / "o.npz")])
    assert _files(tmp_path) == ["blocks.pkl"]


@pytest.mark.parametrize("cell,msg", [
    (7.0, "holds a int|holds a float"),
    (np.array([[3]]), "holds a int"),
    ([[[[[[["Center"]]]]]]], "nested deeper"),
])
def test_odd_label_cells_are_refused_without_recursion(tmp_path, dump_pickle, cell, msg):
    df = lswmd_frame(2)
    df.at[1, "failureType"] = cell
    with pytest.raises(DataError, match=msg):
        ingest(dump_pickle(df, tmp_path / "t.pkl"))


def test_map_pixel_limit_on_pickles(tmp_path, dump_pickle):
    df = lswmd_frame(2)
    with pytest.raises(DataError, match=r"over the limit of 100 \(--max-map-pixels\)"):
        ingest(dump_pickle(df, tmp_path / "t.pkl"), limits=DecodeLimits(max_map_pixels=100))


# --------------------------------------------------------------------------- npz
def test_npz_declaring_a_huge_array_is_refused(tmp_path, capsys):
    src = npz_declaring(tmp_path / "decl.npz", "maps", (10**12, 1, 1))
    err = _cli_err(capsys, ["ingest", str(src), "--out", str(tmp_path / "o.npz")])
    assert "'maps' declares" in err and "--max-decoded-mib" in err


def test_npz_extra_keys_are_never_read(tmp_path):
    arrays = {**valid_arrays(), "junk": np.array([{"a": 1}], dtype=object)}  # reading it would need pickle
    src = tmp_path / "x.npz"
    src.write_bytes(npz_bytes(arrays, compressed=True))
    assert len(ingest(src).dataset) == 6
    del arrays["junk"]
    arrays["maps"] = np.array([{"a": 1}], dtype=object)
    src.write_bytes(npz_bytes(arrays))
    with pytest.raises(DataError, match="pickled object arrays"):
        ingest(src)


def test_shapes_beyond_int32_are_refused_not_wrapped(tmp_path):
    src = tmp_path / "v.npz"
    src.write_bytes(npz_bytes({"maps_flat": np.ones(4, np.uint8), "shapes": np.array([[2**32 + 2, 2]], np.int64),
                               "offsets": np.array([0, 4]), "labels": np.array([0]), "class_names": np.array(["a"])}))
    with pytest.raises(DataError, match="'shapes' holds 4294967298, outside 0..2147483647"):
        ingest(src)


# --------------------------------------------------------------------------- PNG folders
def _png_root(tmp_path: Path) -> Path:
    root = tmp_path / "pngs"
    (root / "a").mkdir(parents=True)
    grey_png(root / "a" / "0.png", np.zeros((8, 8)) + 1)
    return root


@pytest.mark.parametrize("side,msg", [(10000, "over the limit of"), (20000, "over the limit of|not a readable PNG")])
def test_huge_png_is_refused_from_its_header(tmp_path, capsys, side, msg):
    root = _png_root(tmp_path)
    png_header_only(root / "a" / "big.png", side, side)
    err = _cli_err(capsys, ["ingest", str(root), "--out", str(tmp_path / "o.npz")])
    assert "big.png" in err and any(m in err for m in msg.split("|"))


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_other_formats_named_png_are_refused(tmp_path, fmt):
    root = _png_root(tmp_path)
    grey_png(root / "a" / "fake.png", np.ones((8, 8)), fmt=fmt)
    with pytest.raises(DataError, match="fake.png is not a PNG file"):
        ingest(root)


def test_symlinks_refused_unless_allowed_and_inside(tmp_path):
    root = _png_root(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    grey_png(outside / "o.png", np.ones((8, 8)))
    (root / "b").symlink_to(outside, target_is_directory=True)
    with pytest.raises(DataError, match="is a symlink"):
        ingest(root)
    with pytest.raises(DataError, match="outside"):
        ingest(root, limits=DecodeLimits(allow_symlinks=True))
    (root / "b").unlink()
    (root / "b").mkdir()
    (root / "b" / "link.png").symlink_to(root / "a" / "0.png")
    with pytest.raises(DataError, match="link.png is a symlink"):
        ingest(root)
    assert len(ingest(root, limits=DecodeLimits(allow_symlinks=True)).dataset) == 2


@pytest.mark.parametrize("bad", [" lead", "trail ", "new\nline"])
def test_class_names_that_are_not_plain_folder_names_are_refused(tmp_path, bad):
    root = _png_root(tmp_path)
    (root / bad).mkdir()
    grey_png(root / bad / "0.png", np.ones((8, 8)))
    with pytest.raises(DataError, match="not a plain folder name"):
        ingest(root)


# --------------------------------------------------------------------------- all or nothing on disk
def test_failing_unlabeled_out_leaves_no_main_output(tmp_path, lswmd_small, capsys):
    blocker = tmp_path / "taken.npz"
    blocker.mkdir()  # a folder where the unlabeled file must go: its rename fails
    err = _cli_err(capsys, ["ingest", str(lswmd_small), "--out", str(tmp_path / "main.npz"),
                            "--unlabeled-out", str(blocker)])
    assert "nothing was written" in err
    assert _files(tmp_path) == ["taken.npz"] and _files(blocker) == []


def test_reingest_removes_a_stale_unlabeled_file(tmp_path, lswmd_small, wm811k_small):
    out = tmp_path / "d.npz"
    info = write_ingest(ingest(lswmd_small), out)
    assert Path(info["unlabeled_out"]).exists() and (tmp_path / "d.unlabeled.json").exists()
    write_ingest(ingest(wm811k_small), out)
    assert _files(tmp_path) == ["d.json", "d.npz"]


@pytest.fixture
def labeled():
    return generate(120, size=16, seed=0, taxonomy="wm811k")


def test_resplit_replaces_the_folder_as_a_whole(tmp_path, labeled):
    out = tmp_path / "split"
    write_split(split_dataset(labeled, val=0.15, test=0.15, seed=0), out)
    assert (out / "test.npz").exists()
    write_split(split_dataset(labeled, val=0.2, test=0.0, seed=1), out)
    assert "test.npz" not in _files(out) and "test.json" not in _files(out)
    assert _files(tmp_path) == ["split"]  # no temporary folder left behind


def test_failed_split_leaves_the_old_folder_untouched(tmp_path, labeled, monkeypatch):
    import waferflow.data.split as S

    out = tmp_path / "split"
    write_split(split_dataset(labeled, seed=0), out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_on_val(ds, path, **kw):
        if Path(path).name == "val.npz":
            raise OSError("disk full")
        return save_dataset(ds, path, **kw)

    monkeypatch.setattr(S, "save_dataset", fail_on_val)
    with pytest.raises(OSError):
        write_split(split_dataset(labeled, seed=1), out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _files(tmp_path) == ["split"]


def test_split_refuses_a_folder_with_other_files(tmp_path, labeled):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="holds files that a split does not write"):
        write_split(split_dataset(labeled, seed=0), out)
    assert _files(out) == ["notes.txt"]


def test_written_dataset_round_trips(tmp_path, labeled):
    save_dataset(labeled, tmp_path / "x.npz")
    assert np.array_equal(load_dataset(tmp_path / "x.npz").maps, labeled.maps)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json", "x.npz"]


def test_compressed_stream_is_counted_against_the_limit(tmp_path):
    import lzma
    import pickle

    df = lswmd_frame(3)
    df["lotName"] = [f"{i}" + "x" * 600_000 for i in range(3)]  # 1.7 MiB of strings, a few KiB compressed
    src = tmp_path / "s.pkl.xz"
    src.write_bytes(lzma.compress(pickle.dumps(df, protocol=5)))
    assert src.stat().st_size < 10_000
    with pytest.raises(DataError, match="decompressed pickle stream would pass the limit of 1 MiB"):
        ingest(src, limits=DecodeLimits(max_decoded_mib=1))
    assert len(ingest(src, limits=DecodeLimits(max_decoded_mib=8)).dataset) == 3


@pytest.mark.parametrize("key,value,msg", [
    ("class_names", np.zeros((2, 2, 2)), "'class_names' must be a 1-D array"),
    ("labels", np.array([b"a"] * 6), "'labels' must be integers"),
    ("maps", np.zeros((6, 4, 4), dtype="V1"), "not numeric"),
])
def test_npz_with_odd_arrays_is_one_clear_error_naming_the_file(tmp_path, key, value, msg):
    src = tmp_path / "odd.npz"
    src.write_bytes(npz_bytes({**valid_arrays(), key: value}))
    with pytest.raises(DataError, match=f"odd.npz.*{msg}"):
        load_dataset(src)
