"""Benchmark: a full-size LSWMD-shaped pickle (811,457 rows like the real release) through the pipeline's data stage.

Builds the table from real maps (``benchmarks.lswmd_shaped``: the labeled maps of ``--labeled``, then the maps of
``--unlabeled`` without labels, repeated until the table has ``--rows`` rows), then runs the training pipeline's
data stage on it (the ``prepare_data`` component's own function: guarded ingest, the pool sampled to ``pool_size``
evenly over lots, both datasets written) in a child process under ``/usr/bin/time -v``. Prints JSON: pickle size,
build time, the stage's wall time and peak RSS, labeled maps, pool size before and after sampling::

    python -m benchmarks.bench_scale --workdir /tmp/scale [--rows 811457] [--pool-size 20000] [--out F.json]

The baseline in the same run is the 6,848-row table of the real-data benchmark (623 labeled + 6,225 unlabeled).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "wm811k"


def stage_only(pkl: str, out: str, pool_size: int) -> None:
    """The data component's function on ``pkl``, artifacts under ``out`` (run in a child process)."""
    import os

    from kfp import dsl

    from waferflow.components.data import prepare_data

    def art(name):
        a = dsl.Dataset(name=name, uri=os.path.join(out, name), metadata={})
        a.path = os.path.join(out, name)
        return a

    ds, unl = art("dataset"), art("unlabeled")
    prepare_data.python_func(source=pkl, source_fingerprint="", n_maps=0, map_size=0, taxonomy="wm811k", seed=0,
                             dataset=ds, unlabeled=unl, pool_size=pool_size)
    print("RESULT " + json.dumps({"labeled": ds.metadata["n"], "pool_kept": unl.metadata["n"],
                                  "pool": unl.metadata.get("pool")}))


def _measure(pkl: Path, out: Path, pool_size: int) -> dict:
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "benchmarks.bench_scale", "--stage-only",
                        str(pkl), "--workdir", str(out), "--pool-size", str(pool_size)], cwd=REPO,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    text = p.stdout + p.stderr
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    res = re.search(r"^RESULT (.*)$", p.stdout, re.M)
    return {"exit": p.returncode, "wall_s": round(wall, 1), "peak_rss_mib": round(int(rss.group(1)) / 1024, 1)
            if rss else None, **(json.loads(res.group(1)) if res else {"error": text.strip().splitlines()[-3:]})}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labeled", type=Path, default=SHARED / "wm811k_train_1_split.npz")
    ap.add_argument("--unlabeled", type=Path, default=SHARED / "wm811k_train_10_split.npz")
    ap.add_argument("--rows", type=int, default=811457)
    ap.add_argument("--pool-size", type=int, default=20000)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--stage-only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    if a.stage_only:
        stage_only(a.stage_only, str(a.workdir), a.pool_size)
        return
    from benchmarks._report import emit
    from benchmarks.lswmd_shaped import write_lswmd_pickle

    a.workdir.mkdir(parents=True, exist_ok=True)
    result = {"command": " ".join(sys.argv)}
    for name, rows in (("baseline_6848_rows", 0), (f"full_{a.rows}_rows", a.rows)):
        pkl = a.workdir / f"{name}.pkl"
        t0 = time.perf_counter()
        info = write_lswmd_pickle(a.labeled, a.unlabeled, pkl, repeat_to=rows)
        build = time.perf_counter() - t0
        stage = _measure(pkl, a.workdir / f"{name}_stage", a.pool_size)
        result[name] = {"rows": info["rows"], "pickle_mib": round(pkl.stat().st_size / 2**20, 1),
                        "build_s": round(build, 1), "data_stage": stage}
    emit(result, a.out)


if __name__ == "__main__":
    main()
