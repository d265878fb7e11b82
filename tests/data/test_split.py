"""Split: stratified and seeded, lot-aware, few-label regime, duplicates, manifest, and bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset, dataset_hash, load_dataset
from waferflow.data.ingest import ingest
from waferflow.data.split import map_hashes, split_dataset, write_split
from waferflow.errors import DataError


def toy(n=300, k=4, lots_per=None, seed=0, size=6) -> WaferDataset:
    """Distinct random maps; class k has frequency ~ 1/(k+1); optional lots of ``lots_per`` maps."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, k + 1)
    labels = rng.choice(k, size=n, p=p / p.sum())
    maps = rng.integers(0, 3, (n, size, size)).astype(np.uint8)
    lots = None if lots_per is None else np.array([f"lot{i // lots_per}" for i in range(n)])
    return WaferDataset(class_names=[f"c{i}" for i in range(k)], labels=labels, maps=maps, lots=lots)


def _rows(ds):
    return {m.tobytes() for m in ds.maps}


def test_stratified_partition_and_proportions():
    ds = toy()
    r = split_dataset(ds, val=0.2, test=0.2, seed=3)
    idx = np.concatenate([r.indices[k] for k in ("train", "val", "test")])
    assert sorted(idx.tolist()) == list(range(len(ds)))  # a partition: every map once
    assert len(r.test) == 60 and len(r.val) == 60
    full = np.bincount(ds.labels, minlength=4) / len(ds)
    for part in (r.train, r.val, r.test):
        frac = np.bincount(part.labels, minlength=4) / len(part)
        assert np.abs(frac - full).max() < 0.03
    assert r.manifest["splits"]["test"]["content_sha256"] == dataset_hash(r.test)
    assert r.manifest["lot_aware"] is False


def test_same_seed_same_split_other_seed_differs():
    ds = toy()
    a, b, c = (split_dataset(ds, seed=s) for s in (1, 1, 2))
    assert all(np.array_equal(a.indices[k], b.indices[k]) for k in a.indices)
    assert not np.array_equal(a.indices["test"], c.indices["test"])


def test_lot_aware_no_lot_in_two_splits():
    ds = toy(n=400, lots_per=10)
    r = split_dataset(ds, val=0.15, test=0.15, seed=0)
    lots = [set(getattr(r, k).lots.tolist()) for k in ("train", "val", "test")]
    assert not (lots[0] & lots[1]) and not (lots[0] & lots[2]) and not (lots[1] & lots[2])
    assert r.manifest["lot_aware"] is True and not r.manifest["notes"]
    assert 0.08 < len(r.test) / len(ds) < 0.25 and 0.08 < len(r.val) / len(ds) < 0.25
    assert sum(r.manifest["splits"][k]["n_lots"] for k in ("train", "val", "test")) == 40
    # per-wafer split is still available on request
    assert split_dataset(ds, lot_aware=False).manifest["lot_aware"] is False


def test_lot_aware_on_lswmd_fixture_small_classes_fallback(lswmd_small):
    ds = ingest(lswmd_small).dataset
    r = split_dataset(ds, seed=0)
    lots = [set(getattr(r, k).lots.tolist()) for k in ("train", "val", "test")]
    assert not (lots[0] & lots[1]) and not (lots[0] & lots[2]) and not (lots[1] & lots[2])
    assert r.manifest["notes"] and "GroupShuffleSplit" in r.manifest["notes"][0]


def test_lot_aware_keeps_the_lots_of_a_class_with_one_or_two_maps_in_train():
    """A class with fewer than 3 maps cannot be in every split; as without lots, it goes to train, with its lots."""
    ds = toy(n=400, lots_per=10)
    y = ds.labels.copy()
    rare = [int(np.flatnonzero(ds.lots == ds.lots[0])[3]), int(np.flatnonzero(ds.lots == ds.lots[-1])[5])]
    y[rare] = ds.num_classes - 1
    y[(y == ds.num_classes - 1) & ~np.isin(np.arange(len(y)), rare)] = 0  # the last class: exactly two maps
    ds.labels = y
    for seed in range(4):
        r = split_dataset(ds, seed=seed)
        assert set(rare) <= set(r.indices["train"].tolist())
        train_lots = set(r.train.lots.tolist())
        assert {ds.lots[i] for i in rare} <= train_lots
        assert not train_lots & (set(r.val.lots.tolist()) | set(r.test.lots.tolist()))
        assert r.manifest["small_classes"] == [ds.class_names[-1]]
        assert any("go to train whole" in n for n in r.manifest["notes"])
        assert len(r.val) and len(r.test)


def test_too_few_lots():
    ds = toy(n=40, lots_per=20)
    with pytest.raises(DataError, match="at least 3 lots"):
        split_dataset(ds)


def test_labels_per_class_limits_train_only():
    ds = toy(n=400)
    full = split_dataset(ds, seed=5)
    few = split_dataset(ds, seed=5, labels_per_class=7)
    assert max(few.train.class_counts().values()) == 7
    assert all(v <= 7 for v in few.train.class_counts().values())
    assert np.array_equal(few.indices["val"], full.indices["val"])
    assert np.array_equal(few.indices["test"], full.indices["test"])
    assert len(few.train) + len(few.unlabeled) == len(full.train) and not few.unlabeled.labeled
    assert _rows(few.train).isdisjoint(_rows(few.unlabeled))


def test_label_fraction():
    ds = toy(n=400)
    full = split_dataset(ds, seed=0)
    r = split_dataset(ds, seed=0, label_fraction=0.1)
    for c, n in full.train.class_counts().items():
        assert r.train.class_counts()[c] == max(1, int(np.ceil(0.1 * n)))


