"""Teacher or student? What each would have become on a finished development run, scored on its dev maps.

Reads the workdir of ``python -m benchmarks.bench_real_pipeline --dev N --workdir DIR`` and sends the run's
selected candidate (the self-training teacher) through the same stages the run's own model went through after
self-training: the prior correction (``undo_class_prior``, when the profile undoes class weights) and the source
stage (``run_source_stage``: the ensemble with the source model when the train split is small enough). Then it
scores both chains, the run's deployed model and the teacher's, on the dev maps and on the run's validation split
with the model's symmetry views (the deployed TTA without its turned views: 8 views for WM-811K, in torch), and the
mean probability of the two chains (``both_chains``: what deploying teacher and student together, each through
those stages, would score). Run the development run with ``--set self_training.keep=student`` so that its deployed
model is the student's chain whatever validation said::

    python -m benchmarks.bench_real_pipeline --draw-labels 6 --dev 2000 --set self_training.keep=student \\
        --workdir /tmp/slice6 --out slice6.json
    python -m benchmarks.bench_keep_dev --workdir /tmp/slice6 --out keep_slice6.json

Prints JSON: for each chain and their mean, dev and validation accuracy / macro-F1 / log-loss (``nll``) / per-class
recall; the self-training report (what validation would keep, both validation scores); the validation log-loss of
the raw teacher and student (before the later stages, the same 8 views: ``raw_val_nll``) and which of the two it
would keep (``nll_would_keep``); the changes student - teacher and both - each chain on the dev maps. Nothing here
reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


def _scored(probs: dict, sets: dict) -> dict:
    """Accuracy, macro-F1 (as ``waferflow evaluate`` computes them) and per-class recall of each set's
    probabilities."""
    from waferflow.evaluation import metrics_from_logits

    from benchmarks.bench_ensemble_dev import _scores

    out = {}
    for name, prob in probs.items():
        per_class = metrics_from_logits(sets[name].labels, prob, sets[name].class_names)["per_class"]
        out[name] = {**_scores(sets[name].labels, prob), "nll": round(nll(sets[name].labels, prob), 4),
                     "recall": {c: round(m["recall"], 3) for c, m in per_class.items() if m["support"]}}
    return out


def nll(labels: np.ndarray, prob: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (probabilities clipped at 1e-12)."""
    return float(-np.log(np.clip(prob[np.arange(len(labels)), labels], 1e-12, None)).mean())


def after_self_training(model: Path, outs: Path, prof, tracking_uri: str, work: Path,
                        undo: bool | None = None) -> tuple[Path, dict]:
    """``model`` through the run's stages after self-training, written under ``work``: the prior correction
    (``undo``, default the profile's ``undo_class_weights``) and the source stage (the ensemble with the source model
    when the train split is small enough). Returns the model dir and each stage's status."""
    from waferflow.train.prior import undo_class_prior
    from waferflow.train.source_ensemble import run_source_stage

    steps = {}
    if prof.undo_class_weights if undo is None else undo:
        steps["prior_correction"] = undo_class_prior(model, work / "prior")["status"]
        model = work / "prior"
    split = outs / "split-data"
    maps = [split / "train" / "data.npz"] + [p for p in [outs / "prepare-data" / "unlabeled" / "data.npz"]
                                             if p.exists()]
    found = run_source_stage(model, outs / "adapt-batchnorm" / "adapted", maps, split / "val" / "data.npz",
                             work / "source", prof.source_weight, prof.source_ensemble_below, seed=prof.seed,
                             tracking_uri=tracking_uri)
    steps["source_stage"] = found["status"]
    return work / "source", steps


@dataclass
class DevRun:
    """A finished development run, as :func:`read_dev_run` reads it for a post-hoc benchmark."""

    workdir: Path
    outs: Path  # its kfp output folder
    prof: Any  # the real profile with the run's overrides
    report: dict  # its self-training report
    sets: dict  # {"dev": the dev maps, "val": its validation split}
    tracking_uri: str
    out: str | None


def read_dev_run(doc: str, argv: list[str] | None) -> DevRun:
    """Parse ``--workdir --dev --set --out`` (``doc``'s first line is the description) and read that run."""
    from waferflow.data.contract import load_dataset
    from waferflow.orchestration.local import embedded_tracking_uri
    from waferflow.profiles import get_profile

    from benchmarks.bench_ensemble_dev import run_outputs

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--dev", type=Path, default=None, help="dev maps (default: WORKDIR/dev.npz)")
    ap.add_argument("--set", action="append", default=[], help="the run's real-profile overrides (as given to it)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    run = a.workdir / "run"
    outs = run_outputs(run)
    report = json.loads((outs / "self-train-model" / "model" / "self_training_report.json").read_text())
    sets = {"dev": load_dataset(a.dev or a.workdir / "dev.npz", require_labels=True),
            "val": load_dataset(outs / "split-data" / "val" / "data.npz", require_labels=True)}
    return DevRun(a.workdir, outs, get_profile("real", a.set), report, sets, embedded_tracking_uri(run), a.out)


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import _tta_probs, deployed_model

    r = read_dev_run(__doc__, argv)
    outs, sets, report = r.outs, r.sets, r.report
    with tempfile.TemporaryDirectory(prefix="keep-dev-") as tmp:
        teacher, steps = after_self_training(outs / "select-best" / "best", outs, r.prof, r.tracking_uri, Path(tmp))
        probs = {"deployed": _tta_probs(deployed_model(outs), sets), "teacher_chain": _tta_probs(teacher, sets)}
    val = {"val": sets["val"]}
    raw = {name: nll(sets["val"].labels, _tta_probs(d, val)["val"]) for name, d in
           (("teacher", outs / "select-best" / "best"), ("student", outs / "self-train-model" / "model"))}
    probs["both_chains"] = {k: (probs["deployed"][k] + probs["teacher_chain"][k]) / 2 for k in sets}
    chains = {name: _scored(p, sets) for name, p in probs.items()}

    def change(a: str, b: str) -> dict:
        return {k: round(chains[a]["dev"][k] - chains[b]["dev"][k], 4)
                for k in ("accuracy", "macro_f1")}

    res = {"workdir": str(r.workdir), "self_training": {k: report.get(k) for k in
                                                        ("status", "would_keep", "teacher_val", "student_val")},
           "teacher_chain_steps": steps, **chains,
           "raw_val_nll": {k: round(v, 4) for k, v in raw.items()},
           "nll_would_keep": "student" if raw["student"] < raw["teacher"] else "teacher",
           "dev_change_deployed_minus_teacher": change("deployed", "teacher_chain"),
           "dev_change_both_minus_teacher": change("both_chains", "teacher_chain"),
           "dev_change_both_minus_deployed": change("both_chains", "deployed")}
    emit(res, r.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
