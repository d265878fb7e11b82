"""``waferflow train``, ``pretrain`` and ``compare``."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from waferflow.errors import ConfigError, DataError

log = logging.getLogger(__name__)

STRATEGY_HELP = "scratch | feature_extraction | full_finetune | gradual_unfreezing (default: the measured best recipe)"


def register(sub) -> None:
    p = sub.add_parser(
        "train", help="train one classifier (transfer learning) and write a model dir",
        description="Train a wafer-map classifier from pretrained weights. DATA is a folder with train.npz and "
        "val.npz (test.npz optional: evaluated into OUT/metrics.json), or one .npz from which a stratified "
        "validation split is made. Config: TrainConfig defaults < --config YAML < --set key=value < flags.",
    )
    p.add_argument("--data", required=True, help="DIR with train/val[/test].npz, or one FILE.npz")
    p.add_argument("--strategy", default=None, help=STRATEGY_HELP)
    p.add_argument("--backbone", default=None, help="timm backbone, e.g. tf_efficientnet_lite0, resnet50")
    p.add_argument("--epochs", type=int, default=None, help="total epochs over all phases")
    p.add_argument("--weights", default=None,
                   help="weights source: auto | hub | offline | none | FILE.pt | MODEL_DIR | URL | models:/NAME@ALIAS")
    _common(p)
    p.add_argument("--resume", action="store_true", help="continue a killed run from OUT/checkpoints/last.pt")
    p.add_argument("--unlabeled", default=None,
                   help="unlabeled maps (.npz, any labels in it are ignored) for self-training: the trained model "
                        "pseudo-labels them with test-time augmentation, then a student is fine-tuned from it on "
                        "labels + confident pseudo-labels; OUT holds the student, OUT/teacher the first model")
    p.add_argument("--self-train-rounds", type=int, default=1, help="pseudo-label/retrain rounds (default 1)")
    p.add_argument("--pseudo-threshold", type=float, default=0.9,
                   help="minimum averaged confidence of a pseudo-label (default 0.9)")
    p.add_argument("--student-epochs", type=int, default=0,
                   help="epochs of each student (default: the teacher's); students see several times more maps")
    p.add_argument("--pseudo-cap", type=float, default=3.0,
                   help="pseudo-labels per class at most this many times its labeled maps (default 3)")
    p.add_argument("--out", required=True, help="model dir to write")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "pretrain", help="train a backbone on synthetic maps (source domain) for later transfer",
        description="ImageNet -> synthetic: generates N synthetic maps of TAXONOMY, trains BACKBONE on them and "
        "writes a model dir usable as `waferflow train --weights DIR` (the head is re-initialized there when the "
        "class count differs).",
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--taxonomy", default="wm811k", help="seed20 | wm811k")
    p.add_argument("--n", type=int, default=5000, help="synthetic maps to generate")
    p.add_argument("--size", type=int, default=64, help="size of the generated maps")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--strategy", default="full_finetune", help=STRATEGY_HELP)
    p.add_argument("--weights", default=None, help="starting weights (default: ImageNet, auto)")
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser(
        "compare", help="train strategies x backbones on one dataset and write a comparison table",
        description="Runs every candidate (strategy x backbone) on DIR/train.npz + val.npz, ranks them on "
        "validation macro-F1, scores only the chosen one on DIR/test.npz (read once), and writes "
        "OUT/comparison.md, OUT/comparison.json and OUT/candidates/<name>/ model dirs.",
    )
    p.add_argument("--data", required=True, help="DIR with train.npz, val.npz, test.npz")
    p.add_argument("--strategies", default="feature_extraction,full_finetune,gradual_unfreezing,scratch")
    p.add_argument("--backbones", default="tf_efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=None, help="epochs for every candidate (default: per strategy)")
    p.add_argument("--weights", default=None)
    _common(p)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_compare)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="TrainConfig YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig key, e.g. --set batch_size=32 (repeatable)")


def _config(args, **flags):
    from waferflow.config import load_config
    from waferflow.train import TrainConfig

    overrides = list(args.set)
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    return load_config(TrainConfig, args.config, overrides)


def load_splits(data: str, val_fraction: float, seed: int):
    """``(train, val, test | None)`` from a split dir or one file (stratified val split made here)."""
    from waferflow.data.contract import load_dataset

    p = Path(data)
    if p.is_dir():
        missing = [f for f in ("train.npz", "val.npz") if not (p / f).is_file()]
        if missing:
            raise DataError(f"{p} lacks {missing}; run `waferflow split DATA.npz --out {p}` or pass one .npz file")
        test = load_dataset(p / "test.npz", require_labels=True) if (p / "test.npz").is_file() else None
        return load_dataset(p / "train.npz", require_labels=True), load_dataset(p / "val.npz", require_labels=True), test
    if not p.is_file():
        raise DataError(f"--data {p} does not exist; give a split folder or a .npz file")
    from waferflow.data.split import split_dataset

    ds = load_dataset(p, require_labels=True)
    res = split_dataset(ds, val=val_fraction, test=0.0, seed=seed)
    return res.train, res.val, None


def _evaluate_dir(model_dir: Path, test) -> dict:
    from waferflow.config import atomic_write_json
    from waferflow.evaluation import evaluate
    from waferflow.predictors import torch_predictor
    from waferflow.models import load_model_dir

    model, spec = load_model_dir(model_dir)
    m = evaluate(torch_predictor(model), test, spec)
    atomic_write_json(model_dir / "metrics.json", m)
    return m


def cmd_train(args) -> int:
    cfg = _config(args, strategy=args.strategy, backbone=args.backbone, epochs=args.epochs)
    from waferflow.train import train

    tr, va, te = load_splits(args.data, cfg.val_fraction, cfg.seed)
    weights = None if args.weights in (None, "") else args.weights
    if weights is not None and weights in ("auto", "hub", "offline", "none", "imagenet"):
        cfg = _config(args, strategy=args.strategy, backbone=args.backbone, epochs=args.epochs, pretrained=weights)
        weights = None
    unlabeled = None
    if cfg.unlabeled_weight and not args.unlabeled:
        raise ConfigError(f"unlabeled_weight={cfg.unlabeled_weight} is the self-training students' consistency on "
                          "unlabeled maps; give them with --unlabeled POOL.npz (or set unlabeled_weight=0)")
    if args.unlabeled:
        from waferflow.data.contract import load_dataset
        from waferflow.train.selftrain import check_settings

        # refuse bad settings and an unreadable unlabeled file before hours of training, not after
        check_settings(args.pseudo_threshold, args.pseudo_cap, args.self_train_rounds)
        if args.student_epochs < 0:
            raise ConfigError(f"--student-epochs must be >= 0, got {args.student_epochs}")
        if args.resume:
            raise ConfigError("--resume continues one training run; it cannot resume a self-training run. Resume "
                              "the teacher alone (without --unlabeled), then run self-training from it")
        unlabeled = load_dataset(args.unlabeled)
    first = Path(args.out) / "teacher" if unlabeled is not None else Path(args.out)
    from dataclasses import replace

    # the teacher trains on the labels alone, as a pipeline's candidates do; unlabeled_weight is for the students
    r = train(replace(cfg, unlabeled_weight=0.0), tr, va, first, weights=weights, resume=args.resume)
    if unlabeled is not None:
        from waferflow.train.selftrain import self_train

        # the student fine-tunes every layer from the teacher's weights
        scfg = replace(cfg, strategy="full_finetune", epochs=args.student_epochs or cfg.epochs)
        r = self_train(scfg, first, tr, va, unlabeled, args.out, rounds=args.self_train_rounds,
                       threshold=args.pseudo_threshold, max_per_class_ratio=args.pseudo_cap)
    summary = r.to_dict()
    if te is not None:
        m = _evaluate_dir(Path(args.out), te)
        summary["test"] = m["overall"]
    print(json.dumps(summary, indent=2, default=str))
    return 0


def cmd_pretrain(args) -> int:
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import TAXONOMIES, generate
    from waferflow.train import train

    if args.taxonomy not in TAXONOMIES:
        raise ConfigError(f"unknown taxonomy {args.taxonomy!r}; choose one of {', '.join(TAXONOMIES)}")
    if args.n < 50:
        raise ConfigError(f"--n {args.n} is too few synthetic maps to pretrain on; use at least 50 (e.g. 5000)")
    cfg = _config(args, strategy=args.strategy, backbone=args.backbone, epochs=args.epochs, seed=args.seed)
    ds = generate(args.n, size=args.size, seed=args.seed, taxonomy=args.taxonomy)
    res = split_dataset(ds, val=0.15, test=0.0, seed=args.seed)
    r = train(cfg, res.train, res.val, args.out, weights=args.weights)
    print(json.dumps({**r.to_dict(), "source_domain": f"synthetic:{args.taxonomy}:n={args.n}"}, indent=2, default=str))
    return 0


def cmd_compare(args) -> int:
    from waferflow.config import atomic_write_json, atomic_write_text
    from waferflow.plots import comparison_table
    from waferflow.selection import candidate_name, choose_best
    from waferflow.train import STRATEGIES, train

    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    bad = [s for s in strategies if s not in STRATEGIES]
    if bad or not strategies or not backbones:
        raise ConfigError(f"--strategies must be a comma list of {', '.join(STRATEGIES)}; bad: {bad}")
    base = _config(args)
    tr, va, te = load_splits(args.data, base.val_fraction, base.seed)
    if te is None:
        raise DataError(f"compare needs {args.data}/test.npz to score the chosen candidate; run `waferflow split` "
                        "first")
    out = Path(args.out)
    rows, full = [], {}
    for bb in backbones:
        for st in strategies:
            name = candidate_name(st, bb)
            cfg = _config(args, strategy=st, backbone=bb, epochs=args.epochs)
            # --weights feeds the transfer candidates; scratch is the random-init baseline
            w = None if STRATEGIES[st].init == "random" else args.weights
            r = train(cfg, tr, va, out / "candidates" / name, weights=w)
            v = r.best_val
            rows.append({
                "candidate": name, "backbone": bb, "strategy": st, "accuracy": v["accuracy"],
                "balanced_accuracy": v["balanced_accuracy"], "macro_f1": v["macro_f1"], "ece": v.get("ece"),
                "trainable_params": r.trainable_params, "train_seconds": r.train_seconds,
                "throughput_maps_per_s": r.throughput_maps_per_s,
            })
            full[name] = {**rows[-1], "overall": v, "model_dir": str(r.model_dir),
                          "weights_source": r.spec.weights_source, "epoch_seconds": r.extra["epoch_seconds"]}
    best, ranked = choose_best(full)  # on validation: the test split is read once, by the chosen candidate
    test = _evaluate_dir(out / "candidates" / best, te)
    atomic_write_text(out / "comparison.md", f"Candidates on validation (best: {best}):\n\n{comparison_table(rows)}\n"
                      f"\n{best} on test: accuracy {test['overall']['accuracy']:.4f}, macro-F1 "
                      f"{test['overall']['macro_f1']:.4f}\n")
    atomic_write_json(out / "comparison.json", {"candidates": list(full.values()), "ranked": ranked, "best": best,
                                                "selected_on": "val", "best_test": test["overall"]})
    print(json.dumps({"candidates": rows, "best": best, "selected_on": "val", "best_test": test["overall"]},
                     indent=2))
    return 0
