"""benchmarks/bench_real_pipeline --draw-labels: another few-label slice, drawn from the unlabeled file."""

import json
from pathlib import Path

import numpy as np
import pytest

from waferflow.data.contract import load_dataset, save_dataset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "wm811k_small.npz"


def _digest(ds) -> list[bytes]:
    return sorted(np.ascontiguousarray(m).tobytes() + bytes(m.shape) for m in ds)


def test_draw_labels_takes_the_labeled_class_counts_from_the_other_file_and_pools_the_rest(tmp_path):
    from benchmarks.bench_real_pipeline import _draw_labels

    full = load_dataset(FIXTURE)
    order = np.random.default_rng(1).permutation(len(full))
    small, big = full.subset(np.sort(order[:60])), full.subset(np.sort(order[60:]))
    save_dataset(small, tmp_path / "small.npz")
    save_dataset(big, tmp_path / "big.npz")
    lab_file, pool_file = _draw_labels(tmp_path / "small.npz", tmp_path / "big.npz", 3, tmp_path)
    lab, pool = load_dataset(lab_file), load_dataset(pool_file)
    k = len(full.class_names)
    assert np.array_equal(np.bincount(lab.labels, minlength=k), np.bincount(small.labels, minlength=k))
    # the drawn maps are the big file's; nothing lost, nothing twice: drawn + pool = both files
    assert set(_digest(lab)) <= set(_digest(big))
    assert sorted(_digest(lab) + _digest(pool)) == sorted(_digest(small) + _digest(big))
    # seeded: the same seed draws the same maps, another seed others
    (tmp_path / "again").mkdir(), (tmp_path / "other").mkdir()
    again, _ = _draw_labels(tmp_path / "small.npz", tmp_path / "big.npz", 3, tmp_path / "again")
    other, _ = _draw_labels(tmp_path / "small.npz", tmp_path / "big.npz", 4, tmp_path / "other")
    assert _digest(load_dataset(again)) == _digest(lab) != _digest(load_dataset(other))


def test_draw_labels_refuses_a_file_with_too_few_maps_of_a_class(tmp_path):
    import pytest

    from benchmarks.bench_real_pipeline import _draw_labels

    full = load_dataset(FIXTURE)
    save_dataset(full, tmp_path / "all.npz")
    save_dataset(full.subset(np.arange(20)), tmp_path / "few.npz")
    with pytest.raises(SystemExit, match="too few maps of .*needed"):
        _draw_labels(tmp_path / "all.npz", tmp_path / "few.npz", 0, tmp_path)
    assert not (tmp_path / "labeled_drawn.npz").exists() and not (tmp_path / "pool_drawn.npz").exists()


def test_dev_split_is_seeded_disjoint_and_seed_0_is_the_draw_of_the_earlier_figures():
    from benchmarks.bench_real_pipeline import dev_split

    keep, dev = dev_split(100, 30)
    assert len(dev) == 30 and not np.intersect1d(keep, dev).size and np.array_equal(np.union1d(keep, dev), np.arange(100))
    order = np.random.default_rng(0).permutation(100)  # what --dev drew before --dev-seed existed
    assert np.array_equal(dev, np.sort(order[:30])) and np.array_equal(dev_split(100, 30, 0)[1], dev)
    assert not np.array_equal(dev_split(100, 30, 1)[1], dev)
    for bad in (0, 100):
        with pytest.raises(SystemExit, match="needs between 1 and 99 maps"):
            dev_split(100, bad)


