"""The label queue: uncertain and diverse maps, CSV + PNG sheet, and merging the filled labels back."""

import csv

import numpy as np
import pytest
import torch

from waferflow import labelqueue as LQ
from waferflow.data.contract import WaferDataset, load_dataset, save_dataset
from waferflow.errors import ConfigError, DataError

NAMES = ("vertical", "horizontal")


def variable_maps(n: int, seed: int = 0) -> WaferDataset:
    """Wafers of mixed sizes (12..20 px), 0/1/2 coded, no labels."""
    rng = np.random.default_rng(seed)
    maps = []
    for _ in range(n):
        s = int(rng.integers(12, 21))
        yy, xx = np.mgrid[:s, :s]
        disk = (yy - (s - 1) / 2) ** 2 + (xx - (s - 1) / 2) ** 2 <= ((s - 1) / 2) ** 2
        m = np.where(disk, 1, 0).astype(np.uint8)
        m[disk & (rng.random((s, s)) < 0.2)] = 2
        maps.append(m)
    flat = np.concatenate([m.ravel() for m in maps])
    shapes = np.asarray([m.shape for m in maps], np.int32)
    offsets = np.concatenate([[0], np.cumsum([m.size for m in maps])]).astype(np.int64)
    return WaferDataset(class_names=NAMES, maps_flat=flat, shapes=shapes, offsets=offsets, meta={})


@pytest.fixture
def model_dir(tmp_path):
    from waferflow.models import create_model, save_model_dir

    torch.manual_seed(0)
    m, spec = create_model("resnet18", 2, pretrained="none", input_size=16, class_names=list(NAMES))
    return save_model_dir(m.eval(), spec, tmp_path / "model")


@pytest.fixture
def labeled():
    rng = np.random.default_rng(1)
    return WaferDataset(class_names=NAMES, labels=np.arange(6) % 2, maps=rng.integers(0, 3, (6, 16, 16)).astype(np.uint8),
                        meta={})


