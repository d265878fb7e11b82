"""The ``waferflow`` command line.

Each area registers its subcommands from its own module (``cli/data.py``,
``cli/train.py``, ...). Handlers import heavy libraries lazily so that
``--help`` stays fast. A handler returns an exit code (or None for 0); a
:class:`waferflow.errors.WaferflowError` becomes a one-line message and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from waferflow import __version__
from waferflow.errors import WaferflowError

# Modules that each define ``register(subparsers)``; a missing one is skipped
# only while it has not been written yet (ImportError of the module itself).
AREAS = ("data", "train", "evaluate", "export", "registry", "pipeline", "drift", "labels")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="waferflow",
        description="Transfer-learning factory for wafer-map defect classifiers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"waferflow {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for area in AREAS:
        name = f"waferflow.cli.{area}"
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        rc = args.func(args)
    except WaferflowError as e:
        print(f"waferflow {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
