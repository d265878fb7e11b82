"""Components through ``component.python_func`` with temporary KFP artifacts (no KFP runner)."""

import json
import os

import pytest
from kfp import dsl

from waferflow.data.contract import load_dataset, save_dataset
from waferflow.errors import DataError, WaferflowError


def art(cls, tmp_path, name, metadata=None):
    a = cls(name=name, uri=str(tmp_path / name), metadata=dict(metadata or {}))
    a.path = str(tmp_path / name)  # local path, as the KFP executor sets it
    return a


def _dataset_artifact(tmp_path, name, ds, **meta):
    a = art(dsl.Dataset, tmp_path, name, meta)
    os.makedirs(a.path)
    save_dataset(ds, os.path.join(a.path, "data.npz"), source="test")
    return a


def test_data_component_generates_a_dataset_with_provenance(tmp_path):
    from waferflow.components.data import prepare_data

    out, unl = art(dsl.Dataset, tmp_path, "dataset"), art(dsl.Dataset, tmp_path, "unlabeled")
    prepare_data.python_func(source="", source_fingerprint="", n_maps=40, map_size=32, taxonomy="seed20", seed=3,
                             dataset=out, unlabeled=unl)
    ds = load_dataset(os.path.join(out.path, "data.npz"), require_labels=True)
    assert len(ds) == 40 and ds.resized(32).shape == (40, 32, 32)
    manifest = json.loads((tmp_path / "dataset" / "data.json").read_text())
    assert out.metadata["data_hash"] == manifest["content_sha256"]
    assert out.metadata["source"].startswith("synthetic:seed20:n=40")
    assert out.metadata["versions"]["waferflow"]
    assert unl.metadata["n"] == 0 and not os.path.exists(os.path.join(unl.path, "data.npz"))


def test_data_component_ingests_an_npz_and_fails_cleanly_on_a_bad_path(tmp_path):
    from waferflow.components.data import prepare_data
    from waferflow.data.synth import generate

    src = tmp_path / "mine.npz"
    save_dataset(generate(30, size=24, seed=1), src)
    out, unl = art(dsl.Dataset, tmp_path, "dataset"), art(dsl.Dataset, tmp_path, "unlabeled")
    prepare_data.python_func(source=str(src), source_fingerprint="abc", n_maps=0, map_size=24, taxonomy="seed20",
                             seed=0, dataset=out, unlabeled=unl)
    assert len(load_dataset(os.path.join(out.path, "data.npz"))) == 30
    assert out.metadata["source"] == f"ingest:{src}" and out.metadata["source_fingerprint"] == "abc"

    bad, bad_u = art(dsl.Dataset, tmp_path, "bad"), art(dsl.Dataset, tmp_path, "bad_u")
    with pytest.raises(DataError):
        prepare_data.python_func(source=str(tmp_path / "missing.npz"), source_fingerprint="", n_maps=0, map_size=24,
                                 taxonomy="seed20", seed=0, dataset=bad, unlabeled=bad_u)
    assert not os.path.exists(bad.path)  # nothing half-written


def _resized(ds, size):
    from waferflow.data.contract import WaferDataset

    return WaferDataset(class_names=ds.class_names, labels=ds.labels, maps=ds.resized(size))


def test_data_component_joins_the_unlabeled_source_to_the_pool_without_its_labels(tmp_path):
    from waferflow.components.data import prepare_data
    from waferflow.data.contract import concat_datasets
    from waferflow.data.synth import generate

    src, more = tmp_path / "mine.npz", tmp_path / "more.npz"
    mine = generate(30, size=24, seed=1)
    save_dataset(mine, src)
    # labeled, of another size (labels dropped, maps resized), and 10 of the labeled maps (dropped: no labeled map,
    # test maps included, may be pseudo-labelled)
    save_dataset(concat_datasets([_resized(generate(50, size=20, seed=2), 24), mine.subset(range(10))]), more)
    out, unl = art(dsl.Dataset, tmp_path, "dataset"), art(dsl.Dataset, tmp_path, "unlabeled")
    prepare_data.python_func(source=str(src), source_fingerprint="abc", n_maps=0, map_size=24, taxonomy="seed20",
                             seed=0, dataset=out, unlabeled=unl, pool_size=40, unlabeled_source=str(more),
                             unlabeled_fingerprint="def")
    labeled = load_dataset(os.path.join(out.path, "data.npz"), require_labels=True)
    pool = load_dataset(os.path.join(unl.path, "data.npz"))
    assert len(labeled) == 30 and len(pool) == 40 and not pool.labeled  # sampled to pool_size
    assert pool.class_names == labeled.class_names and pool.resized(24).shape == (40, 24, 24)
    assert unl.metadata["unlabeled_source"] == str(more) and unl.metadata["unlabeled_fingerprint"] == "def"
    assert unl.metadata["n"] == 40 and unl.metadata["pool"]["pool"] == 50  # 60 maps, 10 of them labeled ones

    # an unreadable pool, or a pool without labeled maps of one's own: a clear error, nothing written
    (tmp_path / "notes.txt").write_text("not maps")
    for source, unlabeled_source, err in ((str(src), str(tmp_path / "notes.txt"), DataError),
                                          (str(src), str(tmp_path / "missing.npz"), DataError),
                                          ("", str(more), WaferflowError)):
        bad, bad_u = art(dsl.Dataset, tmp_path, "bad"), art(dsl.Dataset, tmp_path, "bad_u")
        with pytest.raises(err, match="not maps|unknown input format|does not exist|no pool"):
            prepare_data.python_func(source=source, source_fingerprint="", n_maps=40, map_size=24,
                                     taxonomy="seed20", seed=0, dataset=bad, unlabeled=bad_u,
                                     unlabeled_source=unlabeled_source)
        assert not os.path.exists(bad.path) and not os.path.exists(bad_u.path)


