"""Shared output of the benchmarks: JSON on stdout, optionally also to a file."""

import json
from pathlib import Path


def emit(result: dict, out: str | None = None) -> None:
    """Print ``result`` as JSON and, when ``out`` is given, write the same text there."""
    text = json.dumps(result, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
