"""Training-step time with and without the faster depthwise weight gradient (``TrainConfig.fast_depthwise_grad``).

Generates N seed20 maps and splits them 70/15/15, then trains the same candidate (default: full fine-tune of
tf_efficientnet_lite0 from the offline ImageNet weights, 64 px, CPU) with the setting off (the baseline) and on,
alternating, ``--rounds`` times each, so both see the same machine load. Reports the training loop's seconds
(validation excluded), the speed-up of the medians, and each variant's validation figures, which agree to training
noise: the two differ only in the summation order of some weight gradients. Prints one JSON object.

    python benchmarks/bench_dwgrad.py --n 3000 --epochs 1 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--strategy", default="full_finetune")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch

    from waferflow.config import load_config
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import generate
    from waferflow.train import TrainConfig, train

    sp = split_dataset(generate(args.n, size=64, seed=0, taxonomy="seed20"), val=0.15, test=0.15, seed=0)
    runs: dict[str, list[dict]] = {"baseline": [], "fast": []}
    for r in range(args.rounds):
        for name in ("baseline", "fast"):
            cfg = load_config(TrainConfig, overrides=[
                f"strategy={args.strategy}", f"epochs={args.epochs}", f"input_size={args.input_size}", "patience=0",
                f"fast_depthwise_grad={name == 'fast'}", *args.set])
            with tempfile.TemporaryDirectory() as d:
                res = train(cfg, sp.train, sp.val, Path(d) / "m")
            row = {"round": r, "train_loop_seconds": res.train_seconds,
                   "val_accuracy": res.best_val["accuracy"], "val_macro_f1": res.best_val["macro_f1"]}
            runs[name].append(row)
            print(f"{name} round {r}: {row}", file=sys.stderr, flush=True)
    med = {k: statistics.median(x["train_loop_seconds"] for x in v) for k, v in runs.items()}
    emit({"benchmark": "fast_depthwise_grad", "n_train": len(sp.train), "strategy": args.strategy,
          "epochs": args.epochs, "input_size": args.input_size, "threads": torch.get_num_threads(),
          "overrides": args.set, "median_train_loop_seconds": med,
          "speedup": med["baseline"] / med["fast"] if med["fast"] else None, "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