def test_the_variety_benchmark_leaves_the_dev_maps_out_and_measures_components(tmp_path):
    """bench_source_variety's design set holds no excluded map; its statistics measure the largest failing blob."""
    from benchmarks.bench_source_variety import component_stats, design_set, main

    full = load_dataset(FIXTURE)
    save_dataset(full.subset(np.arange(0, len(full), 3)), tmp_path / "dev.npz")
    design = design_set([FIXTURE], [tmp_path / "dev.npz"])
    assert not set(_digest(design)) & set(_digest(load_dataset(tmp_path / "dev.npz")))
    assert len(design) == len(full) - len(load_dataset(tmp_path / "dev.npz"))

    m = np.ones((40, 40), np.uint8)
    yy, xx = np.mgrid[:40, :40]
    m[(yy - 19.5) ** 2 + (xx - 19.5) ** 2 > 400] = 0  # a wafer of radius 20
    m[4:8, 18:22] = 2  # a 4x4 blob near the top edge
    fail_rate, area, centre, density, length = component_stats(m)
    assert area == pytest.approx(16 / (m > 0).sum()) and density == 1.0 and fail_rate == area
    assert centre == pytest.approx(14 / np.sqrt((m > 0).sum() / np.pi)) and 0.1 < length < 0.3  # 19.5 - 5.5 rows
    out = tmp_path / "stats.json"
    assert main(["--labeled", str(FIXTURE), "--exclude", str(tmp_path / "dev.npz"), "--stats-only", "--synthetic", "1500",
                 "--set", "source.synth.pattern_ranges.loc.radius=[0.1,0.2]", "--png", str(tmp_path / "maps.png"),
                 "--out", str(out)]) == 0
    assert (tmp_path / "maps.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = json.loads(out.read_text())
    assert res["design_maps"] == len(design) and res["variant"]["synth"]["pattern_ranges"]["loc"]["radius"] == [0.1, 0.2]
    # smaller locs, smaller components; the real maps' statistics are there to compare with
    assert res["stats"]["variant"]["Loc"]["area"][1] < res["stats"]["baseline"]["Loc"]["area"][1]
    assert set(res["stats"]["real"]) == {"Loc", "Edge-Loc", "Scratch", "Center", "none"}


def test_the_variety_benchmark_refuses_a_kept_source_model_of_another_recipe(tmp_path):
    """A rerun in the same workdir with other --set values must not score the old variant model."""
    from waferflow.profiles import get_profile

    from benchmarks.bench_source_variety import _source

    (tmp_path / "variant").mkdir()
    (tmp_path / "variant" / "model.json").write_text("{}")
    (tmp_path / "variant.recipe.json").write_text(json.dumps({"taxonomy": "wm811k", "n_maps": 1}))
    with pytest.raises(SystemExit, match="holds a source model of another recipe"):
        _source(get_profile("real", ["source.synth.pattern_ranges.loc.radius=[0.1,0.2]"]), tmp_path, "variant")
    (tmp_path / "variant.recipe.json").unlink()  # a model without its recipe is refused too
    with pytest.raises(SystemExit, match="another recipe"):
        _source(get_profile("real"), tmp_path, "variant")


def test_the_none_shift_benchmark_scores_the_deployed_mean_probability_and_moves_only_none():
    """b = 0 is the mean probability over members and views; a negative b only takes maps away from 'none'."""
    from types import SimpleNamespace

    from benchmarks.bench_none_bias import shifted_scores

    names = ("Loc", "Scratch", "none")
    labels = np.array([0, 1, 2, 2, 0, 1])
    ds = SimpleNamespace(labels=labels, class_names=names)
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 3, len(labels), 3))  # members, views, maps, classes
    logits[..., 2] += 1.5  # a model that leans to 'none'
    prob = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    plain = prob.mean(axis=(0, 1)).argmax(1)
    at0 = shifted_scores(logits, ds, 2, 0.0)
    assert at0["accuracy"] == round(float((plain == labels).mean()), 4)
    far = shifted_scores(logits, ds, 2, -50.0)
    assert far["recall"]["none"] == 0.0  # nothing is called none any more
    z = logits.copy()
    z[..., 2] = -np.inf
    rest = (np.exp(z) / np.exp(z).sum(-1, keepdims=True)).mean(axis=(0, 1)).argmax(1)
    assert far["accuracy"] == round(float((rest == labels).mean()), 4)  # the others keep their order


def _two_round_report(teacher: float, r1: float, chosen: str = "student") -> dict:
    return {"teacher_val": {"accuracy": 0.9, "macro_f1": teacher}, "chosen": chosen,
            "per_round": [{"round": 1, "student_val_macro_f1": r1}, {"round": 2, "student_val_macro_f1": 0.5}]}


def test_one_round_sends_on_what_validation_would_have_chosen_after_round_1(tmp_path):
    from benchmarks.bench_rounds_dev import one_round_choice

    r1_dir = tmp_path / "self-train-model" / "model" / "rounds" / "r1"
    r1_dir.mkdir(parents=True)
    (r1_dir / "model.json").write_text("{}")
    # round 1's student beats the teacher on validation (whatever round 2 did): it would go on
    assert one_round_choice(_two_round_report(0.80, 0.85), tmp_path) == ("student", r1_dir)
    # a tie or a loss keeps the teacher, as the self-training stage does
    for r1 in (0.80, 0.70):
        assert one_round_choice(_two_round_report(0.80, r1), tmp_path) == ("teacher",
                                                                           tmp_path / "select-best" / "best")


