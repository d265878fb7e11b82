"""The champion's reference data: features of its training maps, stored with the model version.

A reference is a folder (``drift_reference/`` by convention, next to the model files of a registered version)::

    drift_reference/
      reference.parquet   one row per reference map: the readable features + the champion's view
      pca.npz             the PCA fitted on the reference embeddings (plain arrays, never pickle)
      reference.json      summary: model identity, counts, feature means, predicted-class mix
"""

from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from waferflow.config import atomic_write_bytes, atomic_write_json
from waferflow.data.contract import WaferDataset
from waferflow.drift.features import READABLE_FEATURES, check_batch, map_features
from waferflow.drift.model_view import EmbeddingPCA, model_view
from waferflow.errors import DataError, ModelFormatError

REFERENCE_DIRNAME = "drift_reference"
REFERENCE_TABLE = "reference.parquet"
REFERENCE_PCA = "pca.npz"
REFERENCE_SUMMARY = "reference.json"
DEFAULT_MAX_ROWS = 5000


@dataclass(frozen=True)
class Reference:
    """A loaded reference: the feature table, the PCA and the summary."""

    frame: pd.DataFrame
    pca: EmbeddingPCA
    summary: dict[str, Any]
    path: Path


def _sample(ds: WaferDataset, max_rows: int, seed: int) -> WaferDataset:
    n = len(ds)
    if n <= max_rows:
        return ds
    return ds.subset(np.sort(np.random.default_rng(seed).choice(n, size=max_rows, replace=False)))