def test_k_center_takes_one_map_from_each_cluster():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 10
    feats = np.concatenate([c + rng.normal(0, 0.01, (10, 8)) for c in centres])
    picked = LQ.k_center(feats, 3)
    assert sorted(picked // 10) == [0, 1, 2] and picked[0] == 0


def test_queue_is_uncertain_and_diverse_not_just_uncertain(monkeypatch):
    """Maps 0-9 (least confident) are near-copies; 10-19 are a bit more confident and look different. Pure
    uncertainty would queue two copies; the queue takes the least confident, then one of the others."""
    n = 60
    probs = np.tile([[0.99, 0.01]], (n, 1)).astype(np.float32)
    probs[:20, 0] = np.r_[np.linspace(0.50, 0.52, 10), np.linspace(0.55, 0.58, 10)]
    probs[:20, 1] = 1 - probs[:20, 0]
    feats = np.zeros((n, 4), np.float32)
    feats[:10, 0] = 1.0
    feats[10:20, 1] = 1.0
    feats[20:, 2] = 1.0
    monkeypatch.setattr(LQ, "embed", lambda *a, **k: (probs, feats, type("S", (), {"class_names": NAMES})()))
    q = LQ.build_queue("unused", variable_maps(n), n=2, pool_factor=10)
    assert q.indices[0] == 0 and 10 <= q.indices[1] < 20 and q.pool_size == 20
    assert q.margin[0] == pytest.approx(0.0, abs=1e-6) and q.predicted[1] == "vertical"


def test_queue_files_then_merge_moves_the_labeled_maps(model_dir, labeled, tmp_path):
    unl = variable_maps(30)
    q = LQ.build_queue(model_dir, unl, n=5, pool_factor=3)
    info = LQ.write_queue(q, unl, tmp_path / "q", list(NAMES))
    assert info["n"] == 5 and info["pool_size"] == 15
    rows = list(csv.DictReader((tmp_path / "q" / "queue.csv").open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", "5"] and all(r["label"] == "" for r in rows)
    assert len({r["index"] for r in rows}) == 5
    for r in rows:
        assert (int(r["height"]), int(r["width"])) == unl.get(int(r["index"])).shape
    assert (tmp_path / "q" / "queue.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # someone labels three of the five
    rows[0]["label"], rows[1]["label"], rows[3]["label"] = "vertical", "horizontal", "horizontal"
    with (tmp_path / "q" / "queue.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LQ.CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    merged, remaining, rep = LQ.merge_labels(tmp_path / "q" / "queue.csv", unl, labeled)
    assert rep["added"] == 3 and len(merged) == 9 and len(remaining) == 27
    assert rep["added_per_class"] == {"vertical": 1, "horizontal": 2}
    added = sorted(int(rows[i]["index"]) for i in (0, 1, 3))
    for j, i in enumerate(added):
        np.testing.assert_array_equal(merged.get(6 + j), unl.get(i))
    save_dataset(merged, tmp_path / "new.npz")
    assert len(load_dataset(tmp_path / "new.npz", require_labels=True)) == 9


@pytest.mark.parametrize("label,index,match", [
    ("donut", None, r"line 2: label 'donut' is not a class"),
    ("vertical", "999", r"line 2: index 999 is outside the unlabeled file"),
])
def test_bad_labels_are_clear_errors(model_dir, labeled, tmp_path, label, index, match):
    unl = variable_maps(12)
    LQ.write_queue(LQ.build_queue(model_dir, unl, n=2, pool_factor=1), unl, tmp_path / "q", list(NAMES))
    rows = list(csv.DictReader((tmp_path / "q" / "queue.csv").open()))
    rows[0]["label"] = label
    if index:
        rows[0]["index"] = index
    with (tmp_path / "q" / "queue.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=LQ.CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=match):
        LQ.merge_labels(tmp_path / "q" / "queue.csv", unl, labeled)


def test_merge_refuses_another_unlabeled_file_and_an_unfilled_queue(model_dir, labeled, tmp_path):
    unl = variable_maps(12)
    LQ.write_queue(LQ.build_queue(model_dir, unl, n=2, pool_factor=1), unl, tmp_path / "q", list(NAMES))
    with pytest.raises(DataError, match="no row has a label yet"):
        LQ.merge_labels(tmp_path / "q" / "queue.csv", unl, labeled)
    with pytest.raises(DataError, match="pass the unlabeled file the queue was built from"):
        LQ.merge_labels(tmp_path / "q" / "queue.csv", variable_maps(12, seed=9), labeled)
    with pytest.raises(ConfigError, match="n >= 1"):
        LQ.build_queue(model_dir, unl, n=0)


def test_cli_queue_then_merge_writes_the_next_runs_data(model_dir, labeled, tmp_path, capsys):
    from waferflow.cli import main

    unl = variable_maps(20)
    save_dataset(unl, tmp_path / "unl.npz")
    save_dataset(labeled, tmp_path / "lab.npz")
    assert main(["labels", "queue", "--model", str(model_dir), "--unlabeled", str(tmp_path / "unl.npz"), "--n", "4",
                 "--out", str(tmp_path / "q")]) == 0
    text = (tmp_path / "q" / "queue.csv").read_text().splitlines()
    text[1] = text[1] + "vertical"  # fill the first row's empty label (the last column)
    (tmp_path / "q" / "queue.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "next.npz"
    # a bad label writes nothing
    bad = tmp_path / "q" / "bad.csv"
    bad.write_text(text[0] + "\n" + text[1][: -len("vertical")] + "Vertical\n")
    assert main(["labels", "merge", "--queue", str(bad), "--unlabeled", str(tmp_path / "unl.npz"), "--data",
                 str(tmp_path / "lab.npz"), "--out", str(out)]) == 2
    assert not out.exists() and "not a class" in capsys.readouterr().err
    assert main(["labels", "merge", "--queue", str(tmp_path / "q" / "queue.csv"), "--unlabeled",
                 str(tmp_path / "unl.npz"), "--data", str(tmp_path / "lab.npz"), "--out", str(out), "--remaining",
                 str(tmp_path / "rest.npz")]) == 0
    assert len(load_dataset(out, require_labels=True)) == 7 and len(load_dataset(tmp_path / "rest.npz")) == 19


def _artifact(cls, tmp_path, name):
    a = cls(name=name, uri=str(tmp_path / name), metadata={})
    a.path = str(tmp_path / name)  # local path, as the KFP executor sets it
    return a


def test_pipeline_component_writes_the_queue_or_says_why_not(model_dir, tmp_path):
    import json

    from kfp import dsl

    from waferflow.components.label_queue import build_label_queue

    model = _artifact(dsl.Model, tmp_path, "model")
    model.path = str(model_dir)
    unl = _artifact(dsl.Dataset, tmp_path, "unl")
    q = _artifact(dsl.Artifact, tmp_path, "q")
    (tmp_path / "unl").mkdir()
    build_label_queue.python_func(model=model, unlabeled=unl, n=5, queue=q)  # no unlabeled maps in the data
    assert json.loads((tmp_path / "q" / "queue.json").read_text()) == {"skipped": "the data has no unlabeled maps"}
    assert q.metadata["skipped"] and not (tmp_path / "q" / "queue.csv").exists()
    save_dataset(variable_maps(25), tmp_path / "unl" / "data.npz")
    q2 = _artifact(dsl.Artifact, tmp_path, "q2")
    build_label_queue.python_func(model=model, unlabeled=unl, n=5, queue=q2)
    assert q2.metadata["n"] == 5 and len((tmp_path / "q2" / "queue.csv").read_text().splitlines()) == 6
    assert (tmp_path / "q2" / "queue.png").is_file()
