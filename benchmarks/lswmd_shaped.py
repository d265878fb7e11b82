"""Write an ``LSWMD.pkl``-shaped pickle (the raw WM-811K release's columns) from labeled maps and unlabeled maps.

Columns as in the release: ``waferMap`` (2-D uint8 array), ``dieSize``, ``lotName``, ``waferIndex``,
``trianTestLabel`` and ``failureType`` (nested arrays such as ``[['Center']]``; unlabeled rows hold empty arrays).
Lots are made up (25 wafers a lot, as in the release), since the shared real-map files carry none; the rows are
shuffled first (seeded), because those files are sorted by class and lots cut from sorted rows would each hold one
class (a lot-aware split would then put whole classes into validation or test).

    python -m benchmarks.lswmd_shaped --labeled A.npz [--unlabeled B.npz] [--repeat-to N] --out LSWMD_like.pkl

``--repeat-to N`` repeats the unlabeled maps (then the labeled ones) until the table has N rows (the scale test:
811,457 rows like the real file). The pickle is written with the installed pandas (a pickle of a DataFrame, as
the release is; ``waferflow ingest`` reads it with its guarded unpickler).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _maps(path: Path):
    from waferflow.data.contract import load_dataset

    ds = load_dataset(path)
    return ds, list(ds)


def write_lswmd_pickle(labeled: Path, unlabeled: Path | None, out: Path, repeat_to: int = 0, seed: int = 0) -> dict:
    """Write the table; returns counts. Unlabeled rows never carry labels (the source labels are dropped)."""
    import pandas as pd

    lab_ds, lab_maps = _maps(labeled)
    names = lab_ds.class_names
    rows = [(m, names[int(y)]) for m, y in zip(lab_maps, lab_ds.labels)]
    unl_maps = _maps(unlabeled)[1] if unlabeled else []
    rows += [(m, None) for m in unl_maps]
    base = len(rows)
    if repeat_to and repeat_to > base:
        pool = unl_maps or lab_maps
        rows += [(pool[i % len(pool)], None) for i in range(repeat_to - base)]
    order = np.random.default_rng(seed).permutation(len(rows))
    rows = [rows[i] for i in order]
    empty = np.zeros((0, 0))
    table = {
        "waferMap": [m.astype(np.uint8) for m, _ in rows],
        "dieSize": [float(np.count_nonzero(m)) for m, _ in rows],
        "lotName": [f"lot{1 + k // 25}" for k in range(len(rows))],
        "waferIndex": [float(1 + k % 25) for k in range(len(rows))],
        "trianTestLabel": [np.array([["Training"]]) if y else empty for _, y in rows],
        "failureType": [np.array([[y]]) if y else empty for _, y in rows],
    }
    df = pd.DataFrame(table)
    tmp = out.with_name(out.name + ".tmp")
    df.to_pickle(tmp)
    tmp.replace(out)
    return {"rows": len(rows), "labeled": len(lab_maps), "unlabeled": len(rows) - len(lab_maps), "out": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labeled", required=True, type=Path)
    ap.add_argument("--unlabeled", type=Path, default=None, help="maps whose labels are removed")
    ap.add_argument("--repeat-to", type=int, default=0)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args(argv)
    print(json.dumps(write_lswmd_pickle(a.labeled, a.unlabeled, a.out, a.repeat_to)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
