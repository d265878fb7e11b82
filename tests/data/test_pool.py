"""A run's unlabeled pool: a PNG folder's ``unlabeled/`` subfolder, a flat folder of PNGs, and ``--unlabeled`` files
whose labels are dropped as they are read (``waferflow.data.pool``)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from waferflow.data.contract import load_dataset, save_dataset
from waferflow.data.ingest import UNLABELED_FOLDER, WM811K_CLASSES, ingest, write_ingest
from waferflow.data.pool import drop_known, join_pools, read_pool
from waferflow.data.synth import generate
from waferflow.errors import DataError


def _pngs(folder, n, seed, scale=255):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    maps = []
    for i in range(n):
        m = rng.integers(0, 3, (9 + i, 11)).astype(np.uint8)
        Image.fromarray(np.choose(m, [0, 127, scale]).astype(np.uint8), mode="L").save(folder / f"{i}.png")
        maps.append(m)
    return maps


def test_png_folder_unlabeled_subfolder_is_the_pool_not_a_class(tmp_path):
    root = tmp_path / "maps"
    center, none = _pngs(root / "center", 3, 0), _pngs(root / "none", 2, 1)
    pool = _pngs(root / UNLABELED_FOLDER, 4, 2)
    res = ingest(root)
    assert res.dataset.class_names == ("center", "none") and list(res.dataset.labels) == [0, 0, 0, 1, 1]
    assert np.array_equal(res.dataset.get(3), none[0]) and np.array_equal(res.dataset.get(0), center[0])
    assert len(res.unlabeled) == 4 and not res.unlabeled.labeled
    assert res.unlabeled.class_names == ("center", "none")
    assert all(np.array_equal(res.unlabeled.get(i), m) for i, m in enumerate(pool))
    assert res.report["unlabeled"] == 4 and res.report["n_maps"] == 5 and res.report["coding"] == "scaled"
    # `waferflow ingest` writes the pool beside the dataset, as it does for an LSWMD table's unlabeled rows
    info = write_ingest(res, tmp_path / "maps.npz")
    assert len(load_dataset(info["unlabeled_out"])) == 4 and len(load_dataset(tmp_path / "maps.npz")) == 5


def test_png_folder_one_coding_across_classes_and_pool(tmp_path):
    root = tmp_path / "maps"
    _pngs(root / "center", 2, 0)
    _pngs(root / UNLABELED_FOLDER, 2, 1, scale=2)  # 0/127/2: two codings in one folder
    with pytest.raises(DataError, match="ambiguous grey levels"):
        ingest(root)


def test_flat_and_unlabeled_only_folders_are_a_pool_but_not_data(tmp_path):
    flat = _pngs(tmp_path / "flat", 3, 0)
    # as --data, a folder without class subfolders is refused for its layout, as before
    with pytest.raises(DataError, match="no class subfolders"):
        ingest(tmp_path / "flat")
    res = ingest(tmp_path / "flat", unlabeled_ok=True)
    assert not res.dataset.labeled and len(res.dataset) == 3 and res.unlabeled is None
    assert res.dataset.class_names == (UNLABELED_FOLDER,) and "unlabeled" in res.report["note"]
    assert all(np.array_equal(res.dataset.get(i), m) for i, m in enumerate(flat))
    _pngs(tmp_path / "only" / UNLABELED_FOLDER, 2, 1)
    with pytest.raises(DataError, match="no class subfolders"):
        ingest(tmp_path / "only")
    assert len(read_pool(tmp_path / "only", ("a", "b"), size=16)) == 2
    (tmp_path / "empty" / UNLABELED_FOLDER).mkdir(parents=True)
    with pytest.raises(DataError, match="no .png files"):
        read_pool(tmp_path / "empty", ("a",), size=16)


def test_drop_known_takes_out_maps_of_the_labeled_data_and_of_the_pool(lswmd_small):
    res = ingest(lswmd_small, size=16)
    labeled, own = res.dataset, res.unlabeled
    extra = generate(7, size=16, seed=5)
    extra = extra.__class__(class_names=labeled.class_names, labels=None, maps=extra.maps)
    pool = join_pools(labeled.class_names, labeled.subset([0, 1, 2]), own.subset([4, 5]), extra)
    kept, dropped = drop_known(pool, labeled, own)
    assert dropped == [3, 2] and len(kept) == 7 and np.array_equal(kept.maps, extra.maps)
    same, none = drop_known(extra, labeled, None)
    assert same is extra and none == [0, 0]


def test_read_pool_drops_labels_and_takes_the_labeled_data_class_names(tmp_path, lswmd_small):
    names = ("a", "b", "c")
    src = tmp_path / "labeled_pool.npz"
    ds = generate(12, size=20, seed=3)
    save_dataset(ds, src)
    pool = read_pool(src, names, size=24)
    assert not pool.labeled and pool.class_names == names and len(pool) == 12
    assert pool.resized(24).shape == (12, 24, 24)
    # an LSWMD table: every row is a pool map, its labeled rows too (their labels dropped), lots kept
    table = read_pool(lswmd_small, names, size=32)
    assert len(table) == 48 and not table.labeled and table.lots is not None and len(table.lots) == 48
    assert table.class_names == names
    # a PNG folder with classes and unlabeled/: all of its maps
    root = tmp_path / "pngs"
    _pngs(root / "x", 2, 0)
    _pngs(root / UNLABELED_FOLDER, 3, 1)
    assert len(read_pool(root, names, size=16)) == 5


def test_read_pool_refuses_what_holds_no_maps_or_is_not_maps(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .png files in it"):
        read_pool(tmp_path / "empty", ("a",), size=16)
    (tmp_path / "notes.txt").write_text("not maps")
    with pytest.raises(DataError, match="unknown input format"):
        read_pool(tmp_path / "notes.txt", ("a",), size=16)
    with pytest.raises(DataError, match="does not exist"):
        read_pool(tmp_path / "missing.npz", ("a",), size=16)
    np.savez(tmp_path / "none.npz", maps=np.zeros((0, 8, 8), np.uint8), class_names=np.array(["a"]))
    with pytest.raises(DataError, match="none.npz"):  # an empty file is refused, naming it
        read_pool(tmp_path / "none.npz", ("a",), size=16)


def test_join_pools_joins_what_has_maps(lswmd_small):
    res = ingest(lswmd_small, size=16)
    names = tuple(WM811K_CLASSES)
    assert join_pools(names, None, None) is None
    one = join_pools(names, res.unlabeled, None)
    assert len(one) == 12 and np.array_equal(one.maps, res.unlabeled.maps)
    both = join_pools(names, res.unlabeled, res.dataset)
    assert len(both) == 48 and not both.labeled and both.lots is not None
    # a part without lots: the joined pool has none (sampling by lot needs every map's lot)
    no_lots = generate(5, size=16, seed=0)
    assert join_pools(names, res.unlabeled, no_lots).lots is None
