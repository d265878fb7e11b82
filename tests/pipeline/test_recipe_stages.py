"""The real-data recipe as pipeline stages, through kfp.local on tiny real maps: an LSWMD-shaped pickle whose
unlabeled rows form the pool; a synthetic source model pretrained and registered on the first run and reused by URI
on the second; a self-training stage that reports its pseudo-labels per class."""

import json
from pathlib import Path

import pytest

from benchmarks.lswmd_shaped import write_lswmd_pickle
from waferflow.data.contract import load_dataset, save_dataset
from waferflow.orchestration.local import run_local
from waferflow.profiles import get_profile

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "wm811k_small.npz"
RECIPE = [
    "map_size=32", "input_size=64", "strategies=[feature_extraction]", "source_strategies=[full_finetune]",
    "source={n_maps: 90, map_size: 32, train: {strategy: full_finetune, epochs: 1}}",
    "self_training={rounds: 1, threshold: 0.2, train: {strategy: full_finetune, epochs: 1}}",
    "label_queue=5", "pool_size=60", "train.class_weights=sqrt", "undo_class_weights=true",
    "source_ensemble_below=100000",
    # deployed as the real profile deploys: the TTA graph, which the gates read
    "export={max_abs_diff: 0.01, tta: true, tta_rotations: [45]}", "gates.deployment_form=onnx_fp32_tta",
]


def _ensemble_benchmark_reads_the_run(tmp_path):
    """benchmarks/bench_ensemble_dev finds the candidates, the model that went on and the splits of a run."""
    from benchmarks import bench_ensemble_dev

    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "run").symlink_to(tmp_path / "wd")
    ds = load_dataset(FIXTURE)
    save_dataset(ds.subset(range(0, len(ds), 4)), bench / "dev.npz")
    save_dataset(ds.subset(range(1, len(ds), 4)), bench / "pool.npz")
    assert bench_ensemble_dev.main(["--workdir", str(bench), "--out", str(bench / "ens.json")]) == 0
    res = json.loads((bench / "ens.json").read_text())
    assert sorted(res["ranked_on_val"]) == ["feature_extraction-tf_efficientnet_lite0",
                                            "full_finetune+source-tf_efficientnet_lite0"]
    # the synthetic source model (from the run's registry) is scored alone and beside the final model
    assert {"final", "feature_extraction", "full_finetune+source", "source", "final+source"} <= set(res["options"])
    assert res["rule"] == res["ranked_on_val"][1].split("-")[0] + "+final" and res["rule"] in res["options"]
    assert res["minus_final_on_dev"][res["rule"]].keys() == {"accuracy", "macro_f1"}
    pl = res["pseudo_labels"]
    assert [pl["teacher_model"], pl["runner_up_model"]] == res["ranked_on_val"]
    assert pl["pool"] == len(range(1, len(ds), 4))
    for who in ("teacher", "teacher+runner_up", "teacher+source"):
        assert 0 <= pl[who]["wrong"] <= pl[who]["kept"] <= pl["pool"]
        assert sum(pl[who]["kept_per_class"]) == pl[who]["kept"]
        assert sum(pl[who]["right_per_class"]) == pl[who]["kept"] - pl[who]["wrong"]
        assert all(r <= k for r, k in zip(pl[who]["right_per_class"], pl[who]["kept_per_class"]))
    # the final model is the source ensemble here: its first member is scored, and the two members are that model
    opts = res["options"]
    assert opts["source+corrected"] == opts["final"]
    runner_up = res["ranked_on_val"][1].split("-")[0]
    assert res["rule_third_member"] == f"{runner_up}+source+corrected" and res["rule_third_member"] in opts
    assert bench_ensemble_dev.main(["--workdir", str(bench), "--no-pool", "--out", str(bench / "ens2.json")]) == 0
    again = json.loads((bench / "ens2.json").read_text())
    assert "pseudo_labels" not in again and again["options"] == opts  # the same scores, without the pool's passes


