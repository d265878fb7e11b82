"""From a drift decision to a training run: the new maps' way into the next model.

* Labeled new maps join the training data (``retrain_data.npz``: the base training data, when given, plus the
  new maps).
* Unlabeled new maps go to adaptive BN: the champion's BN statistics are re-estimated on them and the adapted
  champion (``adapted_champion/``) becomes the retrain's pretrained source. They are also listed "to label", and
  when the retrain has data of its own they are its unlabeled pool (``retrain_pool.npz``: self-training and the
  label queue read it).

This module only writes the retrain's inputs: ``waferflow.drift.check.run_drift_check`` hands the plan to a
launcher (``waferflow.cli.drift.make_launcher``: kfp.local through ``run_local``, or a cluster through
``submit_training``), so it never imports kfp.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from waferflow.data.contract import WaferDataset, concat_datasets, load_dataset, save_dataset
from waferflow.data.pool import join_pools
from waferflow.errors import DataError


@dataclass
class Batch:
    """A batch of new maps split by whether they carry labels."""

    labeled: WaferDataset | None
    unlabeled: WaferDataset | None
    source: str

    @property
    def all_maps(self) -> WaferDataset:
        """Every map (labels dropped when only part of the batch has them)."""
        parts = [d for d in (self.labeled, self.unlabeled) if d is not None and len(d)]
        if not parts:
            raise DataError(f"{self.source} holds no wafer maps; pass a file with at least one map")
        if len(parts) == 1:
            return parts[0]
        return join_pools(parts[0].class_names, *parts)


def load_batch(path: str | os.PathLike) -> Batch:
    """Read new maps: a dataset ``.npz`` (either layout, labeled or not) or a WM-811K ``LSWMD.pkl`` (read safely).

    Raises:
        DataError: a missing, unreadable or invalid file.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"--current {p} does not exist; give a .npz of wafer maps or an LSWMD.pkl")
    if p.suffix == ".pkl":
        from waferflow.data.ingest import ingest_lswmd

        res = ingest_lswmd(p)
        main = res.dataset
        if main.labeled:
            return Batch(labeled=main, unlabeled=res.unlabeled, source=str(p))
        return Batch(labeled=None, unlabeled=main, source=str(p))
    if p.suffix != ".npz":
        raise DataError(f"--current {p}: unsupported file type {p.suffix!r}; give a .npz or an LSWMD.pkl")
    _refuse_empty_npz(p)
    ds = load_dataset(p)
    return Batch(labeled=ds if ds.labeled else None, unlabeled=None if ds.labeled else ds, source=str(p))


def _refuse_empty_npz(p: Path) -> None:
    # An empty batch gets its own clear message (before the contract's validation trips on the empty shape).
    try:
        with np.load(p, allow_pickle=False) as z:
            key = "maps" if "maps" in z.files else "shapes" if "shapes" in z.files else None
            n = None if key is None else z[key].shape[0]
    except Exception:  # unreadable: load_dataset says why
        return
    if n == 0:
        raise DataError(f"--current {p} holds no wafer maps; pass a file with at least one map")


@dataclass
class RetrainPlan:
    """What the retrain gets: its data (\"\" = the profile's default), its pretrained source (\"\" = default) and,
    with data, the new unlabeled maps as its pool (\"\" = none); ``drift_run`` and ``tracking_uri`` name the drift
    decision's MLflow run, whose artifacts carry these files to a cluster's pods (\"\" = not logged)."""

    data: str = ""
    pretrained: str = ""
    unlabeled: str = ""
    notes: list[str] = field(default_factory=list)
    drift_run: str = ""
    tracking_uri: str = ""


def plan_retrain(batch: Batch, model: Any, spec: Any, out_dir: str | os.PathLike,
                 train_data: str | os.PathLike | None = None) -> RetrainPlan:
    """Write the retrain's inputs under ``out_dir`` and say what they are.

    Args:
        batch: The new maps.
        model: The champion (BN-adapted in a copy when there are unlabeled maps).
        spec: Its spec.
        out_dir: The drift output folder.
        train_data: The base training data (``.npz``) the labeled new maps join; None = the new maps alone.
    """
    import copy

    from waferflow.models import save_model_dir
    from waferflow.train.adapt import adapt_bn

    out = Path(out_dir)
    plan = RetrainPlan()
    if batch.labeled is not None and len(batch.labeled):
        parts = []
        if train_data:
            parts.append(load_dataset(train_data, require_labels=True))
        parts.append(batch.labeled)
        joined = concat_datasets(parts) if len(parts) > 1 else parts[0]
        path = out / "retrain_data.npz"
        save_dataset(joined, path, source=f"drift retrain: {train_data or ''} + {batch.source}")
        plan.data = str(path)
        plan.notes.append(f"{len(batch.labeled)} labeled new maps join the training data ({len(joined)} maps) -> {path}")
    elif train_data:
        plan.data = str(Path(train_data).resolve())
    if batch.unlabeled is not None and len(batch.unlabeled):
        adapted = copy.deepcopy(model)
        maps = batch.unlabeled.resized(int(spec.input_size))
        rep = adapt_bn(adapted, spec, maps)
        adir = out / "adapted_champion"
        save_model_dir(adapted, spec, adir)
        plan.pretrained = str(adir)
        plan.notes.append(f"{len(batch.unlabeled)} unlabeled new maps re-estimated the champion's BN statistics "
                          f"({rep['n_layers']} layers) -> {adir}, the retrain's starting weights; they are listed "
                          "to label in to_label.csv")
        if plan.data:  # a run on one's own maps: they are its pool too (self-training, the label queue)
            pool = out / "retrain_pool.npz"
            save_dataset(batch.unlabeled, pool, source=f"drift retrain pool: {batch.source}")
            plan.unlabeled = str(pool)
            plan.notes.append(f"they are also the retrain's unlabeled pool -> {pool}")
    return plan