def test_one_round_refuses_what_it_cannot_reconstruct(tmp_path):
    from benchmarks.bench_rounds_dev import one_round_choice

    with pytest.raises(SystemExit, match="does not exist; rerun with --set self_training.keep=student"):
        one_round_choice(_two_round_report(0.80, 0.85, chosen="teacher"), tmp_path)  # r1 was not kept
    one = _two_round_report(0.80, 0.85)
    one["per_round"] = one["per_round"][:1]
    with pytest.raises(SystemExit, match="self-trained 1 round"):
        one_round_choice(one, tmp_path)


def test_rotation_tta_turns_maps_as_training_does_and_reads_its_variants():
    from benchmarks.bench_rot_tta_dev import parse_variants, rotate_maps

    maps = np.random.default_rng(0).integers(0, 3, (3, 8, 8)).astype(np.uint8)
    assert np.array_equal(rotate_maps(maps, 0), maps)
    assert np.array_equal(rotate_maps(maps, 90), np.rot90(maps, 1, axes=(1, 2)))  # the warp is exact at 90 degrees
    turned = rotate_maps(maps, 30)
    assert turned.dtype == np.uint8 and set(np.unique(turned)) <= {0, 1, 2} and not np.array_equal(turned, maps)
    assert parse_variants(["R2=45", "R3=22.5,-22.5"]) == {"R2": [0.0, 45.0], "R3": [0.0, 22.5, -22.5]}
    for bad in ("R2", "R2=", "R2=0", "R2=x", "=45"):
        with pytest.raises(SystemExit, match="--variant"):
            parse_variants([bad])
    with pytest.raises(ValueError, match="square"):
        rotate_maps(maps[:, :, :6], 10)


def test_the_seed_ensemble_and_paired_benchmarks_refuse_one_run_and_runs_on_other_dev_maps(tmp_path):
    from benchmarks.bench_paired_dev import main as paired
    from benchmarks.bench_seed_ensemble_dev import main

    full = load_dataset(FIXTURE)
    for name, idx in (("a", np.arange(0, 40)), ("b", np.arange(40, 80))):
        (tmp_path / name).mkdir()
        save_dataset(full.subset(idx), tmp_path / name / "dev.npz")
    with pytest.raises(SystemExit, match="at least twice"):
        main(["--workdir", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="different dev maps"):
        main(["--workdir", str(tmp_path / "a"), "--workdir", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="different dev maps"):
        paired(["--reference", str(tmp_path / "a"), "--workdir", str(tmp_path / "b")])


def test_paired_change_shows_a_class_with_two_maps_carrying_the_whole_macro_f1_change():
    from benchmarks.bench_paired_dev import paired_change

    names = ["common", "other", "rare"]
    y = np.array([0] * 60 + [1] * 38 + [2] * 2)
    ref = y.copy()
    same = paired_change(y, ref, ref, names, samples=200)
    assert same["accuracy"]["change"] == 0 and same["accuracy"]["mcnemar_p"] == 1.0
    assert same["macro_f1"]["change"] == 0 and same["macro_f1"]["interval_95"] == [0.0, 0.0]
    new = ref.copy()
    new[:3] = 2  # three common maps read as the rare class: its F1 1.0 -> 4 / 7
    ch = paired_change(y, ref, new, names, min_support=10, samples=500)
    assert ch["accuracy"]["change"] == -0.03 and (ch["accuracy"]["only_reference_right"], ch["accuracy"]["only_run_right"]) == (3, 0)
    rare = ch["per_class"]["rare"]
    assert rare["support"] == 2 and rare["f1_change"] == round(4 / 7 - 1, 4)
    assert rare["macro_f1_share"] == round((4 / 7 - 1) / 3, 4)
    assert ch["macro_f1"]["change"] < -0.14 and ch["macro_f1"]["interval_95"][0] < ch["macro_f1"]["change"] < 0
    # without the classes of fewer than 10 maps, the same three maps move macro-F1 by about one point
    robust = ch["macro_f1_support_10"]
    assert robust["classes"] == ["common", "other"] and -0.02 < robust["change"] < 0
    with pytest.raises(ValueError, match="same maps"):
        paired_change(y, ref, new[:50], names)


def test_deployed_probabilities_are_kept_per_run_and_recomputed_when_the_model_changes(tmp_path, monkeypatch):
    import benchmarks.bench_rot_tta_dev as rot
    from benchmarks.bench_ensemble_dev import deployed_probs

    ds = load_dataset(FIXTURE).subset(np.arange(20))
    model = tmp_path / "run" / "kfp_outputs" / "waferflow-training-1" / "self-train-model" / "model"
    model.mkdir(parents=True)
    (model / "weights.pt").write_bytes(b"first")
    calls = []

    def fake(model_dir, data, angles, **_):
        calls.append(list(angles))
        return {a: np.full((len(data), 9), len(calls), dtype=np.float64) for a in angles}

    monkeypatch.setattr(rot, "angle_probs", fake)
    got, p = deployed_probs(tmp_path, ds, [0.0, 45.0])
    assert got == model and calls == [[0.0, 45.0]] and p.shape == (20, 9) and (p == 1).all()
    assert np.array_equal(deployed_probs(tmp_path, ds, [0.0, 45.0])[1], p) and len(calls) == 1  # read back
    deployed_probs(tmp_path, ds, [0.0])  # other angles: scored again
    (model / "weights.pt").write_bytes(b"second")  # another model in the same workdir: scored again
    assert (deployed_probs(tmp_path, ds, [0.0])[1] == 3).all() and len(calls) == 3
    assert sorted(f.name for f in tmp_path.iterdir()) == ["dev_probs.npz", "run"]  # no temporary file left


def test_keep_benchmark_log_loss_is_sklearns_and_survives_a_zero_probability():
    from sklearn.metrics import log_loss

    from benchmarks.bench_keep_dev import nll

    y = np.array([0, 2, 1, 2])
    prob = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.4, 0.3], [0.25, 0.25, 0.5]])
    assert nll(y, prob) == pytest.approx(log_loss(y, prob, labels=[0, 1, 2]))
    worst = nll(np.array([1]), np.array([[1.0, 0.0, 0.0]]))
    assert np.isfinite(worst) and worst == pytest.approx(-np.log(1e-12))


