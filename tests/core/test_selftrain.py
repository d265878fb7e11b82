"""Self-training on unlabeled maps and test-time augmentation (tiny models, CPU)."""

import json

import numpy as np
import pytest
import torch
from dataclasses import replace

from waferflow.config import load_config
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError
from waferflow.predictors import tta_predictor, tta_views
from waferflow.train import TrainConfig, train
from waferflow.train.selftrain import pseudo_label, self_train

TINY = ["input_size=16", "batch_size=16", "eval_batch_size=64", "num_threads=1"]


def _cfg(**kw):
    return load_config(TrainConfig, overrides=[*TINY, "backbone=resnet18", *(f"{k}={v}" for k, v in kw.items())])


@pytest.fixture
def teacher(tmp_path, make_lines):
    # lines are vertical vs horizontal: flips keep the label, rot90 would swap it
    tr, va = make_lines(64, seed=0), make_lines(16, seed=1)
    cfg = _cfg(strategy="scratch", pretrained="none", epochs=6, symmetries="hflip,vflip")
    train(cfg, tr, va, tmp_path / "teacher")
    return tmp_path / "teacher", tr, va


def test_tta_views_follow_the_taxonomy_and_drop_duplicates():
    assert len(tta_views(("hflip", "vflip", "rot90", "rot180"))) == 8  # the dihedral group, not 16
    assert len(tta_views(("hflip", "vflip", "rot180"))) == 4  # seed20: no 90-degree turn
    assert tta_views(()) == [(0, False, False)]
    with pytest.raises(ConfigError, match="unknown symmetries"):
        tta_views(("shear",))


def test_tta_predictor_averages_probabilities_over_the_views():
    seen = []

    def predict(x):
        seen.append(x.copy())
        # class 0 score = value at the top-left pixel: depends on the view
        return np.stack([x[:, 0, 0, 0], np.zeros(len(x))], 1).astype(np.float32)

    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = 5.0
    out = tta_predictor(predict, ("hflip", "vflip"))(x)
    assert len(seen) == 4
    # only the identity view keeps the 5 at the top-left corner
    p = np.exp(np.array([5.0, 0.0])) / np.exp(np.array([5.0, 0.0])).sum()
    expect = (p + 3 * np.array([0.5, 0.5])) / 4
    assert np.allclose(np.exp(out[0]), expect, atol=1e-6)


def test_pseudo_labels_respect_threshold_cap_and_never_read_hidden_labels(teacher, make_lines):
    tdir, tr, _ = teacher
    pool = make_lines(40, seed=5)
    lying = replace(pool, labels=1 - pool.labels)  # wrong hidden labels must change nothing but the report
    a, rep_a = pseudo_label(tdir, pool, tr, threshold=0.6, max_per_class_ratio=0.25)
    b, rep_b = pseudo_label(tdir, lying, tr, threshold=0.6, max_per_class_ratio=0.25)
    assert np.array_equal(a.labels, b.labels) and rep_a["kept"] == rep_b["kept"] > 0
    assert rep_a["pseudo_label_accuracy"] + rep_b["pseudo_label_accuracy"] == pytest.approx(1.0)
    for c in rep_a["per_class"].values():
        assert c["kept"] <= c["cap"] == 8  # 0.25 x 32 labeled maps per class
    assert rep_a["tta_views"] == 4
    assert rep_a["mean_confidence_kept"] >= 0.6
    # a stricter threshold keeps a subset, every kept map at least that confident
    lax, rep_lax = pseudo_label(tdir, pool, tr, threshold=0.5, max_per_class_ratio=10)
    strict, rep_strict = pseudo_label(tdir, pool, tr, threshold=0.95, max_per_class_ratio=10)
    assert rep_lax["kept"] == len(pool)  # two classes: the top class is always >= 0.5
    for name, c in rep_strict["per_class"].items():
        assert c["confident"] <= rep_lax["per_class"][name]["confident"]
    assert rep_strict["kept"] == 0 or rep_strict["mean_confidence_kept"] >= 0.95
    # a class without labeled maps gets no pseudo-labels
    only_vertical = tr.subset(np.flatnonzero(tr.labels == 0))
    _, rep_one = pseudo_label(tdir, pool, only_vertical, threshold=0.5, max_per_class_ratio=10)
    assert rep_one["per_class"]["horizontal"] == {**rep_one["per_class"]["horizontal"], "cap": 0, "kept": 0}


