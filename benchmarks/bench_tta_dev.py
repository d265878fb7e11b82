"""Does test-time augmentation pay on a development slice? One registered model, scored plain and with TTA.

The choice of the ``real`` profile's deployed form (``onnx_fp32_tta``) was made with this command, on a seeded
random slice of ``train_10`` (the real-data benchmark's unlabeled pool, whose labels no stage reads), never on
``wm811k_val_data.npz``::

    python -m benchmarks.bench_tta_dev --tracking-uri sqlite:////tmp/final/run/mlflow.db --out tta_dev.json

Prints JSON: both forms' accuracy, macro-F1 and balanced accuracy, and the difference (TTA minus plain).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "wm811k"


def main(argv: list[str] | None = None) -> int:
    from waferflow.cli import main as waferflow
    from waferflow.data.contract import load_dataset, save_dataset

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracking-uri", required=True, help="the MLflow store of a `waferflow run --data` run")
    ap.add_argument("--model", default="models:/wafer-defect-classifier@champion")
    ap.add_argument("--data", default=str(SHARED / "wm811k_train_10_split.npz"), help="labeled maps to slice")
    ap.add_argument("--n", type=int, default=2000, help="maps in the slice (default 2000)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--form", default="onnx_fp32", help="the plain form; TTA is the same form with --tta")
    ap.add_argument("--out", help="also write the JSON here")
    a = ap.parse_args(argv)
    ds = load_dataset(a.data, require_labels=True)
    pick = np.sort(np.random.default_rng(a.seed).permutation(len(ds))[:a.n])
    res = {"model": a.model, "data": a.data, "n": int(len(pick)), "seed": a.seed}
    with tempfile.TemporaryDirectory(prefix="wf-tta-dev-") as td:
        dev = Path(td) / "dev.npz"
        save_dataset(ds.subset(pick), dev)
        for name, extra in (("plain", []), ("tta", ["--tta"])):
            out = Path(td) / name
            code = waferflow(["evaluate", "--model", a.model, "--tracking-uri", a.tracking_uri, "--data", str(dev),
                              "--out", str(out), "--form", a.form, "--gradcam-per-class", "0", *extra])
            if code:
                return code
            m = json.loads((out / "metrics.json").read_text())
            res[name] = {"form": m["form"], **{k: m["overall"][k] for k in ("accuracy", "macro_f1",
                                                                               "balanced_accuracy")}}
    res["tta_minus_plain"] = {k: res["tta"][k] - res["plain"][k] for k in ("accuracy", "macro_f1",
                                                                            "balanced_accuracy")}
    text = json.dumps(res, indent=2)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