def _prior_benchmark_scores_before_and_after(tmp_path):
    """benchmarks/bench_prior_dev scores the self-trained model as trained and with its prior undone; for a run made
    before models recorded their shift, it recomputes the same shift from the train split and the pseudo-labels."""
    from benchmarks import bench_prior_dev

    bench = tmp_path / "bench"
    assert bench_prior_dev.main(["--workdir", str(bench), "--shrink", "0", "5", "--set", "source_ensemble_below=100000",
                                 "--out", str(bench / "prior.json")]) == 0
    res = json.loads((bench / "prior.json").read_text())
    assert res["shift_source"] == "recorded by training"
    # the run deployed an ensemble: the correction is scored inside it too, the deployed model being the undone one
    ens = res["in_ensemble"]
    assert ens["source_stage"] == "ensembled" and set(ens["as_trained"]) == set(ens["prior_undone"]) == {
        "val", "test", "dev"}
    for model in ("as_trained", "prior_undone"):
        assert set(res[model]) == {"val", "test", "dev"} and 0 <= res[model]["dev"]["macro_f1"] <= 1
    # a shift shrunk by K=0 is the full correction: from the views' logits, the corrected model's scores
    assert set(res["shrunk"]) == {"0", "5"} and sum(res["training_maps_per_class"].values()) > 0
    for split in ("val", "test", "dev"):
        for key in ("accuracy", "macro_f1"):
            assert res["shrunk"]["0"][split][key] == pytest.approx(res["prior_undone"][split][key], abs=2e-4)
    spec_file = next((tmp_path / "wd").rglob("self-train-model/model/model.json"))
    recorded = spec_file.read_text()
    spec = json.loads(recorded)
    spec["train"].pop("logit_shift")
    spec_file.write_text(json.dumps(spec))
    try:
        assert bench_prior_dev.main(["--workdir", str(bench), "--out", str(bench / "prior_old.json")]) == 0
    finally:
        spec_file.write_text(recorded)  # the second run below may read this model
    old = json.loads((bench / "prior_old.json").read_text())
    assert old["shift_source"].startswith("recomputed")
    assert old["shift"] == pytest.approx(res["shift"], abs=1e-6) and old["prior_undone"] == res["prior_undone"]


def _wise_benchmark_interpolates_final_and_source(tmp_path):
    """benchmarks/bench_wise_dev interpolates the deployed model's weights with the BN-adapted source model's: alpha=1
    and alpha=0 are those two models exactly, and re-estimating batch norm on the run's maps gives a third."""
    from benchmarks import bench_wise_dev

    bench = tmp_path / "bench"
    assert bench_wise_dev.main(["--workdir", str(bench), "--alphas", "1", "0", "--out", str(bench / "wise.json")]) == 0
    res = json.loads((bench / "wise.json").read_text())["variants"]
    assert res["alpha=1"] == res["final (alpha=1)"] and res["alpha=0"] == res["source (alpha=0)"]
    assert set(res["alpha=1, BN re-estimated"]) == {"val", "test", "dev"}
    assert 0 <= res["alpha=1, BN re-estimated"]["dev"]["macro_f1"] <= 1


def _selftrain_benchmark_tops_up_the_student(tmp_path):
    """benchmarks/bench_selftrain_dev reruns the run's self-training step with synthetic top-up: every class of the
    student's training set reaches the minimum (labeled + pseudo-labeled + synthetic), and both models are scored."""
    from benchmarks import bench_selftrain_dev

    bench = tmp_path / "bench"
    st = ("self_training={rounds: 1, threshold: 0.2, synthetic_min_per_class: 20, synthetic_map_size: 32, "
          "train: {strategy: full_finetune, epochs: 1}}")
    assert bench_selftrain_dev.main(["--workdir", str(bench), "--set", st, "--out-dir", str(tmp_path / "st"),
                                     "--out", str(bench / "st.json")]) == 0
    res = json.loads((bench / "st.json").read_text())
    assert res["synthetic"] == "on: wm811k synthetic maps until every class has 20"
    (r,) = res["per_round"]
    train = load_dataset(next((tmp_path / "wd").rglob("split-data/train/data.npz")))
    for c, name in enumerate(train.class_names):
        have = int((train.labels == c).sum()) + r["kept_per_class"][name]
        assert r["synthetic_per_class"][name] == max(0, 20 - have)
    assert sum(r["synthetic_per_class"].values()) > 0 and res["validation_would_keep"] in ("student", "teacher")
    assert {"student", next(k for k in res["dev"] if k.startswith("run's final"))} == set(res["dev"])
    assert set(res["dev"]["student"]["f1_per_class"]) == set(train.class_names)


