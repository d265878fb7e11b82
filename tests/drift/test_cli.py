"""`waferflow drift` and `waferflow drift-reference` from the command line."""

from __future__ import annotations

import json

from waferflow.cli import main


def test_drift_command_writes_decision_and_prints_reasons(tmp_path, tiny_model, tiny_reference, shifted_batch,
                                                          capsys):
    out = tmp_path / "out"
    rc = main(["drift", "--current", str(shifted_batch), "--out", str(out), "--model", str(tiny_model[0]),
               "--workdir", str(tmp_path / "wd")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "DRIFT DETECTED" in text and "reason:" in text and "report.html" in text
    d = json.loads((out / "decision.json").read_text())
    assert d["drift_detected"] and d["retrain"] is None


def test_missing_reference_exits_2_with_a_fix(tmp_path, tiny_model, clean_batch, capsys):
    rc = main(["drift", "--current", str(clean_batch), "--out", str(tmp_path / "o"), "--model",
               str(tiny_model[0]), "--reference", str(tmp_path / "none"), "--retrain",
               "--workdir", str(tmp_path / "wd")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "drift reference" in err and "build" in err


def test_retrain_options_need_retrain(tmp_path, clean_batch, capsys):
    rc = main(["drift", "--current", str(clean_batch), "--out", str(tmp_path / "o"), "--host", "http://x"])
    assert rc == 2 and "--retrain" in capsys.readouterr().err


def test_drift_reference_command(tmp_path, tiny_model, clean_batch, capsys):
    import shutil

    mdir = tmp_path / "m"
    shutil.copytree(tiny_model[0], mdir, ignore=shutil.ignore_patterns("drift_reference"))
    rc = main(["drift-reference", "--model", str(mdir), "--data", str(clean_batch), "--max-rows", "100"])
    assert rc == 0
    summary = json.loads((mdir / "drift_reference" / "reference.json").read_text())
    assert summary["n_rows"] == 100 and summary["n_source_maps"] == 300
