"""`waferflow run --data FOLDER --unlabeled POOL` through kfp.local on tiny real maps: a PNG folder whose
``unlabeled/`` subfolder is part of the pool, joined with a labeled ``.npz`` whose labels are dropped; adaptive BN and
self-training read that pool, and the MLflow run records where it came from."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from waferflow.data.contract import load_dataset, save_dataset

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "wm811k_small.npz"


def _png_folder(root: Path, ds, labeled_idx, pool_idx) -> None:
    """Class subfolders (raw 0/1/2 grey levels) with ``labeled_idx``'s maps, ``unlabeled/`` with ``pool_idx``'s."""
    for i in labeled_idx:
        folder = root / ds.class_names[ds.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(ds.get(i).astype(np.uint8), mode="L").save(folder / f"{i}.png")
    (root / "unlabeled").mkdir(parents=True)
    for i in pool_idx:
        Image.fromarray(ds.get(i).astype(np.uint8), mode="L").save(root / "unlabeled" / f"{i}.png")


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_run_with_a_png_folder_and_a_separate_unlabeled_file(tmp_path, capsys):
    from mlflow import MlflowClient

    from waferflow.cli import main

    ds = load_dataset(FIXTURE)
    idx = np.arange(len(ds))
    _png_folder(tmp_path / "maps", ds, idx[idx % 3 != 2], idx[idx % 6 == 2])  # 134 labeled, 33 in unlabeled/
    save_dataset(ds.subset(idx[idx % 6 == 5]), tmp_path / "more.npz")  # 33 maps, labeled: the labels are dropped
    wd = tmp_path / "wd"
    rc = main(["run", "--profile", "tiny", "--data", str(tmp_path / "maps"), "--unlabeled", str(tmp_path / "more.npz"),
               "--workdir", str(wd), "--json", "--set", "map_size=32", "--set", "strategies=[full_finetune]",
               "--set", "self_training={rounds: 1, threshold: 0.2, train: {strategy: full_finetune, epochs: 1}}",
               "--set", "label_queue=5"])
    out = capsys.readouterr().out
    assert rc == 0, out
    record = json.loads(out[out.index("\n{") + 1:])
    stages = [s for s in record["stages"] if not s.get("cached")]
    (data,) = [s for s in stages if s["stage"] == "data"]
    assert data["n"] == 134 and data["n_unlabeled"] == 66  # 33 from unlabeled/ + 33 from more.npz
    (st,) = [s for s in stages if s["stage"] == "self_train"]
    assert st["status"] in ("student", "teacher")
    rep = json.loads(next(p for p in wd.rglob("self_training.json") if p.parent.name == "report").read_text())
    assert rep["pool"] == 66 and rep["per_round"][0]["unlabeled_maps"] == 66
    pool = load_dataset(next(wd.rglob("prepare-data/unlabeled/data.npz")))
    assert not pool.labeled and len(pool) == 66
    client = MlflowClient(f"sqlite:///{wd / 'mlflow.db'}")
    (parent,) = [r for r in client.search_runs([client.get_experiment_by_name("waferflow").experiment_id])
                 if "kfp_run" in r.data.tags]
    assert parent.data.params["unlabeled_source"] == str((tmp_path / "more.npz").resolve())
