"""Self-training again, with other settings, on a finished development run: what would the student score?

Reads the workdir of ``python -m benchmarks.bench_real_pipeline --dev N --workdir DIR``, and runs the pipeline's own
self-training step (``run_self_training``: the same teacher, splits, pool and seed) with the run's settings plus
``--set`` overrides, into ``--out-dir``. The student is kept whatever validation says (so its dev score is known);
what the stage would have kept (the student if its validation macro-F1 beats the teacher's) is reported beside
it. With the profile's ``undo_class_weights`` the student gets the prior correction the run's own stage applies.
Both the student and the model the run sent on are scored on the dev maps with the deployed TTA (in torch).
Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_real_pipeline --dev 2000 --workdir /tmp/devB --out devB.json
    python -m benchmarks.bench_selftrain_dev --workdir /tmp/devB --set self_training.synthetic_min_per_class=100 \\
        --out-dir /tmp/devB_topup --out topup.json

Prints JSON: the student's and the run's final model's dev accuracy / macro-F1 / per-class F1, both validation
scores, what validation would keep, the pseudo-label and synthetic counts of every round, and the seconds it took.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _dev_scores(model_dir: Path, dev) -> dict:
    from sklearn.metrics import f1_score

    from benchmarks.bench_ensemble_dev import _scores, _tta_probs

    prob = _tta_probs(model_dir, {"dev": dev})["dev"]
    per_class = f1_score(dev.labels, prob.argmax(1), average=None, labels=range(len(dev.class_names)),
                         zero_division=0)
    return {**_scores(dev.labels, prob), "f1_per_class": dict(zip(dev.class_names, np.round(per_class, 3).tolist()))}


def main(argv: list[str] | None = None) -> int:
    from waferflow.data.contract import load_dataset
    from waferflow.orchestration.selftrain_step import run_self_training
    from waferflow.profiles import get_profile
    from waferflow.train.prior import undo_class_prior

    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import deployed_model, run_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--dev", type=Path, default=None, help="dev maps (default: WORKDIR/dev.npz)")
    ap.add_argument("--set", action="append", default=[], help="real-profile override, e.g. "
                    "self_training.synthetic_min_per_class=100 (repeatable)")
    ap.add_argument("--out-dir", type=Path, required=True, help="a fresh folder for the student")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    run = a.workdir / "run"
    outs = run_outputs(run)
    prof = get_profile("real", a.set)
    report = outs / "self-train-model" / "model" / "self_training_report.json"
    if not report.is_file():
        raise SystemExit(f"{a.workdir} has no self-training report ({report}): the run did not self-train")
    before = json.loads(report.read_text())
    a.out_dir.mkdir(parents=True, exist_ok=False)
    t0 = time.perf_counter()
    # keep=student sends the student on, so its dev score is known; what validation would keep is reported beside it
    rep = run_self_training(outs / "select-best" / "best", before["teacher_val"],
                            outs / "split-data" / "train" / "data.npz", outs / "split-data" / "val" / "data.npz",
                            outs / "prepare-data" / "unlabeled" / "data.npz",
                            {**prof.self_training, "keep": "student"}, dict(prof.train), prof.seed, "cpu",
                            a.out_dir / "student")
    student = a.out_dir / "student"
    if prof.undo_class_weights:  # as the run's prior-correction stage does to the model that goes on
        student = a.out_dir / "student_prior_corrected"
        undo_class_prior(a.out_dir / "student", student)
    seconds = time.perf_counter() - t0
    dev = load_dataset(a.dev or a.workdir / "dev.npz", require_labels=True)
    res = {"workdir": str(a.workdir), "set": a.set, "seconds": round(seconds, 1), "synthetic": rep["synthetic"],
           "teacher_val": before["teacher_val"], "student_val": rep["student_val"],
           "validation_would_keep": rep["would_keep"], "per_round": rep["per_round"],
           "dev": {"student": _dev_scores(student, dev),
                   f"run's final ({before['chosen']})": _dev_scores(deployed_model(outs), dev)}}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