def test_pool_benchmark_counts_the_rule_the_uncapped_thresholds_and_alignment():
    from benchmarks.bench_pseudo_pool_dev import aligned, per_class

    prob = np.array([[0.95, 0.05], [0.92, 0.08], [0.91, 0.09], [0.75, 0.25], [0.3, 0.7], [0.05, 0.95]])
    truth = np.array([0, 0, 1, 0, 1, 0])
    rows = per_class(prob, truth, np.array([1, 2]), threshold=0.9, ratio=2.0, thresholds=(0.7, 0.9))
    # class 0: cap 2 of the 3 maps >= 0.9, the two most confident (both right); class 1: one map >= 0.9, wrong
    assert rows[0] == {"true": 4, "labeled": 1, "cap": 2, "rule": [2, 2], "uncapped": {"0.7": [4, 3], "0.9": [3, 2]}}
    assert rows[1] == {"true": 2, "labeled": 2, "cap": 4, "rule": [1, 0], "uncapped": {"0.7": [2, 1], "0.9": [1, 0]}}
    prior = np.array([0.5, 0.5])
    al = aligned(prob, prior)
    assert np.allclose(al.sum(1), 1) and (al[:, 1] > prob[:, 1]).all()  # the under-predicted class gains everywhere
    assert abs(al.mean(0)[1] - 0.5) < abs(prob.mean(0)[1] - 0.5)
    assert np.allclose(aligned(prob, prob.mean(0)), prob)  # a pool already at the prior is left as it is


def test_pool_benchmark_labels_the_runs_own_pool_by_content():
    from benchmarks.bench_pseudo_pool_dev import labeled_run_pool
    from waferflow.data.contract import resize_nearest
    from waferflow.data.ingest import _pack

    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 3, size=(int(h), int(w)), dtype=np.uint8) for h, w in rng.integers(20, 50, size=(12, 2))]
    raw.append(raw[3].copy())  # the same map twice, under another label: counted, the first label wins
    labels = np.array([0, 1, 2] * 4 + [1])
    hidden = _pack(raw, ("a", "b", "c"), labels, None, None, "test")
    order = rng.permutation(12)
    for size in (16, None):  # a run that resized its maps at ingest, and one that kept their own sizes
        run_pool = _pack([raw[i] for i in order], (), None, None, size, "run")
        pool, clashes = labeled_run_pool(run_pool, hidden)
        assert pool.labels.tolist() == labels[order].tolist() and pool.class_names == ("a", "b", "c")
        assert clashes == 1 and len(pool) == 12 and pool.get(0).shape == (resize_nearest(raw[order[0]], 16).shape
                                                                         if size else raw[order[0]].shape)
    other = _pack([np.zeros((30, 30), dtype=np.uint8)], (), None, None, None, "run")
    with pytest.raises(SystemExit, match="map 0 of the run's pool is not in the pool file"):
        labeled_run_pool(other, hidden)
