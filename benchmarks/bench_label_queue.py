"""Label queue vs random labels on real maps: which K extra labels improve macro-F1 more?

Teacher: trained on WM-811K train_1 (623 labels). From a pool of other train_10 maps (their labels hidden from
the queue), label K more maps two ways: the label queue's K (low confidence, spread over the embedding) and K
drawn at random; fine-tune a student from the teacher on train_1 + those K, with the same recipe and seed, and
evaluate all three on held-out val_data maps. The true labels of the queued maps are known here, which is what
makes the comparison possible. Prints one JSON object (the baseline is the random arm, in the same run).

    python benchmarks/bench_label_queue.py --k 100 --pool 1500 --eval-limit 2500 --set epochs=8

Data: ``--data-dir`` (default ``../shared/data/wm811k`` beside the project root).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def scores(m: dict) -> dict:
    o = m["overall"]
    return {"accuracy": round(o["accuracy"], 4), "balanced_accuracy": round(o["balanced_accuracy"], 4),
            "macro_f1": round(o["macro_f1"], 4),
            "per_class_recall": {k: round(v["recall"], 3) for k, v in m["per_class"].items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "wm811k"))
    ap.add_argument("--k", type=int, default=100, help="extra labels per arm")
    ap.add_argument("--pool", type=int, default=1500, help="unlabeled pool size (free train_10 maps)")
    ap.add_argument("--pool-factor", type=float, default=4.0)
    ap.add_argument("--eval-limit", type=int, default=2500, help="random val_data maps to evaluate on")
    ap.add_argument("--val-per-class", type=int, default=20)
    ap.add_argument("--random-seeds", type=int, default=1, help="random arms (different draws)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="TrainConfig override (teacher)")
    ap.add_argument("--student-set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainConfig override (students; default: the teacher's)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import bench_real

    import torch

    from waferflow.config import load_config
    from waferflow.data.contract import concat_datasets
    from waferflow.evaluation import evaluate
    from waferflow.predictors import torch_predictor
    from waferflow.labelqueue import build_queue
    from waferflow.models import load_model_dir
    from waferflow.train import TrainConfig, train

    bench_real.DATA = Path(args.data_dir)
    if not (bench_real.DATA / "wm811k_train_1_split.npz").is_file():
        sys.exit(f"no WM-811K files in {bench_real.DATA}; pass --data-dir")
    torch.set_num_threads(1)
    base = ["strategy=full_finetune", "input_size=64", "num_threads=1", "class_weights=sqrt", *args.set]
    tcfg = load_config(TrainConfig, overrides=base)
    scfg = load_config(TrainConfig, overrides=[*base, *args.student_set])
    train_ds, val_ds = bench_real.load("wm811k_train_1_split.npz"), bench_real.val_slice(args.val_per_class)
    test_ds = bench_real.load("wm811k_val_data.npz")
    test_ds = test_ds.subset(np.sort(np.random.default_rng(0).choice(len(test_ds), args.eval_limit, replace=False)))
    pool = bench_real.unlabeled_pool(args.val_per_class, args.pool)
    hidden = replace(pool, labels=None)  # the queue never sees the pool's labels
    out = {"benchmark": "label_queue_vs_random", "train_maps": len(train_ds), "val_maps": len(val_ds),
           "test_maps": len(test_ds), "pool_maps": len(pool), "k": args.k, "teacher_overrides": base,
           "student_overrides": args.student_set}
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        train(tcfg, train_ds, val_ds, Path(d) / "teacher")
        model, spec = load_model_dir(Path(d) / "teacher")
        out["teacher"] = {**scores(evaluate(torch_predictor(model), test_ds, spec)),
                          "seconds": round(time.perf_counter() - t0, 1)}
        t0 = time.perf_counter()
        q = build_queue(Path(d) / "teacher", hidden, n=args.k, pool_factor=args.pool_factor)
        out["queue_seconds"] = round(time.perf_counter() - t0, 1)
        arms = {"queue": q.indices}
        for s in range(args.random_seeds):
            arms[f"random_{s}"] = np.random.default_rng(100 + s).choice(len(pool), args.k, replace=False)
        for arm, idx in arms.items():
            t0 = time.perf_counter()
            extra = pool.subset(np.sort(idx))  # labeling them: their true labels join the training set
            train(scfg, concat_datasets([train_ds, extra]), val_ds, Path(d) / arm, weights=str(Path(d) / "teacher"))
            m, sp = load_model_dir(Path(d) / arm)
            res = scores(evaluate(torch_predictor(m), test_ds, sp))
            res["labels_added_per_class"] = {n: int(c) for n, c in zip(
                pool.class_names, np.bincount(extra.labels, minlength=pool.num_classes))}
            res["seconds"] = round(time.perf_counter() - t0, 1)
            res["macro_f1_gain_over_teacher"] = round(res["macro_f1"] - out["teacher"]["macro_f1"], 4)
            out[arm] = res
            print(json.dumps({"partial": arm, "macro_f1": res["macro_f1"]}), file=sys.stderr, flush=True)
    randoms = [out[a]["macro_f1"] for a in arms if a.startswith("random")]
    out["random_mean_macro_f1"] = round(float(np.mean(randoms)), 4)
    out["queue_minus_random_macro_f1"] = round(out["queue"]["macro_f1"] - out["random_mean_macro_f1"], 4)
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
