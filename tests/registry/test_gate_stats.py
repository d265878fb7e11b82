"""Gates that fit the data: intervals, paired tests against the champion, per-profile thresholds, one-line reasons."""

import numpy as np
import pytest
from wfreg_helpers import make_latency, make_metrics

from waferflow.errors import ConfigError
from waferflow.evaluation import metrics_from_logits
from waferflow.gates import (GateConfig, GateInputError, bootstrap_macro_f1, check_gates, gate_per_class_recall,
                             gate_vs_champion, mcnemar_worse, wilson_interval)
from waferflow.profiles import PROFILE_NAMES, _PROFILES, get_profile

WM = ["Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none"]
# the 89-map test split of WM-811K train_1 (623 labels, 70/15/15), by class
SUPPORT_89 = {"Center": 6, "Donut": 1, "Edge-Loc": 7, "Edge-Ring": 14, "Loc": 5, "Near-full": 0, "Random": 1,
              "Scratch": 2, "none": 53}


# the real profile's 10% test split of train_1 in the real-data benchmark (62 maps)
SUPPORT_62 = {"Center": 4, "Donut": 1, "Edge-Loc": 6, "Edge-Ring": 10, "Loc": 4, "Near-full": 0, "Random": 0,
              "Scratch": 1, "none": 36}


def metrics_with_hits(hits: dict[str, int], support: dict[str, int] = SUPPORT_89) -> dict:
    """An eval dict of a split with ``support`` maps per class (default the 89-map split) where class c has
    ``hits[c]`` maps right (misses go to 'none', and a missed 'none' goes to 'Loc')."""
    y, pred = [], []
    for c, n in support.items():
        k = WM.index(c)
        wrong = WM.index("Loc") if c == "none" else WM.index("none")
        y += [k] * n
        pred += [k] * hits[c] + [wrong] * (n - hits[c])
    logits = np.eye(len(WM))[pred] * 5.0
    return metrics_from_logits(np.asarray(y), logits, WM)


def test_wilson_interval_matches_the_textbook_values():
    lo, hi = wilson_interval(8, 10)
    assert (round(lo, 3), round(hi, 3)) == (0.490, 0.943)
    assert wilson_interval(0, 2)[0] == pytest.approx(0.0, abs=1e-12) and wilson_interval(0, 2)[1] > 0.6


def test_macro_f1_interval_brackets_the_value_and_narrows_with_more_maps():
    small, large = make_metrics(0.9, n=88), make_metrics(0.9, n=1600)
    lo_s, hi_s = bootstrap_macro_f1(small["confusion_matrix"])
    lo_l, hi_l = bootstrap_macro_f1(large["confusion_matrix"])
    assert lo_s < small["overall"]["macro_f1"] < hi_s and lo_l < large["overall"]["macro_f1"] < hi_l
    assert (hi_s - lo_s) > 3 * (hi_l - lo_l)


def test_every_gated_metric_carries_its_interval():
    rep = check_gates({"metrics": make_metrics(0.95, n=200), "int8_metrics": make_metrics(0.95, n=200),
                       "latency": make_latency()})
    got = {r.name: r for r in rep.results}
    for name in ("accuracy", "macro_f1", "per_class_recall"):
        r = got[name]
        assert r.ci_low < r.value <= r.ci_high, name
    assert "[" in rep.markdown_table() and "95% interval" in rep.markdown_table()


def test_champion_comparison_is_paired_not_two_numbers():
    y = np.arange(4000) % 4
    champ = y.copy()
    cand = y.copy()
    cand[:12] = (y[:12] + 1) % 4  # the candidate loses 12 maps and wins none: -0.3 points, inside the 0.5 tolerance
    m_cand, m_champ = (metrics_from_logits(y, np.eye(4)[p] * 5.0, ["a", "b", "c", "d"]) for p in (cand, champ))
    point = gate_vs_champion(m_cand, m_champ, GateConfig(), "1")
    assert all(r.passed for r in point)  # two numbers say "fine"
    paired = gate_vs_champion(m_cand, m_champ, GateConfig(), "1", {"labels": y, "predictions": cand},
                              {"predictions": champ})
    acc = paired[0]
    assert acc.name == "vs_champion_accuracy" and not acc.passed and acc.p_value == pytest.approx(0.5 ** 12)
    assert "McNemar" in acc.detail and "only v1" not in acc.detail and "only champion v1 right 12" in acc.detail
    assert acc.ci_high < 0


def test_paired_test_does_not_punish_noise_on_a_small_split():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 100)
    champ, cand = y.copy(), y.copy()
    champ[[0, 1]] = (y[[0, 1]] + 1) % 4
    cand[[2, 3, 4, 5]] = (y[[2, 3, 4, 5]] + 1) % 4  # 2 points worse on 100 maps, 4 vs 2 discordant maps
    assert mcnemar_worse(y, cand, champ)[:2] == (4, 2)
    names = ["a", "b", "c", "d"]
    res = gate_vs_champion(metrics_from_logits(y, np.eye(4)[cand], names),
                           metrics_from_logits(y, np.eye(4)[champ], names), GateConfig(), "3",
                           {"labels": y, "predictions": cand}, {"predictions": champ})
    assert all(r.passed for r in res) and all(r.p_value > 0.05 for r in res)


def test_paired_test_refuses_predictions_of_different_maps():
    m = make_metrics(0.9)
    with pytest.raises(GateInputError, match="same maps"):
        gate_vs_champion(m, m, GateConfig(), "1", {"labels": [0, 1, 2], "predictions": [0, 1, 2]},
                         {"predictions": [0, 1]})


