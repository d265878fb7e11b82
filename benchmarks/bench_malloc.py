"""The CPU training loop with and without ``TrainConfig.keep_freed_memory`` (glibc keeps freed tensor memory).

The setting is process-wide, so each measurement is its own process: ``benchmarks/bench_dwgrad.py`` (one round of
the same full fine-tune of tf_efficientnet_lite0 from the offline ImageNet weights on synthetic seed20 maps) with
``--set keep_freed_memory=false`` (the baseline) and ``=true``, alternating, ``--rounds`` times each, so both see
the same machine load. Reports per variant the training loop's seconds (the median over the child's two trainings
and the rounds), the child's system time, minor page faults and peak RSS (``os.wait4``), and the speed-up of the
medians. Prints one JSON object.

    python benchmarks/bench_malloc.py --rounds 3 --epochs 2 --input-size 80
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import emit  # noqa: E402

HERE = Path(__file__).resolve().parent


def _child(setting: bool, args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, str(HERE / "bench_dwgrad.py"), "--n", str(args.n), "--epochs", str(args.epochs),
               "--rounds", "1", "--input-size", str(args.input_size), "--out", out.name,
               "--set", f"keep_freed_memory={str(setting).lower()}"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{' '.join(cmd)} failed")
        res = json.loads(Path(out.name).read_text())
    loops = [r["train_loop_seconds"] for v in res["runs"].values() for r in v]
    return {"train_loop_seconds": loops, "sys_seconds": ru.ru_stime, "user_seconds": ru.ru_utime,
            "minor_page_faults": ru.ru_minflt, "peak_rss_mib": ru.ru_maxrss / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--input-size", type=int, default=80)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    runs: dict[str, list[dict]] = {"baseline": [], "keep_freed_memory": []}
    for r in range(args.rounds):
        for name in runs:
            runs[name].append(_child(name != "baseline", args))
            print(f"{name} round {r}: {runs[name][-1]}", file=sys.stderr, flush=True)
    med = {k: statistics.median(s for x in v for s in x["train_loop_seconds"]) for k, v in runs.items()}
    summary = {k: {m: statistics.median(x[m] for x in v) for m in ("sys_seconds", "minor_page_faults", "peak_rss_mib")}
               for k, v in runs.items()}
    emit({"benchmark": "keep_freed_memory", "n": args.n, "epochs": args.epochs, "input_size": args.input_size,
          "median_train_loop_seconds": med, "speedup": med["baseline"] / med["keep_freed_memory"],
          "median_per_process": summary, "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
