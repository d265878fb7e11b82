"""Is a lever's change on the dev maps more than noise? Finished development runs against a reference run, paired on
the same dev maps.

Every run's deployed model is scored in torch with the deployed test-time augmentation of the ``real`` profile (as
``bench_seed_ensemble_dev``; the probabilities are kept in each workdir's ``dev_probs.npz``), and each run is
compared with the reference on the same maps:

- accuracy: the change, and McNemar's exact two-sided test on the maps only one of the two gets right;
- macro-F1: the change and its 95% paired bootstrap interval (the maps resampled together, as the champion gate
  does);
- per class: each class's F1 change and what it moves macro-F1 by (change / classes present), so a class with two
  dev maps (Near-full: 2 of 2,000) shows when it carries a change alone;
- the same macro-F1 over the classes with at least ``--min-support`` dev maps, with its own interval::

    python -m benchmarks.bench_paired_dev --reference /tmp/s11 --workdir /tmp/s11seed1 --workdir /tmp/s11p1 \\
        --out paired_s11.json

Prints JSON. Nothing here reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def paired_change(y: np.ndarray, ref: np.ndarray, new: np.ndarray, class_names: list[str], min_support: int = 10,
                  samples: int = 2000, seed: int = 0) -> dict:
    """``new`` minus ``ref`` predictions on the same maps (labels ``y``): accuracy with McNemar, macro-F1 with a
    paired bootstrap interval, per-class F1 changes, and macro-F1 over the classes with ``min_support`` maps."""
    from scipy.stats import binomtest
    from sklearn.metrics import f1_score

    from waferflow.gates import _macro_f1_from_counts, paired_bootstrap_macro_f1

    y, ref, new = (np.asarray(v, dtype=np.int64).ravel() for v in (y, ref, new))
    if not len(y) == len(ref) == len(new) > 0:
        raise ValueError(f"paired predictions need the same maps: {len(y)} labels, {len(ref)} and {len(new)} "
                         "predictions")
    k = len(class_names)
    support = np.bincount(y, minlength=k)
    cm_ref, cm_new = (np.bincount(y * k + q, minlength=k * k).reshape(k, k) for q in (ref, new))
    only_new, only_ref = int(((new == y) & (ref != y)).sum()), int(((ref == y) & (new != y)).sum())
    p = 1.0 if only_new + only_ref == 0 else float(binomtest(only_new, only_new + only_ref, 0.5).pvalue)
    f1_ref, f1_new = (f1_score(y, q, labels=np.arange(k), average=None, zero_division=0) for q in (ref, new))
    present = support > 0
    out = {"n": int(len(y)), "accuracy": {
        "reference": _r(np.mean(ref == y)), "run": _r(np.mean(new == y)), "change": _r(np.mean(new == y) - np.mean(ref == y)),
        "only_run_right": only_new, "only_reference_right": only_ref, "mcnemar_p": _r(p)}}
    for name, mask in (("macro_f1", None), (f"macro_f1_support_{min_support}", support >= min_support)):
        lo, hi, _ = paired_bootstrap_macro_f1(y, new, ref, k, 0.95, samples, seed, classes=mask)
        a, b = _macro_f1_from_counts(cm_ref, mask), _macro_f1_from_counts(cm_new, mask)
        classes = [c for c, keep in zip(class_names, present if mask is None else mask & present) if keep]
        out[name] = {"reference": _r(a), "run": _r(b), "change": _r(b - a), "interval_95": [_r(lo), _r(hi)],
                     "classes": classes}
    out["per_class"] = {
        c: {"support": int(support[i]), "f1_reference": _r(f1_ref[i]), "f1_run": _r(f1_new[i]),
            "f1_change": _r(f1_new[i] - f1_ref[i]), "macro_f1_share": _r((f1_new[i] - f1_ref[i]) / present.sum())}
        for i, c in enumerate(class_names) if present[i]}
    return out


def _r(x) -> float:
    return round(float(x), 4)


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import deployed_probs, shared_dev

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reference", type=Path, required=True, help="the finished workdir the others are compared with")
    ap.add_argument("--workdir", type=Path, action="append", required=True,
                    help="a finished `bench_real_pipeline --dev` workdir on the same dev maps (once or more)")
    ap.add_argument("--tta-rotations", type=float, nargs="*", default=[45.0],
                    help="the deployed TTA's extra angles (the real profile's export.tta_rotations)")
    ap.add_argument("--min-support", type=int, default=10,
                    help="the second macro-F1 averages the classes with at least this many dev maps (default 10)")
    ap.add_argument("--samples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    ds = shared_dev([a.reference, *a.workdir])
    angles = [0.0, *a.tta_rotations]
    ref_model, ref = deployed_probs(a.reference, ds, angles)
    res = {"reference": str(a.reference), "reference_model": str(ref_model), "tta_angles": angles, "runs": {}}
    for w in a.workdir:
        model, p = deployed_probs(w, ds, angles)
        res["runs"][str(w)] = {"model": str(model), **paired_change(
            ds.labels, ref.argmax(1), p.argmax(1), list(ds.class_names), a.min_support, a.samples)}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