def test_a_gate_miss_explains_itself_in_one_line():
    rep = check_gates({"metrics": make_metrics(0.8), "int8_metrics": make_metrics(0.8), "latency": make_latency()})
    assert not rep.passed and "\n" not in rep.reason
    assert rep.reason.startswith("failed: accuracy 0.8000 [") and "< 0.92" in rep.reason
    assert "macro_f1" in rep.reason and "< 0.85" in rep.reason
    assert rep.to_dict()["reason"] == rep.reason
    ok = check_gates({"metrics": make_metrics(0.95), "int8_metrics": make_metrics(0.95), "latency": make_latency()})
    assert ok.reason == "passed every gate"


def test_interval_judging_spares_a_class_with_two_test_maps_but_not_one_with_ten():
    m = make_metrics(0.95)
    m["per_class"]["Donut"] = {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert not gate_per_class_recall(m, GateConfig()).passed
    assert gate_per_class_recall(m, GateConfig(judge="interval")).passed
    m["per_class"]["Donut"]["support"] = 10
    r = gate_per_class_recall(m, GateConfig(judge="interval"))
    assert not r.passed and "Donut=0.0000 [0.0000, 0.2775] (n=10)" in r.detail


def test_every_profile_states_its_thresholds():
    keys = {"min_accuracy", "min_macro_f1", "min_class_recall", "max_int8_accuracy_drop", "max_p99_latency_ms",
            "deployment_form", "judge", "confidence", "champion_alpha"}
    for name in PROFILE_NAMES:
        assert keys <= set(_PROFILES[name]["gates"]), name
        lines = get_profile(name).gate_config().describe()
        assert len(lines) == 3 and "McNemar" in lines[2]
    assert "real" in PROFILE_NAMES


def test_a_bad_gate_is_refused_when_the_profile_loads():
    with pytest.raises(ConfigError, match="profile 'local': gates: unknown config key"):
        get_profile("local", ["gates.min_acc=0.9"])
    with pytest.raises(ConfigError, match="judge"):
        get_profile("real", ["gates.judge=median"])


@pytest.mark.parametrize("support, working_hits, failed_hits", [
    # the 89-map split (15% of train_1's lots)
    (SUPPORT_89, {"Center": 5, "Donut": 1, "Edge-Loc": 5, "Edge-Ring": 13, "Loc": 3, "Near-full": 0, "Random": 1,
                  "Scratch": 1, "none": 51},
     {"Center": 3, "Donut": 0, "Edge-Loc": 2, "Edge-Ring": 10, "Loc": 0, "Near-full": 0, "Random": 0, "Scratch": 0,
      "none": 47}),
    # the real profile's 10% test split (62 maps): wider intervals, the same verdicts
    (SUPPORT_62, {"Center": 3, "Donut": 1, "Edge-Loc": 4, "Edge-Ring": 10, "Loc": 2, "Near-full": 0, "Random": 0,
                  "Scratch": 1, "none": 35},
     {"Center": 2, "Donut": 0, "Edge-Loc": 1, "Edge-Ring": 7, "Loc": 0, "Near-full": 0, "Random": 0, "Scratch": 0,
      "none": 33}),
], ids=["89-maps", "62-maps"])
def test_real_profile_gates_pass_a_working_recipe_and_fail_a_failed_one(support, working_hits, failed_hits):
    """A transfer recipe at the README's level (~90% accuracy) against scratch at 64 px (~70%), on the real
    profile's small test splits. The synthetic gates refuse both, which is why `run --data` never promoted."""
    working, failed = metrics_with_hits(working_hits, support), metrics_with_hits(failed_hits, support)
    n = sum(support.values())
    assert working["overall"]["n"] == n and working["overall"]["accuracy"] == pytest.approx(
        sum(working_hits.values()) / n)
    assert 0.89 < working["overall"]["accuracy"] < 0.91 and failed["overall"]["accuracy"] < 0.71

    def run(m, profile):
        return check_gates({"metrics": m, "int8_metrics": m, "latency": make_latency()},
                           get_profile(profile).gate_config())

    assert run(working, "real").passed, run(working, "real").reason
    bad = run(failed, "real")
    assert {r.name for r in bad.violations} == {"accuracy", "macro_f1", "per_class_recall"}, bad.reason
    assert not run(working, "local").passed


def test_run_with_data_uses_the_real_profile(monkeypatch, tmp_path, capsys):
    import waferflow.orchestration.local as local
    from waferflow.cli import main

    seen = {}

    def fake_run_local(profile, **kw):
        seen["profile"] = profile
        raise KeyboardInterrupt

    monkeypatch.setattr(local, "run_local", fake_run_local)
    data = tmp_path / "maps.npz"
    data.write_bytes(b"")
    main(["run", "--data", str(data), "--workdir", str(tmp_path)])
    assert seen["profile"].name == "real" and seen["profile"].gate_config().judge == "interval"
    main(["run", "--data", str(data), "--profile", "local", "--workdir", str(tmp_path)])
    assert seen["profile"].name == "local"
    pool = tmp_path / "pool.npz"
    pool.write_bytes(b"")
    main(["run", "--data", str(data), "--unlabeled", str(pool), "--workdir", str(tmp_path)])
    assert seen["profile"].unlabeled == str(pool) and seen["profile"].name == "real"
    # --unlabeled is a pool for one's own labeled maps; a missing file is named before anything runs
    capsys.readouterr()
    seen.clear()
    assert main(["run", "--unlabeled", str(pool), "--workdir", str(tmp_path)]) == 2
    assert "give those with --data" in capsys.readouterr().err
    assert main(["run", "--data", str(data), "--unlabeled", str(tmp_path / "nope.npz"),
                 "--workdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "--unlabeled" in err and "nope.npz does not exist" in err
    assert seen == {}
