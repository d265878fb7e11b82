"""Launcher helpers: stage records, progress relay, fingerprints, profiles, candidate lists."""

import io
import json
import re

import pytest

from waferflow.errors import ConfigError, DataError, WaferflowError
from waferflow.orchestration import runtime
from waferflow.orchestration.local import RunResult, fingerprint, format_result, pipeline_arguments
from waferflow.profiles import PROFILE_NAMES, get_profile


def test_stage_writes_a_jsonl_record_and_marks_failures(tmp_path, monkeypatch, capsys):
    log = tmp_path / "stages.jsonl"
    monkeypatch.setenv(runtime.STAGE_LOG_ENV, str(log))
    with runtime.stage("split", n=3) as rec:
        rec["extra"] = 1
    with pytest.raises(ValueError):
        with runtime.stage("train", candidate="c"):
            raise ValueError("boom")
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [(r["stage"], r["ok"]) for r in rows] == [("split", True), ("train", False)]
    assert rows[0]["extra"] == 1 and rows[0]["seconds"] >= 0
    out = capsys.readouterr().out
    assert "==> [waferflow] stage split n=3" in out and "stage train FAILED" in out


def test_progress_relay_turns_carriage_returns_into_lines():
    buf = io.StringIO()
    w = runtime._CarriageReturnToNewline(buf)
    w.write("\r 10%|#  |\r 20%|## |")
    assert buf.getvalue().count("\n") == 2 and "\r" not in buf.getvalue()


def test_choose_best_ranks_by_macro_f1_then_accuracy():
    from waferflow.selection import choose_best

    rows = {"a": {"overall": {"macro_f1": 0.9, "accuracy": 0.91}}, "b": {"overall": {"macro_f1": 0.9, "accuracy": 0.95}},
            "c": {"overall": {"macro_f1": 0.8, "accuracy": 0.99}}}
    assert choose_best(rows) == ("b", ["b", "a", "c"])
    with pytest.raises(WaferflowError):
        choose_best({})