def _keep_benchmark_scores_the_teacher_chain(tmp_path):
    """benchmarks/bench_keep_dev sends the selected candidate through the run's prior correction and source
    ensemble, and scores that chain beside the run's deployed model; the same function, given the model the run's
    self-training sent on, rebuilds the deployed model bit for bit."""
    from benchmarks import bench_keep_dev, bench_rounds_dev
    from benchmarks.bench_ensemble_dev import deployed_model, run_outputs
    from waferflow.orchestration.local import embedded_tracking_uri

    bench = tmp_path / "bench"
    assert bench_keep_dev.main(["--workdir", str(bench), "--set", "source_ensemble_below=100000",
                                "--out", str(bench / "keep.json")]) == 0
    res = json.loads((bench / "keep.json").read_text())
    assert res["teacher_chain_steps"] == {"prior_correction": "undone", "source_stage": "ensembled"}
    assert res["self_training"]["would_keep"] in ("student", "teacher")
    for chain in ("deployed", "teacher_chain", "both_chains"):
        assert set(res[chain]) == {"dev", "val"} and 0 <= res[chain]["dev"]["macro_f1"] <= 1
        assert res[chain]["val"]["nll"] > 0
    nll = res["raw_val_nll"]
    assert set(nll) == {"teacher", "student"} and min(nll.values()) > 0
    assert res["nll_would_keep"] == min(nll, key=nll.get)
    for key, a, b in (("deployed_minus_teacher", "deployed", "teacher_chain"),
                      ("both_minus_teacher", "both_chains", "teacher_chain"),
                      ("both_minus_deployed", "both_chains", "deployed")):
        change = res[f"dev_change_{key}"]
        for k in ("accuracy", "macro_f1"):
            assert change[k] == pytest.approx(res[a]["dev"][k] - res[b]["dev"][k], abs=2e-4)
    outs = run_outputs(bench / "run")
    rebuilt, _ = bench_keep_dev.after_self_training(
        outs / "self-train-model" / "model", outs, get_profile("real", ["source_ensemble_below=100000"]),
        embedded_tracking_uri(bench / "run"), tmp_path / "rebuilt")
    sha = [json.loads((d / "model.json").read_text())["weights_sha256"] for d in (rebuilt, deployed_model(outs))]
    assert sha[0] and sha[0] == sha[1]
    # bench_rounds_dev reads the same run the same way, and refuses it: a one-round run has no second round to drop
    with pytest.raises(SystemExit, match="self-trained 1 round"):
        bench_rounds_dev.main(["--workdir", str(bench), "--set", "source_ensemble_below=100000"])


def _pool_benchmark_counts_what_self_training_keeps(tmp_path):
    """benchmarks/bench_pseudo_pool_dev scores the run's own pool (its maps as the data stage stored them), each map
    labeled from the file the run's unlabeled maps came from; the rule keeps no more than its cap or its threshold."""
    import numpy as np

    from benchmarks import bench_pseudo_pool_dev

    bench, hidden = tmp_path / "bench", load_dataset(tmp_path / "unl.npz")
    assert bench_pseudo_pool_dev.main(["--workdir", str(bench), "--pool", str(tmp_path / "unl.npz"),
                                       "--out", str(bench / "pool.json")]) == 0
    res = json.loads((bench / "pool.json").read_text())
    rows = [res["per_class"][c]["teacher"] for c in hidden.class_names]
    # the run's pool holds 60 of the file's 100 maps (its n_unlabeled), at the tiny profile's map_size
    assert res["pool"] == 60 and res["pool_map_shape"] == [32, 32] and sum(r["true"] for r in rows) == 60
    assert all(r["true"] <= n for r, n in zip(rows, np.bincount(hidden.labels, minlength=len(rows))))
    assert res["kept"]["teacher"] == [sum(r["rule"][0] for r in rows), sum(r["rule"][1] for r in rows)]
    for r in rows:
        assert r["rule"][1] <= r["rule"][0] <= min(r["cap"], r["uncapped"]["0.9"][0])
        counts = [r["uncapped"][t][0] for t in ("0.5", "0.6", "0.7", "0.8", "0.9")]
        assert counts == sorted(counts, reverse=True)
    with pytest.raises(SystemExit, match="is not in the pool file"):  # maps the run never had
        bench_pseudo_pool_dev.main(["--workdir", str(bench), "--pool", str(bench / "dev.npz")])


