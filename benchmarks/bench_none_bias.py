"""Does a shift of the 'none' logit pay? Swept on the dev maps of finished development runs.

Most errors of a 623-label model are defect maps it calls ``none`` (slice 7: 84 of 178, against 20 ``none`` maps
called a defect). This scores the deployed model of each ``--workdir`` (a finished ``bench_real_pipeline --dev N``
run) on its dev maps with ``b`` added to the ``none`` logit of every classifier head (each member of a source
ensemble), before the softmax, under the deployed TTA (the mean probability over members and views). Every member's
logits on every TTA view are computed once (torch); each ``b`` is then exact arithmetic on them, with no second
model. Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_none_bias --workdir /tmp/slice6 --workdir /tmp/slice7 \
        --shift 0 -0.25 -0.5 -0.75 -1 -1.5 -2 -3 --out none_bias.json

Prints JSON: per workdir, the scores at each ``b`` (accuracy, macro-F1, balanced accuracy, per-class recall), the
run's recorded dev figures (``eval/metrics.json``, the deployed ONNX form) beside ``b = 0``, and the best ``b``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from benchmarks.bench_prior_dev import split_scores, view_logits


def member_view_logits(model_dir: Path, ds) -> np.ndarray:
    """float32 [members, views, N, K]: each member's logits on every TTA view (one member for a plain model)."""
    from waferflow.models import load_model_dir
    from waferflow.models.ensemble import MeanProbabilityEnsemble

    model, spec = load_model_dir(model_dir)
    members = list(model.members) if isinstance(model, MeanProbabilityEnsemble) else [model]
    return np.stack([view_logits(m, spec, ds) for m in members])


def shifted_scores(logits: np.ndarray, ds, none: int, b: float) -> dict:
    """Scores of the mean probability over members and views with ``b`` added to the ``none`` logit."""
    from waferflow.predictors import softmax

    z = logits.astype(np.float64, copy=True)
    z[..., none] += b
    prob = softmax(z.reshape(-1, z.shape[-1])).reshape(z.shape).mean(axis=(0, 1))
    return split_scores(ds, np.log(prob + 1e-12))


def sweep(workdir: Path, shifts: list[float]) -> dict:
    from waferflow.data.contract import load_dataset

    from benchmarks.bench_ensemble_dev import deployed_model, run_outputs

    model_dir = deployed_model(run_outputs(workdir / "run"))
    dev = load_dataset(workdir / "dev.npz", require_labels=True)
    logits = member_view_logits(model_dir, dev)
    none = list(dev.class_names).index("none")
    res = {"model_dir": str(model_dir), "members": int(logits.shape[0]), "views": int(logits.shape[1]),
           "n_dev": len(dev), "scores": {f"{b:g}": shifted_scores(logits, dev, none, b) for b in shifts}}
    recorded = workdir / "eval" / "metrics.json"
    if recorded.is_file():
        m = json.loads(recorded.read_text())
        res["recorded"] = {"form": m.get("form"), **{k: round(m["overall"][k], 4) for k in ("accuracy", "macro_f1")}}
    best = max(shifts, key=lambda b: (res["scores"][f"{b:g}"]["macro_f1"], -abs(b)))
    res["best_macro_f1_shift"] = best
    return res


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, action="append", required=True,
                    help="a finished `bench_real_pipeline --dev N` workdir (repeatable)")
    ap.add_argument("--shift", type=float, nargs="+", default=[0, -0.25, -0.5, -0.75, -1, -1.5, -2, -3])
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if 0 not in a.shift:
        a.shift = [0.0, *a.shift]
    emit({"shifts": a.shift, "runs": {str(w): sweep(w, a.shift) for w in a.workdir}}, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
