"""Synthetic seed20 benchmark of the local profile (tf_efficientnet_lite0, offline ImageNet, 64 px, CPU).

Generates N seed20 maps, splits 70/15/15 (stratified), then:
- trains each requested strategy and evaluates it on test (accuracy, macro-F1, per-epoch seconds);
- feature extraction with cached features vs. without the cache (the baseline, same run, same epochs,
  augmentation off in both so they see the same maps): per-epoch time ratio and accuracy of each.
Prints one JSON object.

    python benchmarks/bench_train.py --n 10000 --strategies gradual_unfreezing --fe-compare-epochs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--strategies", default="gradual_unfreezing")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--fe-compare-epochs", type=int, default=2, help="0 = skip the cache comparison")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    from waferflow.config import load_config
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import generate
    from waferflow.evaluation import evaluate
    from waferflow.predictors import torch_predictor
    from waferflow.models import load_model_dir
    from waferflow.train import TrainConfig, train

    t = time.perf_counter()
    ds = generate(args.n, size=args.size, seed=0, taxonomy="seed20")
    sp = split_dataset(ds, val=0.15, test=0.15, seed=0)
    gen_s = time.perf_counter() - t
    out = {"benchmark": "synthetic_seed20_local", "n": args.n, "size": args.size, "generate_split_seconds": gen_s,
           "train_maps": len(sp.train), "val_maps": len(sp.val), "test_maps": len(sp.test), "overrides": args.set,
           "strategies": {}}

    def run(strategy: str, extra: list[str]) -> dict:
        cfg = load_config(TrainConfig, overrides=[f"strategy={strategy}", *args.set, *extra])
        with tempfile.TemporaryDirectory() as d:
            r = train(cfg, sp.train, sp.val, Path(d) / "m")
            model, spec = load_model_dir(Path(d) / "m")
            m = evaluate(torch_predictor(model), sp.test, spec)
        row = {"strategy": strategy, "extra": extra, "test_accuracy": m["overall"]["accuracy"],
               "test_macro_f1": m["overall"]["macro_f1"], "epochs_run": len(r.history),
               "epoch_seconds": r.extra["epoch_seconds"], "feature_cache_seconds": r.extra["feature_cache_seconds"],
               "train_seconds": r.train_seconds, "trainable_params": r.trainable_params,
               "throughput_maps_per_s": r.throughput_maps_per_s, "weights_source": r.extra["weights_source"]}
        print(json.dumps({"partial": row}), file=sys.stderr, flush=True)
        return row

    for s in [x for x in args.strategies.split(",") if x]:
        out["strategies"][s] = run(s, [])
    if args.fe_compare_epochs:
        e = args.fe_compare_epochs
        common = [f"epochs={e}", "augment=false", "patience=0"]
        cached = run("feature_extraction", common + ["feature_cache=true"])
        uncached = run("feature_extraction", common + ["feature_cache=false"])
        c_ep, u_ep = cached["epoch_seconds"]["head"], uncached["epoch_seconds"]["head"]
        out["feature_cache"] = {
            "epochs": e, "cached_epoch_seconds": c_ep, "uncached_epoch_seconds": u_ep,
            "speedup_per_epoch": u_ep / c_ep if c_ep > 0 else None,
            "cache_build_seconds": cached["feature_cache_seconds"],
            "cached_test_accuracy": cached["test_accuracy"], "uncached_test_accuracy": uncached["test_accuracy"],
            "meets_10x": bool(c_ep > 0 and u_ep / c_ep >= 10),
        }
    if "gradual_unfreezing" in out["strategies"]:
        out["gradual_unfreezing_meets_97"] = out["strategies"]["gradual_unfreezing"]["test_accuracy"] >= 0.97
    emit(out, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
