"""Unit tests of the pure gate functions."""

import copy

import pytest
from wfreg_helpers import make_latency, make_metrics

from waferflow.errors import ConfigError
from waferflow.gates import (GateConfig, GateInputError, GateReport, check_gates, gate_accuracy, gate_int8_drop,
                             gate_macro_f1, gate_p99_latency, gate_per_class_recall, gate_vs_champion)

CFG = GateConfig()


def cand(acc=0.95, int8_acc=0.945, p99=3.0, **kw):
    return {"metrics": make_metrics(acc, **kw), "int8_metrics": make_metrics(int8_acc, seed=1),
            "latency": make_latency(p99)}


def test_defaults_match_design_card():
    assert (CFG.min_accuracy, CFG.min_macro_f1, CFG.min_class_recall, CFG.max_int8_accuracy_drop,
            CFG.max_p99_latency_ms, CFG.deployment_form) == (0.92, 0.85, 0.5, 0.01, 50.0, "onnx_int8")


def test_accuracy_gate_boundary():
    assert gate_accuracy(make_metrics(0.92), CFG).passed  # >= is inclusive
    r = gate_accuracy(make_metrics(0.9), CFG)
    assert not r.passed and r.value == pytest.approx(0.9) and r.threshold == 0.92 and r.op == ">="


def test_macro_f1_gate():
    assert gate_macro_f1(make_metrics(0.95), CFG).passed
    assert not gate_macro_f1(make_metrics(0.8), CFG).passed


def test_per_class_recall_names_the_weak_class():
    m = make_metrics(0.95, weak_class="Donut", weak_recall=0.2)
    r = gate_per_class_recall(m, CFG)
    assert not r.passed and r.value == pytest.approx(0.2) and "Donut" in r.detail
    assert gate_per_class_recall(make_metrics(0.95), CFG).passed


