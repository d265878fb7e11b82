"""The data contract: round trips, both layouts, and every bad-input case with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from waferflow.data.contract import (
    WaferDataset,
    dataset_hash,
    load_dataset,
    manifest_path,
    resize_nearest,
    save_dataset,
)
from waferflow.errors import DataError


def fixed(n=6, size=8, k=3, seed=0) -> WaferDataset:
    rng = np.random.default_rng(seed)
    return WaferDataset(class_names=[f"c{i}" for i in range(k)], labels=np.arange(n) % k,
                        maps=rng.integers(0, 3, (n, size, size)).astype(np.uint8))


def variable(n=5, seed=0) -> WaferDataset:
    rng = np.random.default_rng(seed)
    maps = [rng.integers(0, 3, (int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.uint8) for _ in range(n)]
    shapes = np.array([m.shape for m in maps], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
    return WaferDataset(class_names=["a", "b"], labels=np.arange(n) % 2, maps_flat=np.concatenate([m.ravel() for m in maps]),
                        shapes=shapes, offsets=offsets, lots=[f"L{i // 2}" for i in range(n)])


def save_raw(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make", [fixed, variable])
def test_round_trip_keeps_content_and_bytes_are_deterministic(tmp_path, make):
    ds = make()
    man = save_dataset(ds, tmp_path / "a.npz")
    save_dataset(make(), tmp_path / "b.npz")
    back = load_dataset(tmp_path / "a.npz")
    assert dataset_hash(back) == dataset_hash(ds) == man["content_sha256"]
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert manifest_path(tmp_path / "a.npz").exists()
    for i in range(len(ds)):
        assert np.array_equal(back.get(i), ds.get(i))


def test_shared_wm811k_layout_with_label_alias_and_extra_keys(tmp_path):
    v = variable()
    p = save_raw(tmp_path / "shared.npz", maps_flat=v.maps_flat, shapes=v.shapes, offsets=v.offsets,
                 maps_64=v.resized(64), label=v.labels.astype(np.int8), class_names=np.array(v.class_names),
                 orig_index=np.arange(len(v)) * 7)
    ds = load_dataset(p)
    assert np.array_equal(ds.labels, v.labels) and not ds.fixed_size and len(ds) == len(v)


def test_resize_nearest_keeps_codes():
    m = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    r = resize_nearest(m, 4)
    assert r.shape == (4, 4) and set(np.unique(r)) <= {0, 1, 2}
    assert np.array_equal(r[::2, ::2], m)


def test_fixture_npz_is_valid(wm811k_small):
    ds = load_dataset(wm811k_small, require_labels=True)
    assert len(ds) == 200 and ds.num_classes == 9 and not ds.fixed_size
    assert min(ds.class_counts().values()) > 0


# ------------------------------------------------------------------ bad inputs: each raises and writes nothing
def _bad_cases():
    f = fixed()
    yield "value 3", dict(class_names=f.class_names, labels=f.labels, maps=np.where(f.maps == 2, 3, f.maps)), "values must be 0/1/2"
    yield "negative", dict(class_names=f.class_names, labels=f.labels, maps=f.maps.astype(np.int16) - 1), "values must be 0/1/2"
    nan = f.maps.astype(np.float32)
    nan[2, 1, 1] = np.nan
    yield "NaN", dict(class_names=f.class_names, labels=f.labels, maps=nan), "NaN"
    yield "2-D maps", dict(class_names=f.class_names, labels=f.labels[:1], maps=f.maps[0]), "[N, H, W]"
    yield "label too big", dict(class_names=f.class_names, labels=np.full(len(f), 3), maps=f.maps), "out of range"
    yield "label negative", dict(class_names=f.class_names, labels=np.full(len(f), -1), maps=f.maps), "out of range"
    yield "labels short", dict(class_names=f.class_names, labels=f.labels[:-1], maps=f.maps), "entries but there are"
    yield "lots short", dict(class_names=f.class_names, labels=f.labels, maps=f.maps, lots=np.array(["a"])), "'lots' has"
    yield "empty", dict(class_names=f.class_names, labels=f.labels[:0], maps=f.maps[:0]), "empty"
    v = variable()
    yield "offsets disagree", dict(class_names=v.class_names, labels=v.labels, maps_flat=v.maps_flat, shapes=v.shapes,
                                   offsets=v.offsets + np.r_[0, np.ones(len(v), np.int64)]), "offsets"
    yield "flat truncated", dict(class_names=v.class_names, labels=v.labels, maps_flat=v.maps_flat[:-3], shapes=v.shapes,
                                 offsets=v.offsets), "truncated"
    yield "flat value 7", dict(class_names=v.class_names, labels=v.labels, maps_flat=np.where(v.maps_flat == 1, 7, v.maps_flat),
                               shapes=v.shapes, offsets=v.offsets), "values must be 0/1/2"


@pytest.mark.parametrize("name,kw,msg", list(_bad_cases()), ids=[c[0] for c in _bad_cases()])
def test_bad_dataset_is_refused_and_nothing_written(tmp_path, name, kw, msg):
    out = tmp_path / "out.npz"
    with pytest.raises(DataError, match=msg):
        ds = WaferDataset(**kw)
        save_dataset(ds, out)
    assert list(tmp_path.iterdir()) == []


def test_string_maps_refused_by_loader(tmp_path):
    p = save_raw(tmp_path / "s.npz", maps=np.full((2, 3, 3), "x"), labels=np.zeros(2, int), class_names=np.array(["a"]))
    with pytest.raises(DataError, match="not numeric"):
        load_dataset(p)


def test_float_labels_and_missing_class_names(tmp_path):
    f = fixed()
    with pytest.raises(DataError, match="NaN in 'labels'"):
        load_dataset(save_raw(tmp_path / "a.npz", maps=f.maps, labels=np.full(len(f), np.nan), class_names=np.array(f.class_names)))
    with pytest.raises(DataError, match="integers"):
        load_dataset(save_raw(tmp_path / "b.npz", maps=f.maps, labels=np.full(len(f), 0.5), class_names=np.array(f.class_names)))
    with pytest.raises(DataError, match="no maps found"):
        load_dataset(save_raw(tmp_path / "c.npz", labels=f.labels, class_names=np.array(f.class_names)))
    with pytest.raises(DataError, match="needs"):
        load_dataset(save_raw(tmp_path / "d.npz", maps_flat=np.zeros(4, np.uint8), labels=f.labels[:1], class_names=np.array(["a"])))


def test_class_without_maps_refused_where_required():
    ds = WaferDataset(class_names=["a", "b", "c"], labels=np.zeros(4, int), maps=np.zeros((4, 3, 3), np.uint8))
    ds.validate()  # allowed by default
    with pytest.raises(DataError, match=r"\['b', 'c'\] have no maps"):
        ds.validate(allow_empty_classes=False)


def test_duplicate_class_names_and_missing_labels():
    with pytest.raises(DataError, match="duplicates"):
        WaferDataset(class_names=["a", "a"], labels=[0, 1], maps=np.zeros((2, 3, 3), np.uint8)).validate()
    with pytest.raises(DataError, match="needs labels"):
        WaferDataset(class_names=["a"], maps=np.zeros((2, 3, 3), np.uint8)).validate(require_labels=True)


def test_truncated_corrupt_missing_and_pickled_npz(tmp_path):
    good = tmp_path / "good.npz"
    save_dataset(fixed(n=30, size=16), good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.npz").write_bytes(b"\x00garbage" * 50)
    np.savez(tmp_path / "obj.npz", maps=np.array([np.zeros((2, 2))], dtype=object), class_names=np.array(["a"]))
    for name in ("trunc.npz", "junk.npz"):
        with pytest.raises(DataError, match="truncated or corrupt"):
            load_dataset(tmp_path / name)
    with pytest.raises(DataError, match="pickled object arrays"):
        load_dataset(tmp_path / "obj.npz")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(tmp_path / "nope.npz")


def test_npz_with_corrupted_member_bytes(tmp_path):
    good = tmp_path / "good.npz"
    save_dataset(fixed(n=30, size=16), good)
    data = bytearray(good.read_bytes())
    mid = data.index(b"maps.npy") + 300  # inside the stored 'maps' array
    data[mid:mid + 40] = b"\x07" * 40
    (tmp_path / "crc.npz").write_bytes(bytes(data))
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(tmp_path / "crc.npz")


def test_concat_datasets_keeps_labels_and_lots_in_both_layouts():
    from waferflow.data.contract import concat_datasets

    names = ("a", "b")
    a = WaferDataset(class_names=names, labels=np.array([0, 1]), lots=np.array(["L1", "L1"]),
                     maps=np.ones((2, 4, 4), np.uint8))
    b = WaferDataset(class_names=names, labels=np.array([1]), lots=np.array(["L2"]), maps=np.full((1, 4, 4), 2, np.uint8))
    j = concat_datasets([a, b])
    assert j.fixed_size and list(j.labels) == [0, 1, 1] and list(j.lots) == ["L1", "L1", "L2"]
    c = WaferDataset(class_names=names, labels=np.array([0]), lots=np.array(["L3"]), maps=np.ones((1, 6, 6), np.uint8))
    v = concat_datasets([a, c])
    assert not v.fixed_size and list(v.lots) == ["L1", "L1", "L3"] and v.get(2).shape == (6, 6)
    assert concat_datasets([a, WaferDataset(class_names=names, labels=np.array([0]), maps=b.maps)]).lots is None
    with pytest.raises(DataError, match="cannot join"):
        concat_datasets([a, WaferDataset(class_names=("x", "y"), labels=np.array([0]), maps=b.maps)])


def test_taxonomy_travels_inside_the_npz_and_through_split_and_join(tmp_path):
    from waferflow.data.contract import concat_datasets
    from waferflow.data.synth import generate

    ds = generate(30, size=24, seed=3, taxonomy="seed20")
    save_dataset(ds, tmp_path / "d.npz")
    back = load_dataset(tmp_path / "d.npz")
    assert back.meta["taxonomy"] == "seed20"
    assert back.subset([0, 1]).meta["taxonomy"] == "seed20"
    assert concat_datasets([back.subset([0]), back.subset([1])]).meta["taxonomy"] == "seed20"
    other = generate(5, size=24, seed=4, taxonomy="seed20")
    other.meta.pop("taxonomy")
    assert "taxonomy" not in concat_datasets([back, other]).meta  # unknown on one part: not claimed
    # metadata, not content: the hash of the same maps does not depend on it
    assert dataset_hash(back) == dataset_hash(other.__class__(**{**back.__dict__, "meta": {}}))


def test_a_taxonomy_that_is_not_one_string_is_refused(tmp_path):
    np.savez(tmp_path / "bad.npz", maps=np.ones((2, 8, 8), np.uint8), labels=np.zeros(2, np.int64),
             class_names=np.array(["a"]), taxonomy=np.array([1, 2]))
    with pytest.raises(DataError, match="'taxonomy' must be one string"):
        load_dataset(tmp_path / "bad.npz")
