"""How far apart are two runs of one recipe, and what would averaging them buy? Finished development runs that differ
only in ``--set seed=N`` (the split of the labels into train / validation / test, and every training seed), scored
on the same dev maps.

Each run's deployed model is scored in torch with the deployed test-time augmentation of the ``real`` profile (the
8 dihedral views of each map and of the map turned by ``--tta-rotations``, mean probability), then the mean
probability of all the runs' deployed models (a seed ensemble: one network per run and map more) is scored the same
way::

    python -m benchmarks.bench_real_pipeline --draw-labels 11 --dev 2000 --workdir /tmp/s11 --out s11.json
    python -m benchmarks.bench_real_pipeline --draw-labels 11 --dev 2000 --set seed=1 --workdir /tmp/s11seed1 \\
        --out s11seed1.json
    python -m benchmarks.bench_seed_ensemble_dev --workdir /tmp/s11 --workdir /tmp/s11seed1 --out seeds_s11.json

Each run's probabilities are kept in its workdir (``dev_probs.npz``, as ``bench_paired_dev`` keeps them).

Prints JSON: accuracy and macro-F1 of each run and of their mean probability on the dev maps, the spread between
the runs, and the ensemble minus the first run. Nothing here reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import _scores, deployed_probs, shared_dev

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, action="append", required=True,
                    help="a finished `bench_real_pipeline --dev` workdir (twice or more; the first is the reference)")
    ap.add_argument("--tta-rotations", type=float, nargs="*", default=[45.0],
                    help="the deployed TTA's extra angles (the real profile's export.tta_rotations)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if len(a.workdir) < 2:
        raise SystemExit("give --workdir at least twice: runs of one recipe that differ only in their seed")
    ds = shared_dev(a.workdir)
    angles = [0.0, *a.tta_rotations]
    probs, res = [], {"workdirs": [str(w) for w in a.workdir], "tta_angles": angles, "runs": {}}
    for w in a.workdir:
        model, p = deployed_probs(w, ds, angles)
        probs.append(p)
        res["runs"][str(w)] = {"model": str(model), "dev": _scores(ds.labels, p)}
    res["ensemble"] = {"dev": _scores(ds.labels, np.mean(probs, axis=0))}
    runs = [r["dev"] for r in res["runs"].values()]
    res["spread_between_runs"] = {k: round(max(r[k] for r in runs) - min(r[k] for r in runs), 4)
                                  for k in ("accuracy", "macro_f1")}
    res["ensemble_minus_first_run"] = {k: round(res["ensemble"]["dev"][k] - runs[0][k], 4)
                                       for k in ("accuracy", "macro_f1")}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
