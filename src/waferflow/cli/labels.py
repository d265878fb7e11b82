"""``waferflow labels queue|merge``: the maps whose labels would help most, and taking the new labels in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from waferflow.errors import ConfigError


def register(subparsers) -> None:
    p = subparsers.add_parser("labels", help="label queue: the unlabeled maps worth labeling, and merging the labels",
                              description="Build a queue of the unlabeled maps whose labels would help the model "
                              "most (low confidence, spread over its embedding) as queue.csv + queue.png, then merge "
                              "the labels someone filled in, so the next `waferflow run --data` trains on them.")
    sub = p.add_subparsers(dest="labels_command", metavar="ACTION")
    sub.required = True
    s = sub.add_parser("queue", help="write OUT/queue.csv, queue.png and queue.json",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--model", required=True, help="trained model dir (e.g. RUN/select-best/best)")
    s.add_argument("--unlabeled", required=True, help="unlabeled maps (.npz of the data contract)")
    s.add_argument("--n", type=int, default=50, help="maps to queue")
    s.add_argument("--pool-factor", type=float, default=4.0,
                   help="choose among the pool-factor x n least confident maps, spread over the embedding")
    s.add_argument("--out", required=True, help="output folder")
    s.set_defaults(func=_queue)
    s = sub.add_parser("merge", help="move the labeled queue rows from the unlabeled file into the labeled one")
    s.add_argument("--queue", required=True, help="the filled queue.csv ('label' column)")
    s.add_argument("--unlabeled", required=True, help="the unlabeled .npz the queue was built from")
    s.add_argument("--data", required=True, help="the labeled .npz to extend")
    s.add_argument("--out", required=True, help="the new labeled .npz (train the next run on it: run --data OUT)")
    s.add_argument("--remaining", default=None, help="write the still-unlabeled maps here (.npz)")
    s.set_defaults(func=_merge)


def _queue(args) -> int:
    from waferflow.data.contract import load_dataset
    from waferflow.labelqueue import build_queue, write_queue
    from waferflow.models import read_spec

    spec = read_spec(args.model)
    unlabeled = load_dataset(args.unlabeled)
    q = build_queue(args.model, unlabeled, n=args.n, pool_factor=args.pool_factor)
    info = write_queue(q, unlabeled, args.out, list(spec.class_names))
    print(json.dumps({k: info[k] for k in ("n", "pool_size", "unlabeled_maps")}))
    print(f"queue: {Path(args.out) / 'queue.csv'} (sheet {Path(args.out) / 'queue.png'}); {info['how']}")
    return 0


def _merge(args) -> int:
    from waferflow.data.contract import load_dataset, save_dataset
    from waferflow.labelqueue import merge_labels

    for flag in ("out", "remaining"):
        p = getattr(args, flag)
        if p and not p.endswith(".npz"):
            raise ConfigError(f"--{flag} {p} must be a .npz file")
        if p and not Path(p).resolve().parent.is_dir():
            raise ConfigError(f"--{flag} {p}: folder {Path(p).resolve().parent} does not exist; create it first")
    merged, remaining, report = merge_labels(args.queue, load_dataset(args.unlabeled), load_dataset(args.data,
                                                                                                     require_labels=True))
    save_dataset(merged, args.out, source=f"{args.data} + labels from {args.queue}")
    if args.remaining:
        save_dataset(remaining, args.remaining, source=f"{args.unlabeled} minus labeled queue rows")
    print(json.dumps(report))
    return 0