def test_per_class_recall_ignores_unsupported_class_but_says_so():
    m = make_metrics(0.95)
    m["per_class"]["Donut"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    r = gate_per_class_recall(m, CFG)
    assert r.passed and "no test support: Donut" in r.detail


def test_int8_drop_gate():
    assert gate_int8_drop(make_metrics(0.95), make_metrics(0.945), CFG).passed
    r = gate_int8_drop(make_metrics(0.95), make_metrics(0.93), CFG)
    assert not r.passed and r.value == pytest.approx(0.02)
    missing = gate_int8_drop(make_metrics(0.95), None, CFG)
    assert missing is not None and not missing.passed and missing.value is None
    assert gate_int8_drop(make_metrics(0.95), None, GateConfig(deployment_form="onnx_fp32")) is None


def test_deployed_metrics_are_judged_and_int8_drop_is_measured_from_the_reference():
    """The absolute gates read ``metrics`` (the deployed form's, e.g. INT8); the INT8 drop is FP32 -> INT8."""
    c = {"metrics": make_metrics(0.93), "reference_metrics": make_metrics(0.95),
         "int8_metrics": make_metrics(0.93, seed=1), "latency": make_latency(3.0)}
    r = {x.name: x for x in check_gates(c, CFG).results}
    assert r["accuracy"].value == pytest.approx(0.93)
    assert r["int8_accuracy_drop"].value == pytest.approx(0.02) and not r["int8_accuracy_drop"].passed
    without = {x.name: x for x in check_gates({k: v for k, v in c.items() if k != "reference_metrics"}, CFG).results}
    assert without["int8_accuracy_drop"].value == pytest.approx(0.0)  # no reference: from the judged metrics


def test_latency_gate_uses_deployment_form():
    lat = make_latency(60.0)
    lat["forms"]["onnx_fp32"]["p99_ms"] = 10.0
    assert not gate_p99_latency(lat, CFG).passed
    assert gate_p99_latency(lat, GateConfig(deployment_form="onnx_fp32")).passed
    skipped = gate_p99_latency(make_latency(), GateConfig(deployment_form="tensorrt_fp16"))
    assert not skipped.passed and "no CUDA device" in skipped.detail


def test_vs_champion_tolerance():
    ok = gate_vs_champion(make_metrics(0.952), make_metrics(0.955), CFG, "3")
    assert all(r.passed for r in ok)  # 0.003 worse is within 0.005
    bad = gate_vs_champion(make_metrics(0.94), make_metrics(0.96), CFG, "3")
    assert [r.name for r in bad if not r.passed] == ["vs_champion_accuracy", "vs_champion_macro_f1"]
    assert "champion v3" in bad[0].detail


def test_all_pass_without_champion_only_absolute():
    rep = check_gates(cand())
    assert rep.passed and rep.violations == [] and rep.champion_version is None
    assert [r.name for r in rep.results] == ["accuracy", "macro_f1", "per_class_recall", "int8_accuracy_drop",
                                             "p99_latency_ms"]


def test_returns_every_violation_at_once():
    c = cand(acc=0.95, int8_acc=0.5, p99=80.0, weak_class="Center", weak_recall=0.1)
    champ = {"metrics": make_metrics(0.97), "version": 7}
    rep = check_gates(c, CFG, champion=champ)
    names = {r.name for r in rep.violations}
    # the weak class pulls accuracy to ~0.74 and macro-F1 to ~0.69: both absolute gates fail too
    assert names == {"accuracy", "macro_f1", "per_class_recall", "int8_accuracy_drop", "p99_latency_ms",
                     "vs_champion_accuracy", "vs_champion_macro_f1"}
    assert not rep.passed and rep.champion_version == "7"
    for r in rep.results:
        assert {"name", "value", "threshold", "op", "passed"} <= set(r.__dict__)


def test_report_roundtrip_and_table():
    rep = check_gates(cand(p99=80.0), GateConfig(min_accuracy=0.9), {"metrics": make_metrics(0.95), "version": "2"})
    back = GateReport.from_dict(copy.deepcopy(rep.to_dict()))
    assert back == rep
    table = rep.markdown_table()
    assert "| p99_latency_ms | 80.0000 | <= 50 | **FAIL** |" in table


def test_bad_input_is_a_clear_error():
    with pytest.raises(GateInputError, match="overall.accuracy"):
        check_gates({"metrics": {"overall": {}}, "latency": make_latency()})
    with pytest.raises(GateInputError, match="'metrics'"):
        check_gates({"latency": make_latency()})
    with pytest.raises(GateInputError, match="champion"):
        check_gates(cand(), CFG, champion={"nope": 1})


@pytest.mark.parametrize("kw", [{"min_accuracy": 1.5}, {"max_p99_latency_ms": 0}, {"deployment_form": ""},
                                {"champion_accuracy_tolerance": -0.1}])
def test_config_is_validated(kw):
    with pytest.raises(ConfigError):
        GateConfig(**kw)


def test_config_loads_from_yaml_overrides(tmp_path):
    from waferflow.config import load_config

    cfg = load_config(GateConfig, overrides=["max_p99_latency_ms=20", "deployment_form=onnx_fp32"])
    assert cfg.max_p99_latency_ms == 20.0 and cfg.deployment_form == "onnx_fp32"
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(GateConfig, overrides=["max_p99=20"])


def test_model_card_says_whose_class_prior_the_scores_follow():
    """A reviewer sees whether the class weights' prior was taken out of the head (waferflow.train.prior)."""
    from waferflow.tracking.card import build_model_card

    spec = {"strategy": "full_finetune", "backbone": "tf_efficientnet_lite0", "class_names": ["a", "b"]}
    metrics = {"overall": {"accuracy": 0.9, "macro_f1": 0.8, "n": 10}, "per_class": {}}

    def card(spec, config):
        return build_model_card(name="m", spec=spec, metrics=metrics, gate_report=GateReport(results=()),
                                config=config)

    undone = card({**spec, "prior_correction": {"status": "undone", "shift": {"a": -0.5, "b": 0.5}}},
                  {"class_weights": "sqrt"})
    assert "- Class prior: the data's own; the shift the class weights put into the logits was taken out" in undone
    kept = card(spec, {"class_weights": "sqrt"})
    assert "- Class prior: as trained (class_weights=sqrt, balanced_sampler=False): scores lean towards" in kept
    assert "Class prior" not in card(spec, {"class_weights": "none"})
    assert "mixup_alpha=0.2" in card(spec, {"mixup_alpha": 0.2}) and "mixup" not in card(spec, {"mixup_alpha": 0.0})
    trained = {**spec, "train": {"host": {"cpu": "Intel(R) Xeon(R) Processor", "machine": "x86_64", "cores": 2,
                                          "simd": ["avx2", "avx512f"], "torch_threads": 2, "device": "cpu"}}}
    assert ("- Trained on: Intel(R) Xeon(R) Processor (x86_64, 2 cores; avx2 avx512f), 2 torch threads; seeded, so a "
            "rerun on this kind of CPU gives these weights again") in card(trained, {})
    gpu = {**spec, "train": {"host": {**trained["train"]["host"], "device": "cuda", "gpu": "NVIDIA H100"}}}
    assert "2 torch threads, on NVIDIA H100; seeded, but a rerun on another GPU" in card(gpu, {})
    assert "Trained on" not in card(spec, {})


def test_model_card_says_when_the_weights_were_averaged_or_ensembled_with_the_source_model():
    """A reviewer sees how much of the weights came from the source model (waferflow.train.wise), or that the model
    is an ensemble with it (waferflow.train.source_ensemble), and on what."""
    from waferflow.tracking.card import build_model_card

    spec = {"strategy": "full_finetune", "backbone": "tf_efficientnet_lite0", "class_names": ["a", "b"]}
    metrics = {"overall": {"accuracy": 0.9, "macro_f1": 0.8, "n": 10}, "per_class": {}}
    averaged = {"status": "averaged", "source_weight": 0.5, "bn_maps": 4724,
                "validation": {"before": {"macro_f1": 0.7771}, "after": {"macro_f1": 0.8049}}}
    text = build_model_card(name="m", spec={**spec, "source_interpolation": averaged}, metrics=metrics,
                            gate_report=GateReport(results=()), config={})
    assert ("- Weight averaging: 0.5 of every weight is the source model's (WiSE-FT, `waferflow.train.wise`), batch "
            "norm re-estimated on 4724 of the run's maps; validation macro-F1 0.777 before, 0.805 after") in text
    skipped = {**spec, "source_interpolation": {"status": "off: source_weight is 0", "source_weight": 0.0}}
    assert "Weight averaging" not in build_model_card(name="m", spec=skipped, metrics=metrics,
                                                      gate_report=GateReport(results=()), config={})
    ensembled = {"status": "ensembled", "source_ensemble_below": 1000, "n_labeled": 498,
                 "source": "models:/wafer-source-wm811k/1",
                 "validation": {"before": {"macro_f1": 0.7768}, "after": {"macro_f1": 0.8327}}}
    text = build_model_card(name="m", spec={**spec, "source_ensemble": ensembled}, metrics=metrics,
                            gate_report=GateReport(results=()), config={})
    assert ("- Ensemble: the mean probability of the fine-tuned model and the synthetic source model "
            "`models:/wafer-source-wm811k/1` (`waferflow.train.source_ensemble`: 498 labeled training maps, fewer "
            "than 1000); two forward passes per map; validation macro-F1 0.777 for the model alone, 0.833 for the "
            "ensemble") in text
    assert "Weight averaging" not in text