def test_tracking_uri_needs_a_value(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(WaferflowError, match="MLFLOW_TRACKING_URI"):
        runtime.tracking_uri("")
    assert runtime.tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_fingerprint_follows_content_not_path(tmp_path):
    a = tmp_path / "a.npz"
    a.write_bytes(b"abc")
    f1 = fingerprint(a)
    a.write_bytes(b"abd")
    assert fingerprint(a) != f1
    d = tmp_path / "pngs"
    (d / "Center").mkdir(parents=True)
    (d / "Center" / "1.png").write_bytes(b"x")
    f2 = fingerprint(d)
    (d / "Center" / "2.png").write_bytes(b"y")
    assert fingerprint(d) != f2
    with pytest.raises(DataError, match="does not exist"):
        fingerprint(tmp_path / "nope")


def test_profiles_validate_and_pipeline_arguments(tmp_path):
    assert {"local", "full", "tiny"} <= set(PROFILE_NAMES)
    local = get_profile("local")
    assert local.n_maps == 10000 and local.map_size == 64 and local.backbones == ("tf_efficientnet_lite0",)
    assert local.strategies == () and local.device == "cpu"  # every strategy, CPU
    with pytest.raises(ConfigError, match="unknown profile"):
        get_profile("huge")
    with pytest.raises(ConfigError, match="unknown config key"):
        get_profile("local", ["n_map=3"])
    with pytest.raises(ConfigError, match="device"):
        get_profile("local", ["device=tpu"])
    src = tmp_path / "maps.npz"
    src.write_bytes(b"123")
    p = get_profile("tiny", [f"data={src}", "gates.min_accuracy=0.5"])
    from waferflow.pipelines.training import candidates_of

    cands = candidates_of(p)
    assert cands == [{"strategy": "feature_extraction", "backbone": "tf_efficientnet_lite0"},
                     {"strategy": "full_finetune", "backbone": "tf_efficientnet_lite0"}]
    args = pipeline_arguments(p, cands)
    assert args["data_source"] == str(src.resolve()) and len(args["data_fingerprint"]) == 64
    assert args["unlabeled_source"] == args["unlabeled_fingerprint"] == ""
    pool = tmp_path / "pool.npz"
    pool.write_bytes(b"456")
    with_pool = pipeline_arguments(get_profile("tiny", [f"data={src}", f"unlabeled={pool}"]), cands)
    assert with_pool["unlabeled_source"] == str(pool.resolve()) and with_pool["unlabeled_fingerprint"] == fingerprint(pool)
    with pytest.raises(DataError, match="--unlabeled .* does not exist"):
        pipeline_arguments(get_profile("tiny", [f"data={src}", f"unlabeled={tmp_path / 'gone.npz'}"]), cands)
    with pytest.raises(ConfigError, match="give those with --data"):
        get_profile("tiny", [f"unlabeled={pool}"])
    assert args["gates"]["min_accuracy"] == 0.5
    from waferflow.train.strategies import STRATEGIES

    assert [c["strategy"] for c in candidates_of(get_profile("local"))] == list(STRATEGIES)


def test_real_profile_carries_the_recipe_and_refuses_bad_recipe_settings():
    from waferflow.pipelines.training import candidates_of

    real = get_profile("real")
    cands = candidates_of(real)
    assert {"strategy": "full_finetune", "backbone": "tf_efficientnet_lite0", "init": "source"} in cands
    assert any(c.get("init", "imagenet") == "imagenet" for c in cands)  # ImageNet-only candidates stay
    assert real.train["steps"] > 0 and real.self_training["rounds"] >= 1 and real.pool_size > 0
    args = pipeline_arguments(real, cands)
    assert args["source_settings"] == real.source and args["self_training"] == real.self_training
    assert args["pool_size"] == real.pool_size
    with pytest.raises(ConfigError, match="need a source recipe"):
        get_profile("tiny", ["source_strategies=[full_finetune]"])
    with pytest.raises(ConfigError, match="source: .*n_maps"):
        get_profile("real", ["source.n_maps=3"])
    # the source maps' generator settings are checked before any task runs too
    with pytest.raises(ConfigError, match=r"source: source.synth: pattern_ranges: loc.density must be"):
        get_profile("real", ["source.synth.pattern_ranges.loc.density=[0.9,0.1]"])
    with pytest.raises(ConfigError, match=r"source: source.synth: unknown config key\(s\) pattern_range"):
        get_profile("real", ["source.synth.pattern_range.loc.density=[0.1,0.9]"])
    with pytest.raises(ConfigError, match="self_training: .*threshold"):
        get_profile("real", ["self_training.threshold=2"])
    with pytest.raises(ConfigError, match="self_training: .*unknown config key"):
        get_profile("real", ["self_training.round=2"])
    # training keys too, before any task runs (a typo used to surface only when the first candidate trained)
    with pytest.raises(ConfigError, match="train: unknown config key.*fast_depthwse_grad"):
        get_profile("local", ["train.fast_depthwse_grad=false"])
    with pytest.raises(ConfigError, match="train: batch_size must be >= 1"):
        get_profile("real", ["train.batch_size=0"])
    assert get_profile("local", ["train.fast_depthwise_grad=false"]).train == {"fast_depthwise_grad": False}
    # the real profile deploys the TTA graph, which only export.tta writes
    assert real.gate_config().deployment_form == "onnx_fp32_tta" and real.export["tta"] is True
    with pytest.raises(ConfigError, match="only `export.tta=true` writes"):
        get_profile("real", ["export.tta=false"])
    assert get_profile("real", ["export={tta: false}", "gates.deployment_form=onnx_fp32"]).export["tta"] is False
    # the TTA graph's extra turns: checked when the profile loads
    assert real.export["tta_rotations"] == [45]
    for bad, match in (("export.tta_rotations=45", "must be a list"), ("export.tta_rotations=[0]", "non-zero"),
                       ("export.tta_rotations=[45,45]", "distinct")):
        with pytest.raises(ConfigError, match=match):
            get_profile("real", [bad])
    with pytest.raises(ConfigError, match="only export.tta=true writes"):
        get_profile("real", ["export={tta: false, tta_rotations: [45]}", "gates.deployment_form=onnx_fp32"])


def test_holdout_fractions_reach_the_split_task_and_bad_ones_fail_when_the_profile_loads():
    from waferflow.pipelines.training import candidates_of

    prof = get_profile("real", ["val_fraction=0.1", "test_fraction=0.12"])
    args = pipeline_arguments(prof, candidates_of(prof))
    assert (args["val_fraction"], args["test_fraction"]) == (0.1, 0.12)
    for bad, match in ((["test_fraction=0"], "test_fraction must be between 0.05 and 0.5"),
                       (["val_fraction=0.7"], "val_fraction must be between"),
                       (["val_fraction=0.35", "test_fraction=0.3"], "leaves too few maps to train on")):
        with pytest.raises(ConfigError, match=match):
            get_profile("real", bad)


def test_registry_list_right_after_a_run_finds_the_runs_store_with_no_flags(tmp_path, monkeypatch, capsys):
    """`./wf run` writes ./waferflow_runs/mlflow.db; `./wf registry list` with no flags reads it."""
    import json

    from mlflow import MlflowClient

    from waferflow.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["registry", "list"]) == 2  # no store anywhere: a clear error
    assert "no MLflow store" in capsys.readouterr().err
    (tmp_path / "waferflow_runs").mkdir()
    MlflowClient(f"sqlite:///{tmp_path / 'waferflow_runs' / 'mlflow.db'}").create_registered_model(
        "wafer-defect-classifier")
    assert main(["registry", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (tmp_path / "mlflow.db").exists()


def test_the_launcher_drops_kfps_executor_input_dump_and_keeps_the_rest(capsys):
    from waferflow.orchestration.local import quiet_executor_input

    with quiet_executor_input():
        print("    [KFP Executor 2026-01-01 INFO]: Looking for component `x`")
        print("    [KFP Executor 2026-01-01 INFO]: Got executor_input:")
        print('    {\n        "inputs": {\n            "a": 1\n        }\n    }')
        print("    ==> [waferflow] stage data")
        print("partial", end="")
    out = capsys.readouterr().out
    assert "Got executor_input" not in out and '"inputs"' not in out
    assert "Looking for component" in out and "==> [waferflow] stage data" in out and out.endswith("partial")


def test_run_help_names_the_few_label_settings_with_the_real_profiles_values(capsys):
    """`waferflow run --help` lists labels_per_class and the recipe's settings, and its numbers are the profile's."""
    from waferflow.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--help"])
    text = capsys.readouterr().out
    real = get_profile("real")
    for line in (f"pool_size=N .*\\({real.pool_size}\\)", f"train.steps=N .*\\({real.train['steps']}\\)",
                 f"train.patience_steps=N .*\\({real.train['patience_steps']}\\)",
                 f"self_training.rounds=N .*\\({real.self_training['rounds']};",
                 f"self_training.threshold=P .*\\({real.self_training['threshold']}\\)",
                 f"\\({real.source['n_maps']} / {real.source['map_size']} / {real.source['train']['epochs']}\\)",
                 f"\\({real.val_fraction} / {real.test_fraction}\\)", f"input_size=N .*\\({real.input_size}\\)",
                 f"train.class_weights=MODE .*\\({real.train['class_weights']}\\)",
                 f"train.rotation=D [^;]*\\({real.train['rotation']}; 0 = off\\)",
                 f"undo_class_weights=BOOL [^(]*\\({str(real.undo_class_weights).lower()}\\)",
                 r"export.tta_rotations=\[D,\.\.\.\] [^(]*\(" + re.escape(str(real.export["tta_rotations"])) + ":",
                 "labels_per_class=N", r"train.ema_decay=D [^;]*; 0 = off, as in every profile",
                 r"train.mixup_alpha=A [^=]*\(0 = off, as in every profile",
                 r"self_training.tta_rotations=\[D,\.\.\.\] [^=]*\[\] = the model's symmetries alone,"
                 r" as in every profile"):
        assert re.search(line, text), line
    for name in PROFILE_NAMES:  # what the help says is off everywhere is off everywhere
        p = get_profile(name)
        assert not p.train.get("ema_decay") and not p.train.get("mixup_alpha")
        assert not p.self_training.get("tta_rotations")


def test_run_summary_says_the_selection_was_on_validation_and_the_test_split_read_once(tmp_path):
    summary = {"candidates": {"best": "gradual_unfreezing-tf_efficientnet_lite0"}, "version": "1",
               "test": {"overall": {"accuracy": 0.984, "macro_f1": 0.97594, "balanced_accuracy": 0.9712, "n": 1500.0}},
               "gates": {"passed": True, "results": []}}
    text = format_result(RunResult(run_dir=tmp_path, summary=summary, stages=[{"stage": "split", "seconds": 1.0}]))
    assert ("Selected on validation: gradual_unfreezing-tf_efficientnet_lite0; on the test split (read once): "
            "accuracy 0.9840, macro-F1 0.9759, balanced accuracy 0.9712 (n=1500)") in text
    assert " on test:" not in text and "Champion: none" in text
