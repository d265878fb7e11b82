"""How many right pseudo-labels does the teacher offer, class by class? A finished development run's teacher on its pool.

Reads the workdir of ``python -m benchmarks.bench_real_pipeline --dev N --workdir DIR``: the selected candidate (the
teacher of self-training's first round) scores the run's own pool (the data stage's maps, as the run stored them:
resized to ``map_size`` at ingest where that is not 0) with its symmetry views (8 for WM-811K, in torch; the run
labels with onnxruntime by default, whose last-bit differences can move a map across the threshold:
``bench_pseudo_label`` measures them). Each of those maps takes its hidden label from the pool file (``--pool``: the
raw maps with their labels, which no stage of the run read), found by its content, and they say per class:

- ``true``: the pool's maps of the class;
- ``rule``: kept and right under the run's own rule (``self_training.threshold`` and the per-class cap
  ``max_per_class_ratio`` times the class's labeled maps, the most confident first): the pseudo-labels of round 1;
- ``uncapped``: maps predicted as the class at each of ``--thresholds``, and how many of them are right, with no cap
  (whether the threshold or the cap limits a class);
- ``aligned_rule``: the rule again after distribution alignment (ReMixMatch): the teacher's probabilities multiplied by the
  labeled prior over their mean on the pool, renormalized, so the pool's predicted mix matches the labeled one::

    python -m benchmarks.bench_real_pipeline --draw-labels 11 --dev 2000 --workdir /tmp/s11 --out s11.json
    python -m benchmarks.bench_pseudo_pool_dev --workdir /tmp/s11 --out pool_s11.json      # about 70 s

A run made with ``--set self_training.threshold=...`` (or the cap) names the same ``--set`` here. Prints JSON. Nothing
here reads ``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from waferflow.data.contract import resize_nearest

THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def labeled_run_pool(run_pool, hidden):
    """The run's pool maps with the labels of the same maps in ``hidden`` (raw maps with labels), matched by content
    after the run's own resize: each run map must be in ``hidden``; identical maps with different labels take the
    first one's label, and are counted."""
    import dataclasses
    import hashlib

    size = tuple(run_pool.maps.shape[1:]) if run_pool.maps is not None else None  # None: maps of their own sizes

    def key(m: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(m).tobytes() + repr(m.shape).encode()).hexdigest()

    first, clashes = {}, 0
    for i in range(len(hidden)):
        m = resize_nearest(hidden.get(i), size) if size else hidden.get(i)
        k = key(m)
        if k in first and hidden.labels[first[k]] != hidden.labels[i]:
            clashes += 1
        first.setdefault(k, i)
    idx = [first.get(key(run_pool.get(i)), -1) for i in range(len(run_pool))]
    if min(idx, default=0) < 0:
        raise SystemExit(f"map {idx.index(-1)} of the run's pool is not in the pool file; give the file the run's "
                         "unlabeled maps came from (--pool)")
    labels = np.asarray(hidden.labels)[np.asarray(idx, dtype=np.int64)]
    return dataclasses.replace(run_pool, labels=labels, class_names=tuple(hidden.class_names)), clashes


def aligned(prob: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Distribution alignment: ``prob * prior / mean(prob)`` per class, each row renormalized to sum to 1."""
    out = prob * (prior / np.clip(prob.mean(axis=0), 1e-12, None))
    return out / out.sum(axis=1, keepdims=True)


def per_class(prob: np.ndarray, truth: np.ndarray, counts: np.ndarray, threshold: float, ratio: float,
              thresholds=THRESHOLDS) -> list[dict]:
    """For each class: its true maps, kept/right under the rule, and predicted/right at each threshold, uncapped."""
    from waferflow.train.selftrain import select_confident

    pred, conf = prob.argmax(1), prob.max(1)
    idx, info = select_confident(prob, counts, threshold, ratio)
    rows = []
    for c in range(prob.shape[1]):
        kept = idx[pred[idx] == c]
        at = {str(t): [int(((pred == c) & (conf >= t)).sum()), int(((pred == c) & (conf >= t) & (truth == c)).sum())]
              for t in thresholds}
        rows.append({"true": int((truth == c).sum()), "labeled": int(counts[c]),
                     "cap": info[c]["cap"],
                     "rule": [int(len(kept)), int((truth[kept] == c).sum())], "uncapped": at})
    return rows


def main(argv: list[str] | None = None) -> int:
    from waferflow.config import load_config
    from waferflow.data.contract import load_dataset
    from waferflow.profiles import get_profile
    from waferflow.train.selftrain import SelfTrainConfig

    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import _tta_probs, run_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--pool", type=Path, default=None, help="the run's pool with its hidden labels (default: "
                    "WORKDIR/pool.npz)")
    ap.add_argument("--set", action="append", default=[], help="the run's real-profile overrides (as given to it)")
    ap.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    outs = run_outputs(a.workdir / "run")
    hidden = load_dataset(a.pool or a.workdir / "pool.npz", require_labels=True)
    train = load_dataset(outs / "split-data" / "train" / "data.npz", require_labels=True)
    if tuple(hidden.class_names) != tuple(train.class_names):
        raise SystemExit(f"the pool's classes {list(hidden.class_names)} are not the run's {list(train.class_names)}")
    pool, clashes = labeled_run_pool(load_dataset(outs / "prepare-data" / "unlabeled" / "data.npz"), hidden)
    st = load_config(SelfTrainConfig, overrides=dict(get_profile("real", a.set).self_training))
    counts = np.bincount(train.labels, minlength=len(train.class_names))
    prob = _tta_probs(outs / "select-best" / "best", {"pool": pool})["pool"]
    rows = {"teacher": per_class(prob, pool.labels, counts, st.threshold, st.max_per_class_ratio, a.thresholds),
            "aligned": per_class(aligned(prob, counts / counts.sum()), pool.labels, counts, st.threshold,
                                 st.max_per_class_ratio, a.thresholds)}
    res = {"workdir": str(a.workdir), "pool": len(pool), "same_map_other_label": clashes,
           "pool_map_shape": "their own" if pool.maps is None else list(pool.maps.shape[1:]), "threshold": st.threshold,
           "max_per_class_ratio": st.max_per_class_ratio,
           "kept": {k: [sum(r["rule"][0] for r in v), sum(r["rule"][1] for r in v)] for k, v in rows.items()},
           "per_class": {name: {"teacher": t, "aligned_rule": al["rule"]}
                         for name, t, al in zip(train.class_names, rows["teacher"], rows["aligned"])}}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
