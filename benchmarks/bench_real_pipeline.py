"""Benchmark: the real-data recipe through the whole pipeline, as a new fab would run it.

Builds an ``LSWMD.pkl``-shaped pickle (``benchmarks.lswmd_shaped``): the maps of ``--labeled`` with their labels,
the maps of ``--unlabeled`` with theirs removed. Runs ``waferflow run --data THAT.pkl`` (the ``real`` profile plus any
``--set``) in a fresh workdir under ``/usr/bin/time -v``, then scores the registered version with the acceptance
command ``waferflow evaluate --model models:/NAME@champion --data SCORE.npz`` (the form its gates deployed; the latest
version when nothing was promoted). The score maps are never seen by the run.

Choosing a recipe: ``--dev N`` takes N random maps (seeded; ``--dev-seed S`` draws another slice) of ``--unlabeled``
out of the pool and scores on them (``train_10`` is the development split; ``--dev-from labeled`` takes them out of
``--labeled`` instead, for the more-labels case); the final recipe is scored on ``wm811k_val_data.npz`` once::

    python -m benchmarks.bench_real_pipeline --dev 1500 --workdir /tmp/dev --out dev.json
    python -m benchmarks.bench_real_pipeline --workdir /tmp/final --out final.json        # val_data, once

Data default to ``../shared/data/wm811k/`` relative to the project. Prints one JSON object: wall time, peak RSS,
stage seconds, the champion and its metrics on the score maps, the self-training and source-model reports.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "wm811k"
MODEL = "wafer-defect-classifier"


def _wf(*args: str, log: Path) -> tuple[int, float, float]:
    """Run ``python -m waferflow ARGS`` under /usr/bin/time -v; returns (exit code, wall s, peak RSS MiB)."""
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.call(["/usr/bin/time", "-v", sys.executable, "-m", "waferflow", *args], stdout=f,
                             stderr=subprocess.STDOUT, cwd=REPO)
    text = log.read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return rc, time.perf_counter() - t0, int(m.group(1)) / 1024 if m else float("nan")


def _draw_labels(labeled: Path, unlabeled: Path, seed: int, wd: Path) -> tuple[Path, Path]:
    """Another few-label slice: as many maps per class as ``labeled`` holds, drawn (seeded) from ``unlabeled``;
    the rest of ``unlabeled`` and all of ``labeled`` become the pool. Returns (labeled file, pool file)."""
    import numpy as np

    from waferflow.data.contract import concat_datasets, load_dataset, save_dataset

    lab_ds, unl_ds = load_dataset(labeled, require_labels=True), load_dataset(unlabeled, require_labels=True)
    if tuple(lab_ds.class_names) != tuple(unl_ds.class_names):
        raise SystemExit(f"--draw-labels needs the same classes in {labeled} and {unlabeled}")
    rng = np.random.default_rng(seed)
    counts = np.bincount(lab_ds.labels, minlength=len(lab_ds.class_names))
    have = np.bincount(unl_ds.labels, minlength=len(counts))
    short = [f"{c}: {n} needed, {h} there" for c, n, h in zip(lab_ds.class_names, counts, have) if h < n]
    if short:
        raise SystemExit(f"--draw-labels: {unlabeled} holds too few maps of {', '.join(short)}; draw from a larger file")
    take = np.sort(np.concatenate([rng.choice(np.flatnonzero(unl_ds.labels == c), n, replace=False)
                                   for c, n in enumerate(counts)]))
    rest = np.setdiff1d(np.arange(len(unl_ds)), take)
    out_lab, out_pool = wd / "labeled_drawn.npz", wd / "pool_drawn.npz"
    save_dataset(unl_ds.subset(take), out_lab)
    save_dataset(concat_datasets([unl_ds.subset(rest), lab_ds]), out_pool)
    return out_lab, out_pool


def dev_split(n: int, n_dev: int, seed: int = 0):
    """(kept, dev) sorted row indices: ``n_dev`` seeded random rows of ``n`` held out as dev maps. Seed 0 is the
    draw every dev figure before ``--dev-seed`` used."""
    import numpy as np

    if not 0 < n_dev < n:
        raise SystemExit(f"--dev {n_dev}: needs between 1 and {n - 1} maps (the file holds {n})")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[n_dev:]), np.sort(order[:n_dev])


def _data(a, wd: Path) -> tuple[Path, Path]:
    from waferflow.data.contract import load_dataset, save_dataset

    from benchmarks.lswmd_shaped import write_lswmd_pickle

    lab, unl, score = a.labeled, a.unlabeled, a.score
    if a.draw_labels is not None:
        lab, unl = _draw_labels(a.labeled, a.unlabeled, a.draw_labels, wd)
    if a.dev:  # a seeded random slice: the shared files are sorted by class, so their tail is a few classes
        src = load_dataset(unl if a.dev_from == "unlabeled" else lab)
        keep, dev = dev_split(len(src), a.dev, a.dev_seed)
        rest = wd / ("pool.npz" if a.dev_from == "unlabeled" else "labeled.npz")
        save_dataset(src.subset(keep), rest)
        save_dataset(src.subset(dev), wd / "dev.npz")
        score = wd / "dev.npz"
        if a.dev_from == "unlabeled":
            unl = rest
        else:
            lab = rest
    pkl = wd / "LSWMD_like.pkl"
    write_lswmd_pickle(lab, unl, pkl, a.repeat_to)
    return pkl, score


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--labeled", type=Path, default=SHARED / "wm811k_train_1_split.npz")
    ap.add_argument("--unlabeled", type=Path, default=SHARED / "wm811k_train_10_split.npz")
    ap.add_argument("--score", type=Path, default=SHARED / "wm811k_val_data.npz")
    ap.add_argument("--dev", type=int, default=0,
                    help="score on N seeded random maps of --unlabeled (see --dev-from), kept out of the run")
    ap.add_argument("--dev-seed", type=int, default=0, help="seed of the dev draw (0: the draw of every earlier figure)")
    ap.add_argument("--dev-from", choices=("unlabeled", "labeled"), default="unlabeled",
                    help="the file the dev maps come out of (labeled: fewer labels, the more-labels case)")
    ap.add_argument("--draw-labels", type=int, default=None, metavar="SEED",
                    help="another few-label slice: draw as many maps per class as --labeled holds from --unlabeled "
                         "(seeded); --labeled's maps join the pool")
    ap.add_argument("--repeat-to", type=int, default=0, help="repeat maps until the table has N rows (scale)")
    ap.add_argument("--workdir", type=Path, required=True, help="a fresh folder for the run")
    ap.add_argument("--set", action="append", default=[], help="profile override key=value (repeatable)")
    ap.add_argument("--no-score", action="store_true", help="run only (the scale test)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from benchmarks._report import emit

    wd = a.workdir.resolve()
    if wd.exists() and any(wd.iterdir()):
        raise SystemExit(f"{wd} is not empty; give a fresh --workdir (the run must start from nothing)")
    wd.mkdir(parents=True, exist_ok=True)
    pkl, score = _data(a, wd)
    sets = [x for s in a.set for x in ("--set", s)]
    rc, wall, rss = _wf("run", "--data", str(pkl), "--workdir", str(wd / "run"), *sets, log=wd / "run.log")
    result: dict = {"command": " ".join(sys.argv), "run_exit": rc, "run_wall_s": round(wall, 1),
                    "run_peak_rss_mib": round(rss, 1), "score_data": str(score)}
    runs = sorted((wd / "run").glob("runs/*/run.json"))
    if runs:
        rec = json.loads(runs[-1].read_text())
        result["stages_s"] = {}
        for s in rec["stages"]:
            key = s["stage"] + (f":{s['candidate']}" if s.get("candidate") else "")
            result["stages_s"][key] = round(result["stages_s"].get(key, 0) + float(s.get("seconds", 0)), 1)
        summary = rec.get("summary") or json.loads((runs[-1].parent / "summary.json").read_text())
        result["selected"] = summary.get("candidates", {}).get("best")
        result["version"], result["gates_passed"] = summary.get("version"), summary.get("gates", {}).get("passed")
        result["own_test"] = summary.get("test")
        result["host"] = rec.get("host")  # the CPU it trained on: another CPU trains another model (waferflow.host)
        result["stage_notes"] = {s["stage"]: {k: v for k, v in s.items() if k in ("note", "reused", "pretrained_now",
                                                                                  "status", "chosen", "kept", "pool",
                                                                                  "validation")}
                                 for s in rec["stages"]
                                 if s["stage"] in ("source_model", "self_train", "data", "prior_correction")}
    if rc == 0 and not a.no_score:
        ref = f"models:/{MODEL}@champion" if result.get("gates_passed") else f"models:/{MODEL}/{result.get('version')}"
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{wd / 'run' / 'mlflow.db'}"
        erc, ewall, _ = _wf("evaluate", "--model", ref, "--data", str(score), "--out", str(wd / "eval"),
                            log=wd / "evaluate.log")
        result["evaluate"] = {"model": ref, "exit": erc, "wall_s": round(ewall, 1)}
        if erc == 0:
            m = json.loads((wd / "eval" / "metrics.json").read_text())
            result["score"] = {k: m["overall"][k] for k in ("accuracy", "macro_f1", "balanced_accuracy")
                               if k in m["overall"]}
            result["score"].update(form=m.get("form"), n=m["overall"].get("n", m.get("n")),
                                   per_class_recall={k: v.get("recall") for k, v in m.get("per_class", {}).items()})
    emit(result, a.out)


if __name__ == "__main__":
    main()