def build_reference_from_model(model: Any, spec: Any, train_ds: WaferDataset, out_dir: str | os.PathLike,
                               max_rows: int = DEFAULT_MAX_ROWS, seed: int = 0,
                               model_ref: str | None = None, holdout_ds: WaferDataset | None = None) -> Path:
    """Write the reference of ``model`` from its training data.

    The readable features do not depend on the model, but the champion's view does, in two ways that would make
    the reference unlike any new batch from the very same distribution: the model is over-confident on maps it
    was fitted on, and a PCA's components fit the rows they were fitted on better than fresh rows (with a
    1,280-wide embedding and a few hundred rows, a domain classifier then tells fresh maps from the reference at
    ROC AUC ~0.6). So the PCA is fitted on the training maps, and the reference rows are maps it was not fitted
    on: ``holdout_ds`` (the validation and test maps of the same training data) when given, otherwise a seeded
    half of ``train_ds`` that the PCA did not see (the model view of those rows is then still over-confident).

    Args:
        model: The champion (timm module).
        spec: Its ModelSpec.
        train_ds: The maps it was trained on.
        out_dir: The reference folder to write (created; files are written atomically, the summary last).
        max_rows: Cap on reference rows and on PCA rows (random samples, seeded).
        seed: Sampling seed.
        model_ref: How to name the model in the summary (a path or ``models:/`` URI).
        holdout_ds: Maps of the same training data that the model was not fitted on (val + test).

    Returns:
        ``out_dir`` as a Path.
    """
    from waferflow.drift.model_view import embed

    check_batch(train_ds, what="training data for the reference")
    if holdout_ds is not None:
        check_batch(holdout_ds, what="held-out training data for the reference")
        fit_ds, rows_ds, rows_source = train_ds, holdout_ds, "held-out maps of the training data (val + test)"
    else:
        if len(train_ds) < 4:
            raise DataError(f"training data for the reference has {len(train_ds)} maps; give at least 4 (better "
                            "hundreds) or pass held-out maps of the training data")
        perm = np.random.default_rng(seed).permutation(len(train_ds))
        half = len(train_ds) // 2
        fit_ds, rows_ds = train_ds.subset(np.sort(perm[:half])), train_ds.subset(np.sort(perm[half:]))
        rows_source = "half of the training maps (the PCA was fitted on the other half)"
    emb, _ = embed(model, spec, _sample(fit_ds, max_rows, seed))
    pca = EmbeddingPCA.fit(emb)
    ds = _sample(rows_ds, max_rows, seed)
    feats = map_features(ds)
    view, _ = model_view(model, spec, ds, pca=pca)
    frame = pd.concat([feats, view], axis=1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(out / REFERENCE_TABLE, buf.getvalue())
    pca.save(out / REFERENCE_PCA)
    summary = {
        "model": model_ref,
        "backbone": getattr(spec, "backbone", None),
        "class_names": list(spec.class_names),
        "input_size": int(spec.input_size),
        "weights_sha256": getattr(spec, "weights_sha256", None),
        "data_hash": getattr(spec, "data_hash", None),
        "n_rows": int(len(frame)),
        "n_source_maps": int(len(train_ds) + (len(holdout_ds) if holdout_ds is not None else 0)),
        "rows_source": rows_source,
        "pca_fitted_on": f"{min(len(fit_ds), max_rows)} training maps",
        "seed": int(seed),
        "readable_features": list(READABLE_FEATURES),
        "pca_components": int(pca.components.shape[0]),
        "pca_explained_variance": pca.explained_variance.tolist(),
        "feature_means": {c: float(frame[c].mean()) for c in READABLE_FEATURES},
        "pred_mix": {str(k): float(v) for k, v in frame["pred_class"].value_counts(normalize=True).items()},
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    atomic_write_json(out / REFERENCE_SUMMARY, summary)
    return out


def _as_dataset(d: WaferDataset | str | os.PathLike) -> WaferDataset:
    from waferflow.data.contract import load_dataset

    return d if isinstance(d, WaferDataset) else load_dataset(d)


def build_reference(model_dir: str | os.PathLike, train_ds: WaferDataset | str | os.PathLike,
                    out_dir: str | os.PathLike | None = None, max_rows: int = DEFAULT_MAX_ROWS,
                    seed: int = 0, holdout: list[WaferDataset | str | os.PathLike] | None = None) -> Path:
    """Write the drift reference of the model in ``model_dir`` from its training data.

    The registry stores the returned folder with the model version; by default it is
    ``<model_dir>/drift_reference``.

    Args:
        model_dir: A model directory (docs/ARCHITECTURE.md).
        train_ds: The training maps, or a path to their ``.npz``.
        out_dir: Where to write (default ``<model_dir>/drift_reference``).
        max_rows: Cap on reference rows.
        seed: Sampling seed.
        holdout: Held-out maps of the same training data (datasets or ``.npz`` paths, e.g. val and test): the
            reference rows (see :func:`build_reference_from_model`).
    """
    from waferflow.data.contract import concat_datasets
    from waferflow.models import load_model_dir

    model, spec = load_model_dir(model_dir)
    ds = _as_dataset(train_ds)
    held = concat_datasets([_as_dataset(h) for h in holdout]) if holdout else None
    out = Path(out_dir) if out_dir is not None else Path(model_dir) / REFERENCE_DIRNAME
    return build_reference_from_model(model, spec, ds, out, max_rows=max_rows, seed=seed, model_ref=str(model_dir),
                                      holdout_ds=held)


def load_reference(path: str | os.PathLike) -> Reference:
    """Load a reference folder.

    Raises:
        DataError: when the folder or one of its files is missing or unreadable, saying how to rebuild it.
    """
    p = Path(path)
    hint = ("build it from the champion's training data with "
            "`waferflow.drift.build_reference(model_dir, train.npz)` or `waferflow drift --build-reference`")
    if not p.is_dir():
        raise DataError(f"drift reference {p} does not exist; drift is judged against the champion's reference: {hint}")
    missing = [f for f in (REFERENCE_TABLE, REFERENCE_PCA, REFERENCE_SUMMARY) if not (p / f).is_file()]
    if missing:
        raise DataError(f"drift reference {p} lacks {', '.join(missing)}; {hint}")
    try:
        frame = pd.read_parquet(p / REFERENCE_TABLE)
        summary = json.loads((p / REFERENCE_SUMMARY).read_text())
        pca = EmbeddingPCA.load(p / REFERENCE_PCA)
    except (OSError, ValueError, ModelFormatError) as e:
        raise DataError(f"drift reference {p} is unreadable ({e}); {hint}") from None
    need = set(READABLE_FEATURES) | {"confidence", "entropy", "pred_class"}
    if not need <= set(frame.columns):
        raise DataError(f"drift reference {p} lacks columns {sorted(need - set(frame.columns))}; {hint}")
    if len(frame) == 0:
        raise DataError(f"drift reference {p} has no rows; {hint}")
    return Reference(frame=frame, pca=pca, summary=summary, path=p)
