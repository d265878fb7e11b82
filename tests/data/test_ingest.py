"""Ingest: dataset .npz, LSWMD.pkl through the allow-list unpickler, PNG folders; every bad input refused."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image

from waferflow.data.contract import dataset_hash, load_dataset
from waferflow.data.ingest import (
    WM811K_CLASSES,
    default_unlabeled_path,
    ingest,
    safe_load_dataframe,
    write_ingest,
)
from waferflow.errors import DataError


# ------------------------------------------------------------------ LSWMD
def test_lswmd_fixture_legacy_pickle(lswmd_small):
    res = ingest(lswmd_small)
    ds, unl = res.dataset, res.unlabeled
    assert ds.class_names == WM811K_CLASSES
    assert ds.class_counts() == {c: 4 for c in WM811K_CLASSES}
    assert len(unl) == 12 and not unl.labeled and unl.class_names == WM811K_CLASSES
    assert not ds.fixed_size and ds.lots is not None and len(set(ds.lots) | set(unl.lots)) == 8
    assert res.report == {"source": str(lswmd_small), "format": "lswmd", "rows": 48, "labeled": 36,
                          "unlabeled": 12, "lots": 8}
    # Maps and labels agree with the table row by row.
    df = safe_load_dataframe(lswmd_small)
    lab_rows = [i for i in range(len(df)) if df.failureType.iloc[i].size]
    for j, i in enumerate(lab_rows):
        assert np.array_equal(ds.get(j), df.waferMap.iloc[i])
        assert ds.class_names[ds.labels[j]] == str(np.asarray(df.failureType.iloc[i]).ravel()[0])
        assert ds.lots[j] == df.lotName.iloc[i]


def test_lswmd_resize_is_nearest(lswmd_small):
    ds = ingest(lswmd_small, size=48).dataset
    var = ingest(lswmd_small).dataset
    assert ds.maps.shape == (36, 48, 48) and ds.maps.dtype == np.uint8
    assert np.array_equal(ds.maps, var.resized(48))
    assert set(np.unique(ds.maps)) <= {0, 1, 2}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_modern_pandas_pickles(tmp_path, make_frame, dump_pickle, protocol):
    df = make_frame(n=12, labeled_every=3)
    df = df.rename(columns={"trianTestLabel": "trainTestLabel"})  # the other spelling
    p = dump_pickle(df, tmp_path / "LSWMD.pkl", protocol=protocol)
    res = ingest(p)
    assert len(res.dataset) == 4 and len(res.unlabeled) == 8
    assert np.array_equal(res.dataset.get(1), df.waferMap.iloc[3])


def test_lswmd_foreign_labels_and_all_unlabeled(tmp_path, make_frame, dump_pickle):
    p = dump_pickle(make_frame(n=6, labels=("scratchy", "blob")), tmp_path / "a.pkl")
    assert ingest(p).dataset.class_names == ("blob", "scratchy")
    p = dump_pickle(make_frame(n=5, labeled_every=0), tmp_path / "b.pkl")
    res = ingest(p)
    assert len(res.dataset) == 5 and not res.dataset.labeled and res.unlabeled is None


# ------------------------------------------------------------------ the malicious pickle
def test_malicious_pickle_is_refused_and_command_does_not_run(tmp_path, dump_pickle, evil):
    marker = tmp_path / "pwned"
    p = dump_pickle(evil(f"touch {marker}"), tmp_path / "LSWMD.pkl", protocol=2)
    with pytest.raises(DataError, match=r"refused to load (posix|os|nt)\.system from LSWMD\.pkl"):
        ingest(p)
    assert not marker.exists()


def test_payload_hidden_in_a_dataframe_cell_is_refused(tmp_path, make_frame, dump_pickle, evil):
    marker = tmp_path / "pwned2"
    df = make_frame(n=3)
    df.at[1, "failureType"] = evil(f"touch {marker}")
    p = dump_pickle(df, tmp_path / "LSWMD.pkl")
    with pytest.raises(DataError, match="refused to load"):
        ingest(p)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    b"cbuiltins\neval\n(S'1+1'\ntR.",
    b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03.",
    b"csubprocess\ncheck_output\n(S'true'\ntR.",
    b"cnumpy\nload\n(S'/etc/passwd'\ntR.",
])
def test_other_globals_refused(tmp_path, payload):
    p = tmp_path / "x.pkl"
    p.write_bytes(payload)
    with pytest.raises(DataError, match="refused to load"):
        safe_load_dataframe(p)


# ------------------------------------------------------------------ bad LSWMD inputs
def test_truncated_and_corrupt_pickles(tmp_path, lswmd_small):
    data = lswmd_small.read_bytes()
    (tmp_path / "trunc.pkl").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04" + b"\xff" * 100)
    for name in ("trunc.pkl", "junk.pkl"):
        with pytest.raises(DataError, match="truncated or corrupt"):
            ingest(tmp_path / name)


def test_not_a_dataframe_and_missing_columns(tmp_path, make_frame, dump_pickle):
    with pytest.raises(DataError, match="not a pandas DataFrame"):
        ingest(dump_pickle(np.zeros(3), tmp_path / "arr.pkl"))
    with pytest.raises(DataError, match=r"missing column\(s\) \['failureType'\]"):
        ingest(dump_pickle(make_frame(n=3).drop(columns=["failureType"]), tmp_path / "cols.pkl"))
    with pytest.raises(DataError, match="no rows"):
        ingest(dump_pickle(make_frame(n=3).iloc[:0], tmp_path / "empty.pkl"))


@pytest.mark.parametrize("bad,msg", [
    (np.full((4, 4), 3, np.uint8), "has value 3"),
    (np.full((4, 4), np.nan), "NaN"),
    (np.zeros(5, np.uint8), "2-D"),
    (np.full((3, 3), "a"), "dtype"),
])
def test_bad_wafer_maps_refused_and_nothing_written(tmp_path, make_frame, dump_pickle, bad, msg):
    df = make_frame(n=4)
    df.at[2, "waferMap"] = bad
    p = dump_pickle(df, tmp_path / "LSWMD.pkl")
    out = tmp_path / "out" / "data.npz"
    with pytest.raises(DataError, match=msg):
        write_ingest(ingest(p), out)
    assert not (tmp_path / "out").exists()


def test_multi_value_label_refused(tmp_path, make_frame, dump_pickle):
    df = make_frame(n=3)
    df.at[0, "failureType"] = np.array([["Center", "Loc"]])
    with pytest.raises(DataError, match="expected one nested label"):
        ingest(dump_pickle(df, tmp_path / "LSWMD.pkl"))


# ------------------------------------------------------------------ npz
def test_npz_shared_layout_passes_through(tmp_path, wm811k_small):
    src = load_dataset(wm811k_small)
    p = tmp_path / "shared.npz"
    np.savez(p, maps_flat=src.maps_flat, shapes=src.shapes, offsets=src.offsets, maps_64=src.resized(64),
             label=src.labels.astype(np.int8), class_names=np.array(src.class_names), orig_index=np.arange(len(src)))
    res = ingest(p)
    assert dataset_hash(res.dataset) == dataset_hash(src)
    fixed = ingest(p, size=64).dataset
    assert np.array_equal(fixed.maps, src.resized(64))


def test_npz_bad_values_refused(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, maps=np.full((2, 4, 4), 5, np.uint8), labels=np.zeros(2, int), class_names=np.array(["a"]))
    with pytest.raises(DataError, match="values must be 0/1/2"):
        ingest(p)


def test_bad_size_and_missing_source(tmp_path, lswmd_small):
    with pytest.raises(DataError, match="positive integer"):
        ingest(lswmd_small, size=0)
    with pytest.raises(DataError, match="does not exist"):
        ingest(tmp_path / "nothing.pkl")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="unknown input format"):
        ingest(tmp_path / "notes.txt")


# ------------------------------------------------------------------ PNG folders
def _png_folder(root, scale=1, classes=("center", "none"), n=3, seed=0):
    rng = np.random.default_rng(seed)
    maps = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            m = rng.integers(0, 3, (10 + i, 12)).astype(np.uint8)
            if scale != 1:
                m_img = np.choose(m, [0, scale, 255]).astype(np.uint8)
            else:
                m_img = m
            Image.fromarray(m_img, mode="L").save(root / c / f"{i}.png")
            maps[(c, i)] = m
    return maps


@pytest.mark.parametrize("scale", [1, 127, 128])
def test_png_folder_codings(tmp_path, scale):
    maps = _png_folder(tmp_path / "pngs", scale=scale)
    res = ingest(tmp_path / "pngs")
    ds = res.dataset
    assert ds.class_names == ("center", "none") and list(ds.labels) == [0, 0, 0, 1, 1, 1]
    assert res.report["coding"] == ("raw" if scale == 1 else "scaled")
    assert np.array_equal(ds.get(4), maps[("none", 1)])


def test_png_ambiguous_levels_refused(tmp_path):
    _png_folder(tmp_path / "pngs", scale=127)
    Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), mode="L").save(tmp_path / "pngs" / "none" / "raw.png")
    with pytest.raises(DataError, match="ambiguous grey levels"):
        ingest(tmp_path / "pngs")


def test_png_other_levels_colour_and_corrupt_refused(tmp_path):
    _png_folder(tmp_path / "a")
    Image.fromarray(np.full((4, 4), 60, np.uint8), mode="L").save(tmp_path / "a" / "none" / "odd.png")
    with pytest.raises(DataError, match="ambiguous grey levels"):
        ingest(tmp_path / "a")
    _png_folder(tmp_path / "b")
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[..., 0] = 255
    Image.fromarray(rgb, mode="RGB").save(tmp_path / "b" / "none" / "red.png")
    with pytest.raises(DataError, match="colour image"):
        ingest(tmp_path / "b")
    _png_folder(tmp_path / "c")
    (tmp_path / "c" / "none" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(DataError, match="not a readable PNG"):
        ingest(tmp_path / "c")


def test_png_empty_folders_refused(tmp_path):
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        ingest(tmp_path / "e")
    (tmp_path / "e" / "center").mkdir()
    with pytest.raises(DataError, match="no .png files"):
        ingest(tmp_path / "e")


# ------------------------------------------------------------------ writing
def test_write_ingest_default_unlabeled_path(tmp_path, lswmd_small):
    info = write_ingest(ingest(lswmd_small), tmp_path / "wm.npz")
    assert info["unlabeled_out"] == str(tmp_path / "wm.unlabeled.npz") == str(default_unlabeled_path(tmp_path / "wm.npz"))
    assert len(load_dataset(tmp_path / "wm.npz", require_labels=True)) == 36
    u = load_dataset(tmp_path / "wm.unlabeled.npz")
    assert len(u) == 12 and not u.labeled


def test_write_ingest_refuses_bad_out(tmp_path, lswmd_small):
    res = ingest(lswmd_small)
    with pytest.raises(DataError, match="must end in .npz"):
        write_ingest(res, tmp_path / "x.txt")
    with pytest.raises(DataError, match="must differ"):
        write_ingest(res, tmp_path / "x.npz", unlabeled_out=tmp_path / "x.npz")
    assert list(tmp_path.iterdir()) == []
    res.dataset.labels[0] = 99  # corrupted in memory after ingest: still nothing is written
    with pytest.raises(DataError, match="out of range"):
        write_ingest(res, tmp_path / "y.npz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("old_index,old_mgr", [
    (b"pandas.indexes", b"pandas.core.internals"),  # pandas 0.18-0.19 locations
    (b"pandas.core.index", b"pandas.core.internals"),  # pandas <= 0.17 locations
])
def test_legacy_pandas_class_locations(tmp_path, lswmd_small, old_index, old_mgr):
    # Protocol-2 GLOBAL opcodes are plain text, so the fixture can be moved to older pandas module paths.
    data = lswmd_small.read_bytes()
    if old_index == b"pandas.core.index":
        repl = [(b"pandas.core.indexes.base\n", b"pandas.core.index\n"),
                (b"pandas.core.indexes.numeric\n", b"pandas.core.index\n")]
    else:
        repl = [(b"pandas.core.indexes.", old_index + b".")]
    repl.append((b"pandas.core.internals.managers\nBlockManager", old_mgr + b"\nBlockManager"))
    for a, b in repl:
        assert a in data
        data = data.replace(a, b)
    p = tmp_path / "LSWMD_old.pkl"
    p.write_bytes(data)
    res = ingest(p)
    assert len(res.dataset) == 36 and len(res.unlabeled) == 12
    assert dataset_hash(res.dataset) == dataset_hash(ingest(lswmd_small).dataset)


@pytest.mark.parametrize("kind", ["gzip", "bz2", "xz", "zip"])
def test_compressed_lswmd(tmp_path, lswmd_small, kind):
    import bz2
    import gzip
    import lzma
    import zipfile

    data = lswmd_small.read_bytes()
    p = tmp_path / f"LSWMD.pkl.{kind}"
    if kind == "zip":
        with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("LSWMD.pkl", data)
    else:
        p.write_bytes({"gzip": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[kind](data))
    assert dataset_hash(ingest(p).dataset) == dataset_hash(ingest(lswmd_small).dataset)
    raw = p.read_bytes()
    bad = tmp_path / f"bad.pkl.{kind}"
    bad.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DataError, match="truncated or corrupt"):
        ingest(bad)


def test_zip_without_single_pickle_refused(tmp_path):
    import zipfile

    p = tmp_path / "two.pkl.zip"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("a.pkl", b"x")
        zf.writestr("b.pkl", b"y")
    with pytest.raises(DataError, match="exactly one"):
        ingest(p)
