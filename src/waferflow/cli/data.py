"""``waferflow generate | ingest | split | inspect``: the data commands.

Heavy imports (numpy, pandas, sklearn, matplotlib) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from waferflow.errors import DataError


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _positive_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s!r}")
    return v


def _fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {v}")
    return v


def _unit_fraction(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a number") from None
    if not 0.0 < v <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1], got {s!r}")
    return v


def register(sub: argparse._SubParsersAction) -> None:
    """Add the data subcommands to the ``waferflow`` parser."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser(
        "generate", help="generate synthetic wafer maps", formatter_class=fmt,
        description="Generate N synthetic wafer maps (0 off-wafer, 1 pass, 2 fail) and write a dataset .npz plus\n"
                    "its JSON manifest. The same --seed gives byte-identical files.",
        epilog="example: waferflow generate --n 10000 --size 64 --seed 0 --out data/synth.npz",
    )
    p.add_argument("--n", type=_positive_int, required=True, help="number of maps")
    p.add_argument("--size", type=_positive_int, default=64, help="map side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--taxonomy", default="seed20", choices=("seed20", "wm811k"),
                   help="label space: seed20 (20 classes) or wm811k (WM-811K's 9 names); default seed20")
    p.add_argument("--background-fail-rate", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                   help="per-map range of the random die-fail rate at 25 dies across (default: the taxonomy's: "
                        "seed20 0.01 0.05, wm811k 0.06 0.24, which mimics real WM-811K backgrounds)")
    p.add_argument("--out", required=True, help="output .npz (a .json manifest is written next to it)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "ingest", help="convert real wafer maps (.npz, LSWMD.pkl, PNG folder) to a dataset .npz",
        formatter_class=fmt,
        description=(
            "Convert SRC to the data contract and write --out (+ manifest .json).\n\n"
            "SRC may be:\n"
            "  a dataset .npz      fixed 'maps' or 'maps_flat'+'shapes'+'offsets', 'labels' (or 'label'),\n"
            "                      'class_names', optional 'lots'; extra keys are ignored\n"
            "  an LSWMD.pkl        WM-811K's pandas table, read through an allow-list unpickler that refuses\n"
            "                      anything but numpy/pandas data; labeled rows go to --out, unlabeled rows\n"
            "                      to --unlabeled-out (default NAME.unlabeled.npz next to --out); lotName -> lots\n"
            "  a folder of PNGs    SRC/<class name>/*.png greyscale, one coding for all images:\n"
            "                      raw 0/1/2, or scaled 0 off-wafer / 127 or 128 pass / 255 fail;\n"
            "                      SRC/unlabeled/*.png are unlabeled maps and go to --unlabeled-out\n\n"
            "Without --size every map keeps its own size (variable layout); --size S resizes to SxS with\n"
            "nearest-neighbour only. Decoding is bounded (--max-decoded-mib, --max-map-pixels); PNGs must be\n"
            "real PNG files and symlinks are refused unless --allow-symlinks. All outputs are written\n"
            "together or not at all: nothing is written when the input is invalid, and an old\n"
            "NAME.unlabeled.npz is removed when the new input has no unlabeled rows."
        ),
        epilog="example: waferflow ingest LSWMD.pkl --out data/wm811k.npz --size 64",
    )
    p.add_argument("src", help="input .npz, .pkl or folder")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--size", type=_positive_int, default=None, help="resize to SIZE x SIZE (nearest-neighbour)")
    p.add_argument("--unlabeled-out", default=None, help="where unlabeled LSWMD rows or unlabeled/ PNGs go (default NAME.unlabeled.npz)")
    p.add_argument("--max-decoded-mib", type=_positive_float, default=2048.0,
                   help="refuse inputs that decode to more than this many MiB of arrays and maps (default 2048, "
                        "enough for the whole WM-811K LSWMD.pkl)")
    p.add_argument("--max-map-pixels", type=_positive_int, default=1 << 22,
                   help="refuse a map or PNG with more pixels than this (default 4194304 = 2048x2048)")
    p.add_argument("--allow-symlinks", action="store_true",
                   help="follow symlinks in a PNG folder (only to targets inside it; refused by default)")
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser(
        "split", help="stratified, lot-aware train/val/test split", formatter_class=fmt,
        description=(
            "Split DATA.npz into DIR/train.npz, val.npz, test.npz and DIR/manifest.json (counts per split and\n"
            "class, content hashes, exact-duplicate maps across splits). Stratified by class with --seed;\n"
            "when the data has lots, whole lots go to one split. Classes with fewer than 3 maps go to train\n"
            "whole (listed under small_classes). --labels-per-class / --label-fraction thin out TRAIN's\n"
            "labels (few-label regime); the held-back train maps are written to DIR/unlabeled.npz."
        ),
        epilog="example: waferflow split data/wm811k.npz --out data/split --labels-per-class 50 --seed 0",
    )
    p.add_argument("data", help="labeled dataset .npz")
    p.add_argument("--out", required=True, help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--labels-per-class", type=_positive_int, default=None, help="keep at most N labels per class in train")
    g.add_argument("--label-fraction", type=_unit_fraction, default=None, help="keep this fraction of train labels per class")
    p.add_argument("--val", type=_fraction, default=0.15, help="validation fraction (default 0.15)")
    p.add_argument("--test", type=_fraction, default=0.15, help="test fraction (default 0.15)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--no-lots", action="store_true", help="ignore lots and split per wafer")
    p.set_defaults(func=cmd_split)

    p = sub.add_parser(
        "inspect", help="counts, shape statistics and a PNG grid of sample maps per class", formatter_class=fmt,
        description="Print counts per class and shape statistics as a table, and write a PNG grid with one row\n"
                    "per class (grey off-wafer, green pass, red fail).",
        epilog="example: waferflow inspect data/wm811k.npz --out grid.png --per-class 8",
    )
    p.add_argument("data", help="dataset .npz")
    p.add_argument("--out", default=None, help="grid PNG (default: DATA name + .grid.png next to it)")
    p.add_argument("--per-class", type=_positive_int, default=6, help="maps per class row (default 6)")
    p.add_argument("--seed", type=int, default=0, help="which maps are drawn (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    p.set_defaults(func=cmd_inspect)


def cmd_generate(args: argparse.Namespace) -> int:
    """Handler of ``waferflow generate``."""
    from waferflow.data.contract import save_dataset
    from waferflow.data.synth import default_config, generate

    out = Path(args.out)
    if out.suffix != ".npz":
        raise DataError(f"--out must end in .npz, got {out}")
    knobs = {} if args.background_fail_rate is None else {"background_fail_rate": tuple(args.background_fail_rate)}
    cfg = default_config(args.taxonomy, **knobs).validate()
    ds = generate(args.n, size=args.size, seed=args.seed, taxonomy=args.taxonomy, config=cfg)
    man = save_dataset(ds, out)
    print(json.dumps({"out": str(out), "n_maps": man["n_maps"], "class_counts": man["class_counts"],
                      "content_sha256": man["content_sha256"]}, indent=2))
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Handler of ``waferflow ingest``."""
    from waferflow.data.ingest import DecodeLimits, ingest, write_ingest

    if Path(args.out).suffix != ".npz":
        raise DataError(f"--out must end in .npz, got {args.out}")
    limits = DecodeLimits(max_decoded_mib=args.max_decoded_mib, max_map_pixels=args.max_map_pixels,
                          allow_symlinks=args.allow_symlinks)
    result = ingest(args.src, size=args.size, limits=limits)
    info = write_ingest(result, args.out, unlabeled_out=args.unlabeled_out)
    man = info["manifest"]
    print(json.dumps({"out": info["out"], "n_maps": man["n_maps"], "layout": man["layout"],
                      "class_counts": man["class_counts"], "unlabeled_out": info["unlabeled_out"],
                      "unlabeled_maps": info.get("unlabeled_maps", 0), "report": result.report}, indent=2))
    return 0


def cmd_split(args: argparse.Namespace) -> int:
    """Handler of ``waferflow split``."""
    from waferflow.data.contract import load_dataset
    from waferflow.data.split import split_dataset, write_split

    if Path(args.data).is_dir() or Path(args.data).suffix != ".npz":
        raise DataError(f"split reads a dataset .npz, got {args.data}; convert it first with "
                        f"`waferflow ingest {args.data} --out data.npz`")
    ds = load_dataset(args.data, require_labels=True)
    res = split_dataset(ds, val=args.val, test=args.test, seed=args.seed, labels_per_class=args.labels_per_class,
                        label_fraction=args.label_fraction, lot_aware=False if args.no_lots else None)
    man = write_split(res, args.out)
    print(json.dumps({"out": args.out, "splits": {k: v["n_maps"] for k, v in man["splits"].items()},
                      "lot_aware": man["lot_aware"], "small_classes": man["small_classes"],
                      "duplicates_across_splits": man["duplicates_across_splits"]["n_groups"]}, indent=2))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """Handler of ``waferflow inspect``."""
    from waferflow.data.contract import load_dataset
    from waferflow.data.inspect import format_summary, inspect_dataset, plot_class_grid

    if Path(args.data).is_dir() or Path(args.data).suffix != ".npz":
        raise DataError(f"inspect reads a dataset .npz, got {args.data}; convert it first with "
                        f"`waferflow ingest {args.data} --out data.npz`")
    ds = load_dataset(args.data)
    out = Path(args.out) if args.out else Path(args.data).with_suffix(".grid.png")
    if out.suffix.lower() != ".png":
        raise DataError(f"--out must end in .png, got {out}")
    summary = inspect_dataset(ds)
    plot_class_grid(ds, out, per_class=args.per_class, seed=args.seed, title=Path(args.data).name)
    summary["grid"] = str(out)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary) + f"\ngrid: {out}")
    return 0
