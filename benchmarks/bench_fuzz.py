"""Benchmark: fuzz the ingest readers for longer than the suite does.

Run from the repo root::

    python -m benchmarks.bench_fuzz --seconds 120

Applies the suite's structured corruptions (``tests/data/crafted.py``: byte flips, truncation, duplicated and
zeroed runs, inserted bytes; 1-4 per input) to valid npz (stored and compressed), pickle (protocol 5, the legacy
pandas 1.5 fixture, xz) and PNG inputs, and ingests each in a child process, so that a signal death is counted
as a crash instead of ending the run. Prints one JSON object: inputs tried, accepted, refused (one-line
DataError), errors (any other exception, with the first few), crashes (child killed by a signal). Exits 1 when
there is an error or a crash.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "data"))

OPS = ("flip", "cut", "dup", "zero", "insert")


def _worker(seed: int, n: int) -> dict:
    import traceback

    from crafted import corrupt, run_reader, seeds

    rng = random.Random(seed)
    counts = {"tried": 0, "ok": 0, "refused": 0, "errors": 0, "first_errors": []}
    with tempfile.TemporaryDirectory() as d:
        inputs = seeds(Path(d) / "seeds", REPO / "tests" / "fixtures" / "LSWMD_small.pkl")
        names = sorted(inputs)
        for _ in range(n):
            name = rng.choice(names)
            ops = [(rng.choice(OPS), rng.randrange(2**20), rng.randrange(256)) for _ in range(rng.randint(1, 4))]
            suffix, data = inputs[name]
            with tempfile.TemporaryDirectory(dir=d) as case:
                counts["tried"] += 1
                try:
                    counts[run_reader(corrupt(data, ops), suffix, Path(case))] += 1
                except Exception as e:  # noqa: BLE001 - counted and reported
                    counts["errors"] += 1
                    if len(counts["first_errors"]) < 5:
                        counts["first_errors"].append({"input": name, "ops": ops, "error": repr(e)[:300],
                                                       "where": traceback.format_exc().splitlines()[-3:]})
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=120.0, help="time budget (default 120)")
    ap.add_argument("--chunk", type=int, default=200, help="inputs per child process (default 200)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--worker", nargs=2, type=int, metavar=("SEED", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0
    total = {"tried": 0, "ok": 0, "refused": 0, "errors": 0, "crashes": 0, "first_errors": [], "crashed_chunks": []}
    t0, chunk = time.monotonic(), 0
    env = {"WAFERFLOW_PROGRESS": "0", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    while time.monotonic() - t0 < args.seconds:
        seed = args.seed * 1_000_003 + chunk
        r = subprocess.run([sys.executable, "-m", "benchmarks.bench_fuzz", "--worker", str(seed), str(args.chunk)],
                           capture_output=True, text=True, cwd=REPO, env=env)
        chunk += 1
        if r.returncode != 0:
            total["crashes"] += 1
            total["crashed_chunks"].append({"seed": seed, "returncode": r.returncode, "stderr": r.stderr[-500:]})
            continue
        part = json.loads(r.stdout.strip().splitlines()[-1])
        for k in ("tried", "ok", "refused", "errors"):
            total[k] += part[k]
        total["first_errors"] = (total["first_errors"] + part["first_errors"])[:5]
    total.update(seconds=round(time.monotonic() - t0, 1), chunks=chunk, chunk_size=args.chunk, seed=args.seed)
    from benchmarks._report import emit

    emit(total, args.out)
    return 1 if total["errors"] or total["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