def test_split_component_writes_three_splits(tmp_path):
    from waferflow.components.split import split_data
    from waferflow.data.synth import generate

    src = _dataset_artifact(tmp_path, "dataset", generate(120, size=24, seed=2), data_hash="h0")
    tr, va, te = (art(dsl.Dataset, tmp_path, n) for n in ("train", "val", "test"))
    info = split_data.python_func(dataset=src, labels_per_class=0, seed=0, train=tr, val=va, test=te)
    sizes = [len(load_dataset(os.path.join(a.path, "data.npz"))) for a in (tr, va, te)]
    assert sum(sizes) == 120 and list(info) == sizes
    assert tr.metadata["parent_data_hash"] == "h0" and tr.metadata["split"] == "train"
    # the profile's holdout fractions reach the split
    tr2, va2, te2 = (art(dsl.Dataset, tmp_path, n) for n in ("train2", "val2", "test2"))
    info2 = split_data.python_func(dataset=src, labels_per_class=0, seed=0, train=tr2, val=va2, test=te2,
                                   val_fraction=0.3, test_fraction=0.15)
    assert info2.n_val > info.n_val and info2.n_train < info.n_train and sum(info2) == 120
    assert (va2.metadata["val_fraction"], va2.metadata["test_fraction"]) == (0.3, 0.15)


def _metrics(acc, f1, name):
    return {"overall": {"accuracy": acc, "balanced_accuracy": acc, "macro_f1": f1, "ece": 0.05, "n": 100},
            "per_class": {}, "confusion_matrix": [[1]], "class_names": ["a"], "candidate": name, "split": "val"}


def test_select_best_picks_the_best_validation_macro_f1_from_collected_artifacts(tmp_path):
    from waferflow.components.select_best import select_best

    models, mets = [], []
    for i, (name, acc, f1) in enumerate([("scratch-x", 0.90, 0.80), ("full_finetune-x", 0.95, 0.93),
                                          ("feature_extraction-x", 0.96, 0.91)]):
        m = art(dsl.Model, tmp_path, f"model{i}", {"candidate": name, "strategy": name.split("-")[0], "backbone": "x"})
        os.makedirs(m.path)
        (tmp_path / f"model{i}" / "model.json").write_text(json.dumps({"name": name}))
        models.append(m)
        a = art(dsl.Artifact, tmp_path, f"val{i}")
        os.makedirs(a.path)
        (tmp_path / f"val{i}" / "metrics.json").write_text(json.dumps(_metrics(acc, f1, name)))
        mets.append(a)
    best, cands, table = art(dsl.Model, tmp_path, "best"), art(dsl.Artifact, tmp_path, "c"), art(dsl.Markdown, tmp_path, "t.md")
    name, acc = select_best.python_func(models=models, val_metrics=list(reversed(mets)), best=best, candidates=cands,
                                        table=table)
    assert name == "full_finetune-x" and acc == pytest.approx(0.95)
    assert json.loads((tmp_path / "best" / "model.json").read_text())["name"] == "full_finetune-x"
    assert best.metadata["selected_on"] == "val"
    rec = json.loads((tmp_path / "c" / "candidates.json").read_text())
    assert rec["ranked"] == ["full_finetune-x", "feature_extraction-x", "scratch-x"]
    md = (tmp_path / "t.md").read_text()
    assert "full_finetune-x" in md and md.index("full_finetune-x") < md.index("scratch-x")

    with pytest.raises(WaferflowError, match="no validation metrics"):
        select_best.python_func(models=models, val_metrics=mets[:1], best=art(dsl.Model, tmp_path, "b2"),
                                candidates=art(dsl.Artifact, tmp_path, "c2"), table=art(dsl.Markdown, tmp_path, "t2"))