def test_small_classes_go_to_train_and_are_listed():
    ds = toy(n=200, k=3)
    labels = ds.labels.copy()
    labels[:2] = 3  # a fourth class with two maps
    ds = WaferDataset(class_names=["a", "b", "c", "rare"], labels=labels, maps=ds.maps)
    r = split_dataset(ds, seed=0)
    assert r.manifest["small_classes"] == ["rare"]
    assert r.train.class_counts()["rare"] == 2 and r.test.class_counts()["rare"] == 0


def test_duplicates_across_splits_are_reported():
    ds = toy(n=200)
    maps = ds.maps.copy()
    maps[100:120] = maps[0]  # 21 copies of one map
    r = split_dataset(WaferDataset(class_names=ds.class_names, labels=ds.labels, maps=maps), seed=0)
    dup = r.manifest["duplicates_across_splits"]
    assert dup["n_groups"] == 1 and dup["n_maps"] == 21
    assert len(dup["groups"][0]["splits"]) >= 2
    assert dup["groups"][0]["map_sha256"] == map_hashes(ds.subset([0]))[0]
    assert split_dataset(ds, seed=0).manifest["duplicates_across_splits"]["n_groups"] == 0


def test_duplicates_differ_by_shape():
    a = np.zeros(12, np.uint8)
    ds = WaferDataset(class_names=["x"], labels=[0, 0], maps_flat=np.concatenate([a, a]),
                      shapes=np.array([[3, 4], [4, 3]], np.int32), offsets=np.array([0, 12, 24]))
    h = map_hashes(ds)
    assert h[0] != h[1]


@pytest.mark.parametrize("kw,msg", [
    (dict(val=1.0), "fraction"),
    (dict(test=-0.1), "fraction"),
    (dict(val=0.5, test=0.5), "leaves nothing"),
    (dict(labels_per_class=0), ">= 1"),
    (dict(label_fraction=0.0), r"\(0, 1\]"),
    (dict(labels_per_class=3, label_fraction=0.5), "not both"),
])
def test_bad_arguments(kw, msg):
    with pytest.raises(DataError, match=msg):
        split_dataset(toy(n=60), **kw)


def test_unlabeled_and_too_small_datasets():
    ds = toy(n=30)
    with pytest.raises(DataError, match="needs labels"):
        split_dataset(WaferDataset(class_names=ds.class_names, maps=ds.maps))
    with pytest.raises(DataError, match="cannot stratify"):
        split_dataset(toy(n=12, k=4), val=0.1, test=0.1)


def test_write_split_files_and_manifest(tmp_path, wm811k_small):
    ds = load_dataset(wm811k_small)
    r = split_dataset(ds, seed=0, labels_per_class=5)
    man = write_split(r, tmp_path / "s")
    on_disk = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(man))
    for k in ("train", "val", "test", "unlabeled"):
        loaded = load_dataset(tmp_path / "s" / f"{k}.npz")
        assert dataset_hash(loaded) == man["splits"][k]["content_sha256"]
    assert man["splits"]["train"]["class_counts"] == {c: 5 for c in ds.class_names}
    assert sum(man["splits"][k]["n_maps"] for k in ("train", "val", "test", "unlabeled")) == len(ds)


def test_write_split_refuses_file_as_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        write_split(split_dataset(toy(n=60)), tmp_path / "f")


def test_inspect_summary_numbers():
    from waferflow.data.inspect import format_summary, inspect_dataset

    maps = np.zeros((4, 2, 2), np.uint8)
    maps[:, 0, :] = 1
    maps[0, 1, 1] = 2  # map 0: 2 pass + 1 fail among 3 on-wafer dies
    ds = WaferDataset(class_names=["a", "b", "empty"], labels=[0, 0, 1, 1], maps=maps, lots=["x", "x", "y", "z"])
    s = inspect_dataset(ds)
    assert [c["count"] for c in s["classes"]] == [2, 2, 0]
    assert s["classes"][0]["fail_fraction"] == pytest.approx((1 / 3 + 0) / 2)
    assert s["classes"][2]["fail_fraction"] is None and s["n_lots"] == 3
    assert s["values"] == pytest.approx({"off_wafer": 7 / 16, "pass": 8 / 16, "fail": 1 / 16})
    text = format_summary(s)
    assert "empty" in text and "lots: 3" in text


def test_sample_pool_bounds_the_pool_evenly_over_lots():
    from waferflow.data.split import sample_pool

    ds = toy(n=400, lots_per=None, seed=3)
    lots = np.array(["big"] * 300 + [f"small{i // 20}" for i in range(100)])
    ds = WaferDataset(class_names=ds.class_names, maps=ds.maps, lots=lots)  # unlabeled, one big lot
    small, rep = sample_pool(ds, 100, seed=0)
    assert len(small) == 100 and rep == {"pool": 400, "kept": 100, "lots": 6}
    kept = dict(zip(*np.unique(small.lots, return_counts=True)))
    assert kept["big"] == 75 and all(kept[f"small{i}"] == 5 for i in range(5))  # each lot its share
    assert len(_rows(small)) == 100 and _rows(small) <= _rows(ds)  # distinct maps of the pool, none made up
    same, rep = sample_pool(ds, 0)
    assert same is ds and rep["kept"] == 400
    plain, rep = sample_pool(WaferDataset(class_names=(), maps=ds.maps), 50, seed=1)
    assert len(plain) == 50 and rep["lots"] is None
