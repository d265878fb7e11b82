"""One round of self-training, not two? What a finished two-round development run would have deployed with one.

The round-1 student of a run with ``self_training.rounds=2`` is the student a one-round run trains (same teacher,
pool, seed and settings; round 1 is trained first), and the run keeps it under ``self-train-model/model/rounds/r1``
when the last student went on. This benchmark applies the self-training stage's own rule to it (the student goes on
only if its validation macro-F1 beats the teacher's, both in the run's ``self_training_report.json``), sends the
model that would go on through the run's later stages (``bench_keep_dev.after_self_training``: the prior correction
and the source ensemble), and scores it and the run's deployed model on the dev maps and the validation split with
the deployed TTA (in torch). Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_real_pipeline --draw-labels 8 --dev 2000 --workdir /tmp/slice8 --out slice8.json
    python -m benchmarks.bench_rounds_dev --workdir /tmp/slice8 --out rounds_slice8.json

Prints JSON: which model one round would send on, both chains' scores, and one round minus the deployed on dev.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def one_round_choice(report: dict, outs: Path) -> tuple[str, Path]:
    """("student" | "teacher", the model dir that one round of self-training would send on).

    Raises:
        SystemExit: the run did not self-train twice, or round 1's student would go on but was not kept.
    """
    rounds = report.get("per_round") or []
    if len(rounds) < 2:
        raise SystemExit(f"the run self-trained {len(rounds)} round(s); this compares one round with two")
    r1 = rounds[0]["student_val_macro_f1"]
    if r1 <= float(report["teacher_val"]["macro_f1"]):
        return "teacher", outs / "select-best" / "best"
    kept = outs / "self-train-model" / "model" / "rounds" / "r1"
    if not (kept / "model.json").is_file():
        raise SystemExit(f"round 1's student would go on (validation macro-F1 {r1:.4f}), but the run kept the "
                         f"teacher, so {kept} does not exist; rerun with --set self_training.keep=student")
    return "student", kept


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import deployed_model
    from benchmarks.bench_keep_dev import _scored, after_self_training, read_dev_run

    r = read_dev_run(__doc__, argv)
    outs, sets, report = r.outs, r.sets, r.report
    chosen, start = one_round_choice(report, outs)
    with tempfile.TemporaryDirectory(prefix="rounds-dev-") as tmp:
        one, steps = after_self_training(start, outs, r.prof, r.tracking_uri, Path(tmp))
        chains = {"deployed": _scored(deployed_model(outs), sets), "one_round": _scored(one, sets)}
    d, o = chains["deployed"]["dev"], chains["one_round"]["dev"]
    res = {"workdir": str(r.workdir), "two_rounds_sent_on": report["chosen"], "one_round_sends_on": chosen,
           "validation_macro_f1": {"teacher": report["teacher_val"]["macro_f1"],
                                   "round_1_student": report["per_round"][0]["student_val_macro_f1"],
                                   "round_2_student": report["per_round"][-1]["student_val_macro_f1"]},
           "one_round_steps": steps, **chains,
           "dev_change_one_round_minus_deployed": {k: round(o[k] - d[k], 4) for k in ("accuracy", "macro_f1")}}
    emit(res, r.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
