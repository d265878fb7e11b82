"""Benchmark: vectorized synthetic generation against a per-pixel Python-loop baseline.

Run from the repo root::

    python -m benchmarks.bench_generate            # or: python benchmarks/bench_generate.py

Prints one JSON object: maps/s of ``waferflow.data.synth.generate(10000, size=128, seed=0)``
(best of ``--repeats``), maps/s of the straightforward reference generator below (run on a
small ``--baseline-n`` and extrapolated; it is linear in n), the speedup, and pass/fail of the
acceptance targets (>= 50x the baseline; 10,000 maps of 128x128 in under 2 s). Exits 1 when a
target fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time

TARGET_SPEEDUP = 50.0
TARGET_SECONDS = 2.0


def baseline_generate(n: int, size: int = 128, seed: int = 0) -> list[list[list[int]]]:
    """The reference: the same kind of maps, one pixel at a time in pure Python.

    Per map it draws a grid size, a class (wm811k taxonomy: background only or one of the
    eight patterns) and the pattern's parameters, then for every output pixel finds its die,
    tests the wafer circle, evaluates the pattern's fail probability at the die centre and
    samples the die (one uniform per die, cached so a die's pixels agree).
    """
    rng = random.Random(seed)
    maps = []
    for _ in range(n):
        g = 25 + int(40 * rng.random() ** 2)
        die = 2.0 / g
        bg = (0.06 + 0.18 * rng.random()) * (25.0 / g) ** 1.7
        kind = rng.choice(["none", "none", "none", "center", "donut", "edge-loc", "edge-ring", "loc",
                           "near-full", "random", "scratch"])
        th = rng.random() * 2 * math.pi
        ct, st = math.cos(th), math.sin(th)
        rad = 0.15 + 0.25 * rng.random()
        dens = 0.6 + 0.35 * rng.random()
        length = 0.4 + 0.9 * rng.random()
        curv = -1.6 + 3.2 * rng.random()
        cx, cy = 0.6 * rng.random() * ct, 0.6 * rng.random() * st
        coarse = [[rng.random() for _ in range(5)] for _ in range(5)]
        die_u: dict[tuple[int, int], float] = {}
        m = []
        for py in range(size):
            row = []
            for px in range(size):
                i = min(int((py + 0.5) * g / size), g - 1)
                j = min(int((px + 0.5) * g / size), g - 1)
                x = (j + 0.5) * die - 1.0
                y = (i + 0.5) * die - 1.0
                r = math.sqrt(x * x + y * y)
                if r > 1.0:
                    row.append(0)
                    continue
                p = bg
                if kind == "center":
                    q = dens * min(1.0, max(0.0, (1.0 - r / rad) / 0.3))
                elif kind == "donut":
                    q = dens * min(1.0, max(0.0, (1.0 - abs(r - 0.45) / 0.1) / 0.5))
                elif kind == "edge-loc":
                    d = math.hypot(x - ct, y - st) / rad
                    q = dens * min(1.0, max(0.0, (1.0 - d) / 0.3))
                elif kind == "edge-ring":
                    q = dens if r > 1.0 - 1.5 * die else 0.0
                elif kind == "loc":
                    d = math.hypot(x - cx, y - cy) / (0.6 * rad)
                    q = dens * min(1.0, max(0.0, (1.0 - d) / 0.3))
                elif kind == "near-full":
                    q = 0.9
                elif kind == "random":
                    q = 0.3 + 0.4 * coarse[min(i * 5 // g, 4)][min(j * 5 // g, 4)]
                elif kind == "scratch":
                    s = (x - cx) * ct + (y - cy) * st
                    t = (y - cy) * ct - (x - cx) * st - curv * s * s
                    q = dens if abs(t) < 0.7 * die and abs(s) < length / 2 else 0.0
                else:
                    q = 0.0
                p = max(p, q)
                u = die_u.get((i, j))
                if u is None:
                    u = die_u[(i, j)] = rng.random()
                row.append(2 if u < p else 1)
            m.append(row)
        maps.append(m)
    return maps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--baseline-n", type=int, default=40)
    ap.add_argument("--taxonomy", default="seed20")
    args = ap.parse_args(argv)
    os.environ.setdefault("WAFERFLOW_PROGRESS", "0")
    import numpy as np

    from waferflow.data.synth import generate

    generate(16, size=args.size, seed=1, taxonomy=args.taxonomy)  # warm-up (imports, caches)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ds = generate(args.n, size=args.size, seed=0, taxonomy=args.taxonomy)
        times.append(time.perf_counter() - t0)
    assert ds.maps.shape == (args.n, args.size, args.size) and ds.maps.dtype == np.uint8
    best = min(times)

    t0 = time.perf_counter()
    ref = baseline_generate(args.baseline_n, size=args.size, seed=0)
    base_s = time.perf_counter() - t0
    assert len(ref) == args.baseline_n and len(ref[0]) == args.size
    base_rate = args.baseline_n / base_s
    rate = args.n / best
    speedup = rate / base_rate
    targets = {
        "speedup_ge_50x": {"value": round(speedup, 1), "threshold": TARGET_SPEEDUP,
                           "passed": bool(speedup >= TARGET_SPEEDUP)},
        "seconds_10k_128_lt_2": {"value": round(best, 3), "threshold": TARGET_SECONDS,
                                 "passed": bool(best < TARGET_SECONDS),
                                 "applies": args.n == 10000 and args.size == 128},
    }
    out = {
        "benchmark": "generate",
        "n": args.n, "size": args.size, "taxonomy": args.taxonomy,
        "vectorized": {"seconds_best": round(best, 4), "seconds_all": [round(t, 4) for t in times],
                       "maps_per_s": round(rate, 1)},
        "baseline": {"impl": "per-pixel Python loops (benchmarks.bench_generate.baseline_generate)",
                     "n": args.baseline_n, "seconds": round(base_s, 3), "maps_per_s": round(base_rate, 2),
                     "extrapolated_seconds_for_n": round(args.n / base_rate, 1)},
        "speedup": round(speedup, 1),
        "targets": targets,
        "passed": all(t["passed"] for t in targets.values()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "numpy": np.__version__},
    }
    print(json.dumps(out, indent=2))
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    if __package__ in (None, ""):  # run as a script: make the repo root importable
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.exit(main())
