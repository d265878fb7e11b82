"""Drift benchmark: false alarms on clean batches and detection of each shift, at 1,000 maps a batch.

Prints one JSON object. The champion is trained on synthetic maps (WM-811K taxonomy) here (or reused with
``--champion DIR``); its reference is built from its training maps. Then:

* ``clean``: ``--clean-seeds`` (20) same-distribution batches -> the false-alarm rate (target <= 1/20);
* ``class_mix``: Donut 5% -> 25% (the other classes scaled down);
* ``background_x2``: the background fail-rate range doubled;
* ``novel_<pattern>``: ``--novel-fraction`` (20%) of the batch replaced by a pattern outside every taxonomy;
* ``real_wm811k``: 1,000 real maps sampled from ``wm811k_val_data.npz`` (variable size);

each shift over ``--shift-seeds`` batches -> the detection rate. Baseline measured in the same run: the same
share rule with scipy's two-sample KS test (scipy.stats.ks_2samp, p < 0.05) per readable feature instead of the
normed Wasserstein distance, on the same batches.

    python benchmarks/bench_drift.py --out /tmp/bench_drift
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wm811k" / "wm811k_val_data.npz"


def train_champion(out: Path, n: int, seed: int) -> tuple:
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import generate
    from waferflow.train.config import TrainConfig
    from waferflow.train.loop import train

    ds = generate(n, size=64, seed=seed, taxonomy="wm811k")
    sp = split_dataset(ds, val=0.15, test=0.05, seed=seed)
    cfg = TrainConfig(backbone="tf_efficientnet_lite0", strategy="feature_extraction", pretrained="offline",
                      input_size=64, epochs=4, device="cpu", seed=seed)
    res = train(cfg, sp.train, sp.val, out / "champion")
    return Path(res.model_dir), sp.train, [sp.val, sp.test], res.best_val


def ks_share(ref_df, cur_df, cols) -> float:
    from scipy.stats import ks_2samp

    drifted = 0
    for c in cols:
        a, b = ref_df[c].to_numpy(), cur_df[c].to_numpy()
        if np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
            continue
        drifted += ks_2samp(a, b).pvalue < 0.05
    return drifted / len(cols)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="waferflow_runs/bench_drift", help="output folder (default under the ignored workdir)")
    ap.add_argument("--champion", default=None, help="reuse this model dir (with drift_reference/) ")
    ap.add_argument("--train-n", type=int, default=6000)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--clean-seeds", type=int, default=20)
    ap.add_argument("--shift-seeds", type=int, default=5)
    ap.add_argument("--novel-fraction", type=float, default=0.2)
    ap.add_argument("--kinds", default=None,
                    help="comma list of batch kinds to run (default all): clean,class_mix,background_x2,"
                         "novel_checkerboard,novel_half-wafer,real_wm811k")
    ap.add_argument("--scores", default=None, help="also write every batch's scores to this JSON file")
    args = ap.parse_args(argv)
    os.environ.setdefault("WAFERFLOW_PROGRESS", "0")

    from waferflow.data.contract import WaferDataset, concat_datasets, load_dataset
    from waferflow.data.synth import TAXONOMIES, default_config, generate, generate_pattern
    from waferflow.drift.detect import DriftConfig, judge_drift, current_frame
    from waferflow.drift.features import READABLE_FEATURES
    from waferflow.drift.reference import build_reference_from_model, load_reference
    from waferflow.models import load_model_dir

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    info: dict = {}
    if args.champion:
        mdir = Path(args.champion)
    else:
        mdir, train_ds, held, best_val = train_champion(out, args.train_n, seed=7)
        info["champion_val"] = best_val
        info["champion_train_seconds"] = round(time.perf_counter() - t0, 1)
    model, spec = load_model_dir(mdir)
    ref_dir = mdir / "drift_reference"
    if not ref_dir.is_dir():
        t1 = time.perf_counter()
        build_reference_from_model(model, spec, train_ds, ref_dir, model_ref=str(mdir),
                                   holdout_ds=concat_datasets(held))
        info["reference_seconds"] = round(time.perf_counter() - t1, 1)
    ref = load_reference(ref_dir)
    cfg = DriftConfig()

    tax = TAXONOMIES["wm811k"]
    freqs = np.asarray(tax.default_freqs, dtype=float)
    donut = tax.class_names.index("Donut")
    mix = freqs * (0.75 / (1 - freqs[donut]))
    mix[donut] = 0.25
    bg = default_config("wm811k").background_fail_rate
    real = load_dataset(REAL) if REAL.exists() else None

    def batch(kind: str, s: int):
        n = args.batch
        if kind == "clean":
            return generate(n, size=64, seed=1000 + s, taxonomy="wm811k")
        if kind == "class_mix":
            return generate(n, size=64, seed=2000 + s, taxonomy="wm811k",
                            config=default_config("wm811k", class_freqs=tuple(mix)))
        if kind == "background_x2":
            return generate(n, size=64, seed=3000 + s, taxonomy="wm811k",
                            config=default_config("wm811k", background_fail_rate=(2 * bg[0], 2 * bg[1])))
        if kind.startswith("novel_"):
            k = int(round(args.novel_fraction * n))
            base = generate(n, size=64, seed=4000 + s, taxonomy="wm811k")
            maps = base.maps.copy()
            maps[:k] = generate_pattern(kind[len("novel_"):], k, size=64, seed=5000 + s)
            return WaferDataset(class_names=base.class_names, maps=maps)
        if kind == "real_wm811k":
            idx = np.sort(np.random.default_rng(6000 + s).choice(len(real), size=n, replace=False))
            return real.subset(idx)
        raise ValueError(kind)

    kinds = [("clean", args.clean_seeds), ("class_mix", args.shift_seeds), ("background_x2", args.shift_seeds),
             ("novel_checkerboard", args.shift_seeds), ("novel_half-wafer", args.shift_seeds)]
    if real is not None:
        kinds.append(("real_wm811k", args.shift_seeds))
    kinds = [(k, n) for k, n in kinds if n > 0 and (not args.kinds or k in args.kinds.split(","))]
    rows = []
    for kind, seeds in kinds:
        for s in range(seeds):
            ds = batch(kind, s)
            t = time.perf_counter()
            cur = current_frame(model, spec, ds, ref)
            d = judge_drift(model, spec, ref, ds, out / "batches" / f"{kind}_{s}", cfg, current_df=cur)
            sec = time.perf_counter() - t
            ks = ks_share(ref.frame, cur, READABLE_FEATURES)
            rows.append({"kind": kind, "seed": s, "drift": bool(d["drift_detected"]), "share": d["share"],
                         "embedding_score": d["embedding_score"], "prediction_js": d["prediction_js"],
                         "drifted_features": d["drifted_features"], "seconds": sec,
                         "baseline_ks_share": float(ks), "baseline_ks_drift": bool(ks >= cfg.share_threshold)})
            print(f"[bench] {kind} {s}: drift={d['drift_detected']} share={d['share']:.2f} "
                  f"emb={d['embedding_score']:.3f} js={d['prediction_js']:.3f} ks_share={ks:.2f} {sec:.1f}s",
                  file=sys.stderr, flush=True)

    def agg(kind: str) -> dict | None:
        r = [x for x in rows if x["kind"] == kind]
        if not r:
            return None
        return {
            "batches": len(r),
            "flagged": sum(x["drift"] for x in r),
            "rate": sum(x["drift"] for x in r) / len(r),
            "share": [round(x["share"], 3) for x in r],
            "embedding_score": [round(x["embedding_score"], 3) for x in r],
            "prediction_js": [round(x["prediction_js"], 3) for x in r],
            "baseline_ks_rate": sum(x["baseline_ks_drift"] for x in r) / len(r),
            # per-feature flag rate: share of (feature, batch) pairs flagged, ours vs KS p < 0.05
            "mean_feature_share": round(float(np.mean([x["share"] for x in r])), 4),
            "baseline_ks_mean_feature_share": round(float(np.mean([x["baseline_ks_share"] for x in r])), 4),
        }

    result = {
        "batch_size": args.batch,
        "thresholds": {"share": cfg.share_threshold, "feature_wasserstein": cfg.feature_threshold,
                       "embedding_auc": cfg.embedding_threshold, "prediction_js": cfg.prediction_threshold},
        "champion": str(mdir), **info,
        "false_alarm_rate": agg("clean")["rate"] if agg("clean") else None,
        "baseline_ks_false_alarm_rate": agg("clean")["baseline_ks_rate"] if agg("clean") else None,
        "detection": {k: agg(k) for k, _ in kinds if k != "clean"},
        "clean": agg("clean"),
        "novel_fraction": args.novel_fraction,
        "seconds_per_batch": round(float(np.median([x["seconds"] for x in rows])), 2),
        "total_seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(result, indent=1))
    if args.scores:
        Path(args.scores).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