def test_self_train_student_trains_on_labels_plus_pseudo_labels(tmp_path, teacher, make_lines):
    tdir, tr, va = teacher
    pool = WaferDataset(class_names=("x",), maps=make_lines(40, seed=7).maps)  # unlabeled, other names
    out = tmp_path / "student"
    r = self_train(_cfg(strategy="full_finetune", epochs=2, symmetries="hflip,vflip"), tdir, tr, va, pool, out,
                   rounds=2, threshold=0.6)
    rep = json.loads((out / "self_training.json").read_text())
    assert [x["round"] for x in rep["rounds"]] == [1, 2] and all(x["kept"] > 0 for x in rep["rounds"])
    assert r.extra["self_training"] == rep["rounds"] and (out / "weights.pt").is_file()
    # round 1's student starts from the teacher, round 2's from round 1's student (not ImageNet, not random)
    source = lambda d: json.loads((d / "model.json").read_text())["weights_source"]  # noqa: E731
    assert source(out / "rounds" / "r1") == f"file:{tdir.resolve()}"
    assert source(out) == f"file:{(out / 'rounds' / 'r1').resolve()}"
    # and the student's weights really are trained from there: they differ from the teacher's
    t_sd = torch.load(tdir / "weights.pt", weights_only=True)
    s_sd = torch.load(out / "weights.pt", weights_only=True)
    assert any(not torch.equal(t_sd[k], s_sd[k]) for k in t_sd if t_sd[k].is_floating_point())


def test_self_train_refuses_bad_settings(tmp_path, teacher, make_lines):
    tdir, tr, va = teacher
    pool = make_lines(8, seed=9)
    with pytest.raises(ConfigError, match="threshold"):
        pseudo_label(tdir, pool, tr, threshold=1.5)
    with pytest.raises(ConfigError, match="full_finetune or gradual_unfreezing"):
        self_train(_cfg(strategy="scratch"), tdir, tr, va, pool, tmp_path / "s")
    with pytest.raises(DataError, match="empty"):
        pseudo_label(tdir, pool.subset([]), tr)
    with pytest.raises(DataError, match="differ from the model"):
        pseudo_label(tdir, pool, replace(tr, class_names=("a", "b")))
    assert not (tmp_path / "s").exists()