def test_evaluate_component_logs_metrics_and_confusion_matrix(tmp_path):
    from waferflow.components.evaluate import evaluate_model
    from waferflow.data.synth import generate
    from waferflow.models import create_model, save_model_dir

    ds = generate(24, size=32, seed=5)
    net, spec = create_model("tf_efficientnet_lite0", num_classes=ds.num_classes, pretrained="none", input_size=32,
                             class_names=list(ds.class_names))
    model = art(dsl.Model, tmp_path, "model", {"candidate": "scratch-lite0"})
    save_model_dir(net, spec, model.path)
    data = _dataset_artifact(tmp_path, "test", ds, data_hash="h1")
    mj, m, cm = art(dsl.Artifact, tmp_path, "mj"), art(dsl.Metrics, tmp_path, "m"), art(dsl.ClassificationMetrics, tmp_path, "cm")
    acc, f1 = evaluate_model.python_func(model=model, data=data, split="test", form="torch", metrics_json=mj,
                                         metrics=m, confusion=cm)
    saved = json.loads((tmp_path / "mj" / "metrics.json").read_text())
    assert saved["overall"]["accuracy"] == pytest.approx(acc) and saved["candidate"] == "scratch-lite0"
    assert m.metadata["test_torch_accuracy"] == pytest.approx(acc)
    cmat = cm.metadata["confusionMatrix"]
    assert [c["displayName"] for c in cmat["annotationSpecs"]] == list(ds.class_names)
    assert sum(sum(r["row"]) for r in cmat["rows"]) == 24
    with pytest.raises(WaferflowError, match="form must be"):
        evaluate_model.python_func(model=model, data=data, split="test", form="tflite", metrics_json=mj, metrics=m,
                                   confusion=cm)


def test_train_component_scratch_candidate_ignores_the_adapted_start(tmp_path):
    from waferflow.components.train import train_candidate
    from waferflow.data.synth import generate

    tr = _dataset_artifact(tmp_path, "train", generate(48, size=32, seed=1), data_hash="htr")
    va = _dataset_artifact(tmp_path, "val", generate(24, size=32, seed=2))
    adapted = art(dsl.Model, tmp_path, "adapted")  # empty: scratch must not read it
    model = art(dsl.Model, tmp_path, "model")
    res = train_candidate.python_func(
        train=tr, val=va, adapted=adapted, candidate={"strategy": "scratch", "backbone": "tf_efficientnet_lite0"},
        train_config={"batch_size": 16, "augment": False}, epochs={"scratch": 1}, input_size=32, device="cpu", seed=0,
        model=model)
    assert res.name == "scratch-tf_efficientnet_lite0" and 0.0 <= res.val_accuracy <= 1.0
    spec = json.loads((tmp_path / "model" / "model.json").read_text())
    assert spec["weights_source"] == "random" and spec["strategy"] == "scratch"
    assert model.metadata["candidate"] == res.name and model.metadata["data_hash"] == "htr"
    assert model.metadata["epochs_run"] == 1


def test_adapt_component_gives_the_same_weights_on_every_run_head_included(tmp_path):
    """The adapted model's new classifier head is where full fine-tuning starts: an unseeded init made the main job's
    full_finetune candidate differ between two identical runs."""
    import torch

    from waferflow.components.adapt_bn import adapt_batchnorm
    from waferflow.data.synth import generate

    tr = _dataset_artifact(tmp_path, "train", generate(40, size=32, seed=1))
    unl = art(dsl.Dataset, tmp_path, "unlabeled")  # no unlabeled maps
    weights = []
    for run in ("a", "b"):
        torch.manual_seed(1000 + ord(run))  # whatever the process's RNG state, the result is the same
        out = art(dsl.Model, tmp_path, f"adapted-{run}")
        adapt_batchnorm.python_func(train=tr, unlabeled=unl, backbones=["tf_efficientnet_lite0"], input_size=32,
                                    sources={}, pretrained="auto", seed=0, adapted=out)
        weights.append(torch.load(os.path.join(out.path, "tf_efficientnet_lite0", "weights.pt"), weights_only=True))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0]), "adapted weights differ between runs"
