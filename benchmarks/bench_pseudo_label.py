"""Self-training's pseudo-labelling with the teacher in PyTorch (the baseline) and in onnxruntime (the default).

The teacher is a model dir (``--teacher``), or by default a tf_efficientnet_lite0 fine-tuned for one epoch from the
offline ImageNet weights on ``--n-train`` synthetic WM-811K-taxonomy maps at ``--input-size`` px. The pool is an
``.npz`` (``--pool``, e.g. real maps) or ``--n-pool`` synthetic maps of another seed. Each engine labels the whole
pool with the 8-view TTA of the recipe, alternating, ``--rounds`` times each, so both see the same machine load.
Reports the medians and the speed-up, and what differs between the engines' results: the pseudo-labels (map and
class) that only one engine kept, a threshold effect of last-bit differences in the logits (a pipeline run uses one
engine throughout). Prints one JSON object.

    python benchmarks/bench_pseudo_label.py --n-pool 6225 --rounds 2
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=None, help="a model dir (default: train one, see above)")
    ap.add_argument("--labeled", default=None, help="with --teacher: its labeled .npz (the per-class caps)")
    ap.add_argument("--pool", default=None, help="an .npz of maps to pseudo-label (default: synthetic)")
    ap.add_argument("--n-pool", type=int, default=6225)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--input-size", type=int, default=80)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    import torch

    from waferflow.data.contract import load_dataset
    from waferflow.data.synth import generate
    from waferflow.train.selftrain import pseudo_label

    pool = load_dataset(args.pool) if args.pool else generate(args.n_pool, size=64, seed=1, taxonomy="wm811k")
    with tempfile.TemporaryDirectory() as tmp:
        teacher = Path(args.teacher) if args.teacher else _teacher(Path(tmp) / "teacher", args)
        if args.teacher and not args.labeled:
            ap.error("--teacher needs --labeled (the labeled maps whose counts cap the pseudo-labels)")
        labeled = load_dataset(args.labeled if args.teacher else teacher.parent / "labeled.npz")
        runs: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        kept: dict[str, tuple[set, dict]] = {}
        for r in range(args.rounds):
            for engine in runs:
                t0 = time.perf_counter()
                pseudo, rep = pseudo_label(teacher, pool, labeled, args.threshold, engine=engine)
                runs[engine].append(time.perf_counter() - t0)
                kept[engine] = ({(m.tobytes(), int(y)) for m, y in zip(pseudo.maps, pseudo.labels)}, rep)
                print(f"{engine} round {r}: {runs[engine][-1]:.1f} s, kept {rep['kept']}", file=sys.stderr,
                      flush=True)
    med = {k: statistics.median(v) for k, v in runs.items()}
    reports = {k: v[1] for k, v in kept.items()}
    only = {"torch": len(kept["torch"][0] - kept["onnxruntime"][0]),
            "onnxruntime": len(kept["onnxruntime"][0] - kept["torch"][0])}
    emit({"benchmark": "pseudo_label_engine", "pool_maps": len(pool), "input_size": args.input_size,
          "tta_views": reports["torch"]["tta_views"], "threads": torch.get_num_threads(),
          "median_seconds": med, "speedup": med["torch"] / med["onnxruntime"], "runs": runs,
          "kept": {k: r["kept"] for k, r in reports.items()}, "kept_by_one_engine_only": only,
          "kept_per_class": {k: {c: v["kept"] for c, v in r["per_class"].items()} for k, r in reports.items()},
          "pseudo_label_accuracy": {k: r.get("pseudo_label_accuracy") for k, r in reports.items()}}, args.out)
    return 0


def _teacher(out: Path, args) -> Path:
    """A Lite0 fine-tuned for one epoch on synthetic WM-811K-taxonomy maps (its labeled set saved beside it)."""
    from waferflow.config import load_config
    from waferflow.data.contract import save_dataset
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import generate
    from waferflow.train import TrainConfig, train

    sp = split_dataset(generate(args.n_train, size=64, seed=0, taxonomy="wm811k"), val=0.15, test=0.15, seed=0)
    cfg = load_config(TrainConfig, overrides=["strategy=full_finetune", "epochs=1", "patience=0",
                                              f"input_size={args.input_size}", "symmetries=hflip,vflip,rot90"])
    train(cfg, sp.train, sp.val, out)
    save_dataset(sp.train, out.parent / "labeled.npz")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