def test_cli_train_with_unlabeled_maps_then_evaluate_with_tta(tmp_path, make_lines, r18_file, capsys):
    from waferflow.cli import main
    from waferflow.data.contract import save_dataset

    src = r18_file
    d = tmp_path / "data"
    d.mkdir()
    for name, seed, n in (("train", 0, 64), ("val", 1, 16), ("test", 2, 16)):
        save_dataset(make_lines(n, seed=seed), d / f"{name}.npz")
    save_dataset(WaferDataset(class_names=("x",), maps=make_lines(32, seed=3).maps), tmp_path / "pool.npz")
    sets = sum((["--set", s] for s in [*TINY, "symmetries=hflip,vflip"]), [])

    def cli(strategy, unlabeled, out, *extra):
        return main(["train", "--data", str(d), "--strategy", strategy, "--backbone", "resnet18", "--weights",
                     str(src), "--epochs", "2", *sets, *extra, "--unlabeled", str(unlabeled), "--pseudo-threshold",
                     "0.5", "--student-epochs", "1", "--out", str(out)])

    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    capsys.readouterr()
    assert cli("full_finetune", tmp_path / "junk.npz", tmp_path / "bad") != 0  # refused before any training
    assert "not a readable .npz" in capsys.readouterr().err
    assert main(["train", "--data", str(d), "--weights", str(src), "--unlabeled", str(tmp_path / "pool.npz"),
                 "--pseudo-threshold", "1.5", "--out", str(tmp_path / "bad")]) != 0
    assert "threshold must be in (0, 1]" in capsys.readouterr().err
    assert main(["train", "--data", str(d), "--weights", str(src), "--set", "unlabeled_weight=1", "--out",
                 str(tmp_path / "bad")]) != 0
    assert "give them with --unlabeled POOL.npz" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # unlabeled_weight: the teacher trains on the labels alone, the students learn from the pool as well
    assert cli("full_finetune", tmp_path / "pool.npz", tmp_path / "c", "--set", "unlabeled_weight=1") == 0
    capsys.readouterr()
    spec = lambda p: json.loads((p / "model.json").read_text())["train"]  # noqa: E731
    assert "consistency" not in spec(tmp_path / "c" / "teacher")
    assert spec(tmp_path / "c")["consistency"]["unlabeled_maps"] == 32
    assert cli("full_finetune", tmp_path / "pool.npz", tmp_path / "m") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["self_training"][0]["kept"] > 0 and "test" in summary
    assert summary["epochs_run"] == 1  # --student-epochs
    assert (tmp_path / "m" / "teacher" / "weights.pt").is_file() and (tmp_path / "m" / "self_training.json").is_file()
    assert main(["evaluate", "--model", str(tmp_path / "m"), "--data", str(d / "test.npz"), "--out",
                 str(tmp_path / "ev"), "--tta", "--gradcam-per-class", "0"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["form"] == "torch+tta4"
    plain = json.loads((tmp_path / "m" / "metrics.json").read_text())["overall"]
    assert out["n"] == plain["n"] == 16


def test_self_training_stage_never_reads_pool_labels_and_keeps_the_better_model(tmp_path, teacher, make_lines):
    """The pipeline's self-training step: labels hidden in the pool file are dropped before pseudo-labeling, the
    per-class counts are reported, and the teacher goes on unless the student beats it on validation."""
    from waferflow.data.contract import save_dataset
    from waferflow.orchestration.selftrain_step import describe, run_self_training

    tdir, tr, va = teacher
    save_dataset(tr, tmp_path / "train.npz")
    save_dataset(va, tmp_path / "val.npz")
    pool = make_lines(40, seed=7)
    wrong = replace(pool, labels=1 - pool.labels)  # every pool label is wrong: reading them would show
    save_dataset(wrong, tmp_path / "pool.npz")
    settings = {"rounds": 1, "threshold": 0.6, "train": {"strategy": "full_finetune", "epochs": 1,
                                                         "symmetries": "hflip,vflip"}}
    tc = dict(x.split("=") for x in TINY)
    rep = run_self_training(tdir, {"accuracy": 1.0, "macro_f1": 1.0}, tmp_path / "train.npz", tmp_path / "val.npz",
                            tmp_path / "pool.npz", settings, tc, 0, "cpu", tmp_path / "out")
    assert rep["chosen"] == rep["status"] == rep["would_keep"] == "teacher"  # a perfect teacher cannot be beaten
    assert "pseudo_label_accuracy" not in json.dumps(rep)  # the hidden labels were never there to score against
    assert set(rep["per_round"][0]["kept_per_class"]) == {"vertical", "horizontal"} and rep["pool"] == 40
    assert (tmp_path / "out" / "weights.pt").read_bytes() == (tdir / "weights.pt").read_bytes()
    topped = {**settings, "synthetic_min_per_class": 50}  # asked for, but these classes have no synthetic twin
    rep = run_self_training(tdir, {"accuracy": 0.0, "macro_f1": 0.0}, tmp_path / "train.npz", tmp_path / "val.npz",
                            tmp_path / "pool.npz", topped, tc, 0, "cpu", tmp_path / "out2")
    assert rep["chosen"] == "student" and (tmp_path / "out2" / "self_training.json").is_file()
    # keep=student: the student goes on although validation would keep the perfect teacher
    forced = run_self_training(tdir, {"accuracy": 1.0, "macro_f1": 1.0}, tmp_path / "train.npz",
                               tmp_path / "val.npz", tmp_path / "pool.npz", {**settings, "keep": "student"}, tc, 0,
                               "cpu", tmp_path / "out5")
    assert forced["chosen"] == "student" and forced["would_keep"] == "teacher"
    assert describe(forced).endswith("student goes on (self_training.keep=student; validation would keep the teacher)")
    assert describe(rep).endswith("student goes on")
    assert (tmp_path / "out5" / "weights.pt").read_bytes() != (tdir / "weights.pt").read_bytes()
    assert rep["synthetic"].startswith("off: no synthetic taxonomy has the data's classes")
    assert rep["per_round"][0]["synthetic_per_class"] == {}
    off = run_self_training(tdir, {"accuracy": 1.0, "macro_f1": 1.0}, tmp_path / "train.npz", tmp_path / "val.npz",
                            tmp_path / "none.npz", settings, tc, 0, "cpu", tmp_path / "out3")
    assert off["status"] == "skipped: the data has no unlabeled maps" and (tmp_path / "out3" / "weights.pt").is_file()
    with pytest.raises(ConfigError, match="rounds"):
        run_self_training(tdir, {}, tmp_path / "train.npz", tmp_path / "val.npz", tmp_path / "pool.npz",
                          {"rounds": -1}, tc, 0, "cpu", tmp_path / "out4")
    with pytest.raises(ConfigError, match="self_training.keep must be one of"):
        run_self_training(tdir, {}, tmp_path / "train.npz", tmp_path / "val.npz", tmp_path / "pool.npz",
                          {**settings, "keep": "teacher"}, tc, 0, "cpu", tmp_path / "out6")
    assert not (tmp_path / "out6").exists()


def test_synthetic_top_up_fills_only_the_classes_below_the_minimum():
    from waferflow.data.synth import TAXONOMIES
    from waferflow.train.selftrain import SelfTrainConfig, SyntheticTopUp, synthetic_maps

    names = TAXONOMIES["wm811k"].class_names
    labels = np.array([0, 0, 0] + [8] * 12 + [3] * 6)
    rng = np.random.default_rng(0)
    real = WaferDataset(class_names=names, labels=labels, maps=rng.integers(0, 3, (len(labels), 32, 32), np.uint8))
    top = SyntheticTopUp("wm811k", min_per_class=6, map_size=32, seed=0)
    joined, added = top(real, 0)
    assert added == [3, 6, 6, 0, 6, 6, 6, 6, 0]
    assert np.bincount(joined.labels, minlength=9).tolist() == [6, 6, 6, 6, 6, 6, 6, 6, 12]
    # the real maps come first, unchanged; the synthetic ones are wafer maps of the taxonomy's classes
    assert np.array_equal(joined.labels[:len(real)], labels)
    assert all(np.array_equal(joined.get(i), real.get(i)) for i in range(len(real)))
    assert joined.class_names == names and joined.get(len(real)).shape == (32, 32)
    # seeded: the same round gives the same maps, another round other maps
    again, _ = top(real, 0)
    other, _ = top(real, 1)
    tail = lambda d: np.stack([d.get(i) for i in range(len(real), len(d))])  # noqa: E731
    assert np.array_equal(tail(joined), tail(again)) and not np.array_equal(tail(joined), tail(other))
    assert top(real.subset(range(3)), 0)[1][0] == 3  # counts are of the set it is given
    assert SyntheticTopUp("wm811k", 2, 32)(real, 0)[1] == [0, 2, 2, 0, 2, 2, 2, 2, 0]
    # classes_below: only classes with fewer labeled maps than that (labeled counts, not labeled + pseudo-labeled)
    below = SyntheticTopUp("wm811k", 6, 32, classes_below=5)
    assert below(real, 0, labeled_counts=np.array([3, 5, 0, 6, 0, 0, 0, 0, 12]))[1] == [3, 0, 6, 0, 6, 6, 6, 6, 0]
    nothing, none_added = SyntheticTopUp("wm811k", 0, 32)(real, 0)
    assert nothing is real and none_added == [0] * 9
    assert np.bincount(synthetic_maps("wm811k", [0, 0, 0, 0, 0, 4, 0, 0, 0], 32, 5).labels, minlength=9)[5] == 4
    with pytest.raises(ConfigError, match="9 counts"):
        synthetic_maps("wm811k", [1, 2], 32, 0)
    with pytest.raises(ConfigError, match="synthetic_min_per_class"):
        SelfTrainConfig(synthetic_min_per_class=-1)
    with pytest.raises(ConfigError, match="synthetic_classes_below"):
        SelfTrainConfig(synthetic_classes_below=-1)
    with pytest.raises(ConfigError, match="synthetic_map_size"):
        SelfTrainConfig(synthetic_map_size=8)


def test_synthetic_maps_draw_the_stream_further_on_a_shortfall(monkeypatch):
    """When the first draw holds too few maps of a class, the stream is drawn further from where it stopped: the
    maps are those of one long draw, bit for bit."""
    from waferflow.data import synth
    from waferflow.train.selftrain import synthetic_maps

    need = [3, 0, 2, 0, 0, 0, 0, 4, 5]
    want = synthetic_maps("wm811k", need, 32, seed=3)
    real = synth.generate
    calls = []

    def short_first(n, **kw):
        calls.append((n, kw.get("start", 0)))
        return real(6 if len(calls) == 1 else n, **kw)  # the first draw falls short

    monkeypatch.setattr(synth, "generate", short_first)
    got = synthetic_maps("wm811k", need, 32, seed=3)
    assert len(calls) >= 2 and calls[1][1] == 6  # drawn on from map 6, not from the start again
    assert np.array_equal(got.resized(32), want.resized(32)) and np.array_equal(got.labels, want.labels)
    assert np.bincount(got.labels, minlength=9).tolist() == need


def test_onnxruntime_engine_labels_as_pytorch_does_and_says_so(teacher, make_lines):
    from waferflow.models import load_model_dir
    from waferflow.predictors import onnxruntime_model_predictor, torch_predictor

    tdir, tr, _ = teacher
    pool = make_lines(40, seed=5)
    ort_set, rep_ort = pseudo_label(tdir, pool, tr, threshold=0.6, max_per_class_ratio=10)  # the default engine
    pt_set, rep_pt = pseudo_label(tdir, pool, tr, threshold=0.6, max_per_class_ratio=10, engine="torch")
    assert (rep_ort["engine"], rep_pt["engine"]) == ("onnxruntime (cpu)", "torch (cpu)")
    assert rep_ort["kept"] == rep_pt["kept"] > 0 and np.array_equal(ort_set.labels, pt_set.labels)
    assert np.array_equal(ort_set.maps, pt_set.maps)
    model, spec = load_model_dir(tdir)
    x = np.random.default_rng(0).normal(size=(5, 3, 16, 16)).astype(np.float32)
    assert np.allclose(onnxruntime_model_predictor(model, spec)(x), torch_predictor(model)(x), rtol=1e-4, atol=1e-4)


def test_onnxruntime_engine_uses_the_threads_pytorch_was_given(teacher, make_lines, monkeypatch):
    from waferflow.predictors import runtime

    seen, options = [], runtime._session_options
    monkeypatch.setattr(runtime, "_session_options", lambda threads: seen.append(threads) or options(threads))
    tdir, tr, _ = teacher
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # what train() does with train.num_threads=1
    try:
        pseudo_label(tdir, make_lines(8, seed=3), tr, threshold=0.6)
    finally:
        torch.set_num_threads(before)
    assert seen == [1]


class _Branchy(torch.nn.Module):
    """Takes a data-dependent branch: a trace (made on zeros) keeps the other one, so onnxruntime disagrees."""

    def forward(self, x):
        pooled = x.mean((2, 3))
        return torch.cat([pooled, -pooled], 1) if bool(x.sum() > 0) else torch.cat([-pooled, pooled], 1)


def test_onnxruntime_engine_refuses_a_model_that_does_not_trace_faithfully():
    from waferflow.errors import ModelFormatError
    from waferflow.predictors import onnxruntime_model_predictor

    predict = onnxruntime_model_predictor(_Branchy(), {"input_size": 8, "in_chans": 3, "backbone": "branchy"})
    with pytest.raises(ModelFormatError, match="differ from PyTorch's.*self_training.cpu_engine=torch"):
        predict(np.ones((4, 3, 8, 8), np.float32))


def test_pseudo_labelling_engine_and_device_are_checked(teacher, make_lines):
    from waferflow.train.selftrain import SelfTrainConfig

    tdir, tr, _ = teacher
    pool = make_lines(8, seed=9)
    with pytest.raises(ConfigError, match="cpu_engine must be one of"):
        SelfTrainConfig(cpu_engine="tensorrt")
    with pytest.raises(ConfigError, match="engine must be one of"):
        pseudo_label(tdir, pool, tr, engine="openvino")
    if not torch.cuda.is_available():  # CUDA asked for, none here: an error, never a CPU run
        with pytest.raises(ConfigError, match="no CUDA device"):
            pseudo_label(tdir, pool, tr, device="cuda")


def test_students_keep_their_own_budget_and_take_the_other_train_settings(teacher):
    """The run's epochs / steps / min_epochs stay with the candidates; the rest of its train settings reach every
    student, under self_training.train's."""
    from waferflow.orchestration.selftrain_step import _student_config
    from waferflow.train.selftrain import SelfTrainConfig

    tdir, _, _ = teacher
    run_train = {"steps": 600, "min_epochs": 20, "lr": 0.001, "rotation": 0.0, "symmetries": "hflip,vflip"}
    cfg = _student_config(SelfTrainConfig(train={"strategy": "full_finetune", "steps": 50, "rotation": 0.0}),
                          run_train, tdir, seed=3, device="cpu")
    assert (cfg.steps, cfg.min_epochs, cfg.epochs, cfg.lr, cfg.strategy, cfg.seed) == (50, 0, 0, 0.001,
                                                                                       "full_finetune", 3)


def test_pseudo_labels_may_average_turned_pool_maps_as_the_deployed_graph(tmp_path, teacher, make_lines):
    """self_training.tta_rotations: the teacher's confidence is the mean over the symmetries of each pool map and
    of the map turned by each angle (the deployed TTA graph's gather); off, with a note, where rot90 is no
    symmetry; refused without TTA and before any training."""
    from waferflow.data.contract import save_dataset
    from waferflow.models import load_model_dir
    from waferflow.orchestration.selftrain_step import run_self_training
    from waferflow.predictors import predict_dataset, softmax, torch_predictor
    from waferflow.predictors.runtime import rotation_pad
    from waferflow.profiles import get_profile
    from waferflow.train.augment import model_symmetries
    from waferflow.train.selftrain import SelfTrainConfig

    tr, va = make_lines(48, seed=0), make_lines(16, seed=1)
    train(_cfg(strategy="scratch", pretrained="none", epochs=2, symmetries="hflip,vflip,rot90"), tr, va,
          tmp_path / "rot")
    pool = make_lines(24, seed=4)
    model, spec = load_model_dir(tmp_path / "rot")
    by_hand = tta_predictor(torch_predictor(model), model_symmetries(spec), (45.0,), rotation_pad(spec))
    prob = softmax(predict_dataset(by_hand, pool, spec, 64))
    for engine in ("torch", "onnxruntime"):
        got, rep = pseudo_label(tmp_path / "rot", pool, tr, threshold=0.5, max_per_class_ratio=10, engine=engine,
                                rotations=(45,))
        assert rep["tta_views"] == 16 and "rotations_off" not in rep and rep["kept"] == len(pool)
        clear = np.abs(prob[:, 0] - prob[:, 1]) > 1e-4  # onnxruntime's float error cannot flip these
        assert clear.sum() > len(pool) // 2 and np.array_equal(got.labels[clear], prob.argmax(1)[clear])
        assert rep["mean_confidence_kept"] == pytest.approx(prob.max(1).mean(), abs=1e-5)
    _, rep8 = pseudo_label(tmp_path / "rot", pool, tr, threshold=0.5, max_per_class_ratio=10, engine="torch")
    assert rep8["tta_views"] == 8 and rep8["mean_confidence_kept"] != pytest.approx(rep["mean_confidence_kept"],
                                                                                   abs=1e-5)
    # lines keep their label under flips only: the turned views are off, and the report says why
    tdir, tr2, va2 = teacher
    _, rep_off = pseudo_label(tdir, pool, tr2, threshold=0.5, rotations=(45,))
    assert rep_off["tta_views"] == 4 and "not under any rotation" in rep_off["rotations_off"]
    for bad, match in (({"tta_rotations": [45], "tta": False}, "set self_training.tta=true"),
                       ({"tta_rotations": 45}, "must be a list"), ({"tta_rotations": [0]}, "non-zero")):
        with pytest.raises(ConfigError, match=match):
            load_config(SelfTrainConfig, overrides=bad)
    with pytest.raises(ConfigError, match="self_training: config key 'tta_rotations' must be a list"):
        get_profile("real", ["self_training.tta_rotations=45"])
    with pytest.raises(ConfigError, match="tta=true"):
        self_train(_cfg(strategy="full_finetune", epochs=1), tdir, tr2, va2, pool, tmp_path / "never",
                   tta=False, rotations=(45,))
    assert not (tmp_path / "never").exists()
    # the stage passes the setting on and reports the views
    for name, ds in (("train", tr2), ("val", va2), ("pool", pool)):
        save_dataset(ds, tmp_path / f"{name}.npz")
    settings = {"rounds": 1, "threshold": 0.6, "tta_rotations": [45],
                "train": {"strategy": "full_finetune", "epochs": 1, "symmetries": "hflip,vflip"}}
    stage = run_self_training(tdir, {"accuracy": 1.0, "macro_f1": 1.0}, tmp_path / "train.npz",
                              tmp_path / "val.npz", tmp_path / "pool.npz", settings,
                              dict(x.split("=") for x in TINY), 0, "cpu", tmp_path / "out")
    assert stage["per_round"][0]["tta_views"] == 4 and "rotations_off" in stage["per_round"][0]