def _second_source_benchmark_is_a_three_member_ensemble(tmp_path):
    """benchmarks/bench_second_source_dev: its options are what real ensembles score under the same TTA (a third
    member; the first member alone), with member 1 of the deployed ensemble as the registered source model. The
    "new" model here is the run's feature-extraction candidate, so a swap of the two source roles shows."""
    import numpy as np

    from benchmarks import bench_second_source_dev as bench2
    from benchmarks.bench_ensemble_dev import _models, _scores, _source_model, deployed_probs, run_outputs
    from benchmarks.bench_rot_tta_dev import angle_probs
    from waferflow.models.ensemble import ENSEMBLE_KEY, MeanProbabilityEnsemble, ensemble_record
    from waferflow.models.spec import load_model_dir, save_model_dir

    bench = tmp_path / "bench"
    new_dir = next(d for n, d in _models(bench / "run")[0].items() if n.startswith("feature_extraction"))
    out = bench / "second.json"
    assert bench2.main(["--workdir", str(bench), "--source-dir", str(new_dir), "--out", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    ds, angles = load_dataset(bench / "dev.npz", require_labels=True), [0.0, 45.0]
    assert run["second_source"]["paired_change"]["n"] == len(ds)

    def tta(model_dir, member=None):
        return np.mean(list(angle_probs(model_dir, ds, angles, member=member).values()), axis=0)

    model_dir, deployed = deployed_probs(bench, ds, angles)
    members, new = [tta(model_dir, i) for i in (0, 1)], tta(new_dir)
    np.testing.assert_allclose(members[1], tta(_source_model(bench / "run", run_outputs(bench / "run"))), atol=1e-6)
    assert run["registered_source_alone"] == _scores(ds.labels, members[1])
    model, spec = load_model_dir(model_dir)
    three = MeanProbabilityEnsemble([*model.members, load_model_dir(new_dir)[0]]).eval()
    record = ensemble_record([*spec.extra[ENSEMBLE_KEY]["member_sources"], str(new_dir)])
    save_model_dir(three, spec.replace(extra={**spec.extra, ENSEMBLE_KEY: record}, weights_sha256=None),
                   tmp_path / "three")
    opts = bench2.options(deployed, members[1], new)
    np.testing.assert_allclose(opts["second_source"], tta(tmp_path / "three"), atol=1e-5)
    np.testing.assert_allclose(opts["model_alone"], members[0], atol=1e-5)
    np.testing.assert_allclose(opts["source_third"], (2 * members[0] + members[1]) / 3, atol=1e-5)
    for name in ("second_source", "model_alone", "source_third", "new_source_alone"):
        assert {k: run[name][k] for k in ("accuracy", "macro_f1")} == _scores(ds.labels, opts[name])

def _stage(result, name):
    return [s for s in result.stages if s["stage"] == name and not s.get("cached")]


@pytest.fixture
def lswmd_like(tmp_path):
    ds = load_dataset(FIXTURE)
    # every other map labeled (real WM-811K maps of 9 classes), the rest unlabeled
    save_dataset(ds.subset(range(0, len(ds), 2)), tmp_path / "lab.npz")
    save_dataset(ds.subset(range(1, len(ds), 2)), tmp_path / "unl.npz")
    out = tmp_path / "LSWMD_like.pkl"
    write_lswmd_pickle(tmp_path / "lab.npz", tmp_path / "unl.npz", out)
    return out


@pytest.mark.slow
@pytest.mark.run_first
@pytest.mark.timeout(1800)
def test_source_model_registered_once_then_reused_and_self_training_reports(tmp_path, lswmd_like):
    from mlflow import MlflowClient

    profile = get_profile("tiny", [f"data={lswmd_like}", *RECIPE])
    r1 = run_local(profile, workdir=tmp_path / "wd")
    (src1,) = _stage(r1, "source_model")
    assert src1["pretrained_now"] == ["tf_efficientnet_lite0"] and src1["reused"] == []
    assert "wm811k synthetic source" in src1["note"]
    (data,) = _stage(r1, "data")
    assert data["n_unlabeled"] == 60 and data["pool"]["pool"] == 100  # the pool sampled to pool_size
    names = set(r1.summary["comparison_markdown"].split("|"))
    assert " full_finetune+source-tf_efficientnet_lite0 " in names
    assert " feature_extraction-tf_efficientnet_lite0 " in names
    (st,) = _stage(r1, "self_train")
    assert st["status"] in ("student", "teacher") and st["kept"] >= 0
    # candidates are chosen on validation; the test split is read by the one model that goes on, and only by it
    evals = _stage(r1, "evaluate")
    assert {e["model"] for e in evals if e["split"] == "val"} == {
        "feature_extraction-tf_efficientnet_lite0", "full_finetune+source-tf_efficientnet_lite0"}
    assert len({e["model"] for e in evals if e["split"] == "test"}) == 1
    reports = list((tmp_path / "wd").rglob("self_training.json"))
    rep = json.loads(next(p for p in reports if p.parent.name == "report").read_text())
    assert set(rep["per_round"][0]["kept_per_class"]) == set(load_dataset(FIXTURE).class_names)
    assert rep["pool"] == 60 and rep["per_round"][0]["unlabeled_maps"] == 60
    _prior_corrected_model_goes_on(r1, tmp_path)
    _deployed_form_is_the_tta_graph(r1, tmp_path)
    _ensemble_benchmark_reads_the_run(tmp_path)
    _prior_benchmark_scores_before_and_after(tmp_path)
    _wise_benchmark_interpolates_final_and_source(tmp_path)
    _selftrain_benchmark_tops_up_the_student(tmp_path)
    _keep_benchmark_scores_the_teacher_chain(tmp_path)
    _pool_benchmark_counts_what_self_training_keeps(tmp_path)
    _second_source_benchmark_is_a_three_member_ensemble(tmp_path)

    # a second run: the source stage is never cached (the registry is its cache); it finds the model by its recipe
    r2 = run_local(profile, workdir=tmp_path / "wd")
    (src2,) = _stage(r2, "source_model")
    assert src2["reused"] == ["tf_efficientnet_lite0"] and src2["pretrained_now"] == []
    client = MlflowClient(r2.tracking_uri)
    versions = client.search_model_versions("name='wafer-source-wm811k'")
    assert len(versions) == 1
    # the source candidate started from that registered version (its weights lineage names the URI)
    record = json.loads(next((tmp_path / "wd").rglob("candidates.json")).read_text())
    meta = record["model_metadata"]["full_finetune+source-tf_efficientnet_lite0"]
    assert meta["init"] == "source" and meta["weights_source"].endswith("@source")
    assert any("models:/wafer-source-wm811k/1" in w for w in meta["weights_lineage"]), meta["weights_lineage"]


def _prior_corrected_model_goes_on(result, tmp_path):
    """The class weights' prior is taken out of the head of the model that self-training sent on, and that model is
    the one evaluated on test, exported and registered."""
    import numpy as np

    (pc,) = _stage(result, "prior_correction")
    assert pc["status"] == "undone"
    outs = next((tmp_path / "wd" / "kfp_outputs").glob("waferflow-training-*"))
    before = json.loads((outs / "self-train-model" / "model" / "model.json").read_text())
    after = json.loads((outs / "correct-prior" / "model" / "model.json").read_text())
    shift = np.array(before["train"]["logit_shift"])
    assert np.abs(shift).max() > 0.05 and after["train"]["logit_shift"] == [0.0] * len(shift)
    assert after["prior_correction"]["shift"] == dict(zip(before["class_names"], shift.tolist()))
    assert after["weights_sha256"] != before["weights_sha256"]
    meta = _model_metadata(outs, "correct-prior")
    assert meta["weights_sha256"] == after["weights_sha256"]
    # validation was scored as trained and corrected; the model's val_* figures are the corrected model's
    report = json.loads((outs / "correct-prior" / "report" / "prior_correction.json").read_text())
    assert meta["val_accuracy"] == report["validation"]["after"]["accuracy"]
    assert meta["val_macro_f1"] == report["validation"]["after"]["macro_f1"]
    assert meta["val_before_prior_correction"] == report["validation"]["before"]
    _source_interpolation_goes_on(result, outs, after)


def _model_metadata(outs, task):
    meta = json.loads((outs / task / "executor_output.json").read_text())["artifacts"]["model"]
    return meta["artifacts"][0]["metadata"]


def _source_interpolation_goes_on(result, outs, corrected):
    """After the prior correction, the model and the registered source model become one mean-probability ensemble
    (source_ensemble_below is above the run's labels); the ensemble is the model that is exported, gated and
    registered, and its ONNX graph matched it in the export's parity check."""
    from waferflow.models import load_model_dir
    from waferflow.models.ensemble import MeanProbabilityEnsemble

    (si,) = _stage(result, "source_interpolation")
    assert si["status"] == "ensembled" and set(si["validation"]) == {"before", "after"}
    out = json.loads((outs / "interpolate-source" / "model" / "model.json").read_text())
    assert out["ensemble"]["members"] == 2 and out["ensemble"]["member_sources"] == [
        f"sha256:{corrected['weights_sha256']}", "models:/wafer-source-wm811k/1"]
    assert out["source_ensemble"]["source"] == "models:/wafer-source-wm811k/1"
    assert isinstance(load_model_dir(outs / "interpolate-source" / "model")[0], MeanProbabilityEnsemble)
    export = json.loads((outs / "export-model" / "onnx" / "export.json").read_text())
    assert export["source"]["weights_sha256"] == out["weights_sha256"] == _model_metadata(outs, "interpolate-source")[
        "weights_sha256"]
    assert _model_metadata(outs, "interpolate-source")["val_before_source_interpolation"] == si["validation"][
        "before"]


def _deployed_form_is_the_tta_graph(result, tmp_path):
    """The gates read onnx_fp32_tta, the version serves it, and `waferflow evaluate` on the champion defaults to it."""
    from mlflow import MlflowClient

    from waferflow.cli import main

    gates = json.loads(next((tmp_path / "wd").rglob("gates.json")).read_text())
    assert gates["gated_form"] == "onnx_fp32_tta" and gates["config"]["deployment_form"] == "onnx_fp32_tta"
    assert "onnx_fp32_tta" in gates["results"][[r["name"] for r in gates["results"]].index("p99_latency_ms")]["detail"]
    # the graph also averages the views of each map turned by export.tta_rotations
    export = json.loads(next((tmp_path / "wd").rglob("export.json")).read_text())
    assert export["tta"]["rotations"] == [45.0] and export["tta"]["forms"]["onnx_fp32_tta"]["views"] == 16
    v = MlflowClient(result.tracking_uri).get_model_version_by_alias("wafer-defect-classifier", "champion")
    assert v.tags["served_form"] == "onnx_fp32_tta"
    out = tmp_path / "champion_eval"
    assert main(["evaluate", "--model", "models:/wafer-defect-classifier@champion", "--tracking-uri",
                 result.tracking_uri, "--data", str(FIXTURE), "--out", str(out), "--gradcam-per-class", "0"]) == 0
    assert json.loads((out / "metrics.json").read_text())["form"] == "onnx_fp32_tta"


def test_data_without_a_synthetic_taxonomy_keeps_imagenet_candidates_and_says_so():
    from waferflow.orchestration.source_step import resolve_sources

    found = resolve_sources(["a", "b"], ["tf_efficientnet_lite0"], {"n_maps": 100}, 64, "offline", "cpu", "")
    assert found["sources"] == {} and "no synthetic taxonomy" in found["note"]
    off = resolve_sources(["a", "b"], ["tf_efficientnet_lite0"], {}, 64, "offline", "cpu", "")
    assert off["sources"] == {} and off["note"].startswith("off")


def test_dev_benchmarks_refuse_a_folder_that_holds_no_finished_run(tmp_path):
    from benchmarks import (bench_ensemble_dev, bench_keep_dev, bench_pseudo_pool_dev, bench_rounds_dev,
                            bench_second_source_dev, bench_selftrain_dev)

    (tmp_path / "run").mkdir()
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_rounds_dev.main(["--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_keep_dev.main(["--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_ensemble_dev.main(["--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_pseudo_pool_dev.main(["--workdir", str(tmp_path)])
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_selftrain_dev.main(["--workdir", str(tmp_path), "--out-dir", str(tmp_path / "st")])
    with pytest.raises(SystemExit, match="holds no pipeline run"):
        bench_second_source_dev.main(["--workdir", str(tmp_path), "--source-dir", str(tmp_path)])
    assert not (tmp_path / "st").exists()  # refused before anything was written
