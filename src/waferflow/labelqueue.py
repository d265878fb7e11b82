"""Labels where they help most: a queue of unlabeled maps for an engineer to label, and taking the labels in.

:func:`build_queue` runs the trained model over the unlabeled maps, keeps the least confident ones (smallest
margin between the two most likely classes) as a candidate pool, and picks from it a set spread over the
model's embedding (greedy k-center on the pooled features: each pick is the pooled map farthest from the ones
already picked), so the queue is not twenty copies of one confusing pattern. :func:`write_queue` writes
``queue.csv`` (one row per map with an empty ``label`` column to fill in), ``queue.png`` (the maps as a sheet)
and ``queue.json`` (which model and which unlabeled file, by hash). :func:`merge_labels` takes the filled CSV
back: the labeled maps join the labeled dataset and leave the unlabeled one, so the next ``waferflow run --data``
trains on them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from waferflow.config import atomic_write_bytes, atomic_write_json, atomic_write_text
from waferflow.data.contract import WaferDataset, concat_datasets, dataset_hash
from waferflow.errors import ConfigError, DataError, ModelFormatError

CSV_FIELDS = ("rank", "index", "height", "width", "predicted", "confidence", "margin", "label")


@dataclass(frozen=True)
class LabelQueue:
    """The chosen maps, best first: their rows in the unlabeled dataset and what the model thinks of them."""

    indices: np.ndarray
    predicted: list[str]
    confidence: np.ndarray
    margin: np.ndarray
    pool_size: int
    unlabeled_sha256: str
    model: str


def embed(model_dir: str | Path, ds: WaferDataset, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, object]:
    """Softmax probabilities [N, K] and pooled features [N, D] (timm's pre-logits) of every map.

    Raises:
        ModelFormatError: The model has no timm ``forward_features``/``forward_head`` to take features from.
    """
    import torch

    from waferflow.models import load_model_dir
    from waferflow.predictors import batches_for, penultimate_features, softmax

    model, spec = load_model_dir(model_dir)
    if not all(hasattr(model, a) for a in ("forward_features", "forward_head", "get_classifier")):
        raise ModelFormatError(f"{model_dir}: {type(model).__name__} has no forward_features/forward_head; the "
                               "label queue needs a timm backbone to take embeddings from")
    probs, feats = np.empty((len(ds), spec.num_classes), np.float32), None
    with torch.inference_mode():
        for idx, x in batches_for(ds, spec, batch_size, desc="label queue"):
            f = penultimate_features(model, torch.from_numpy(x))
            logits = model.get_classifier()(f)
            if feats is None:
                feats = np.empty((len(ds), f.shape[1]), np.float32)
            feats[idx] = f.numpy()
            probs[idx] = softmax(logits.numpy())
    return probs, feats, spec


def k_center(features: np.ndarray, n: int, first: int = 0) -> np.ndarray:
    """Greedy k-center: ``n`` rows of ``features``, each the farthest (cosine) from those already picked."""
    from sklearn.metrics import pairwise_distances

    f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    chosen = [first]
    dist = pairwise_distances(f, f[[first]], metric="euclidean").ravel()
    while len(chosen) < min(n, len(f)):
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, pairwise_distances(f, f[[nxt]], metric="euclidean").ravel())
    return np.asarray(chosen, dtype=np.int64)


def build_queue(model_dir: str | Path, unlabeled: WaferDataset, n: int = 50, pool_factor: float = 4.0,
                batch_size: int = 256) -> LabelQueue:
    """Pick ``n`` unlabeled maps whose labels would help most: uncertain, and spread over the embedding.

    Args:
        model_dir: The trained model (a timm backbone).
        unlabeled: Unlabeled maps (labels, if any, are never read).
        n: Maps to queue.
        pool_factor: The candidate pool is the ``pool_factor * n`` maps with the smallest margin.
        batch_size: Maps per forward pass.

    Raises:
        ConfigError: ``n`` < 1 or ``pool_factor`` < 1. DataError: no unlabeled maps.
    """
    if n < 1 or pool_factor < 1:
        raise ConfigError(f"the label queue needs n >= 1 and pool_factor >= 1 (got n={n}, pool_factor={pool_factor})")
    if len(unlabeled) == 0:
        raise DataError("the label queue needs unlabeled maps; the unlabeled dataset is empty")
    probs, feats, spec = embed(model_dir, unlabeled, batch_size)
    top2 = np.sort(probs, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    pool = np.argsort(margin, kind="stable")[: max(n, int(round(pool_factor * n)))]
    picked = pool[k_center(feats[pool], n)]  # starts from the least confident map
    return LabelQueue(indices=picked, predicted=[spec.class_names[k] for k in probs[picked].argmax(1)],
                      confidence=probs[picked].max(1), margin=margin[picked], pool_size=len(pool),
                      unlabeled_sha256=dataset_hash(unlabeled), model=str(model_dir))


def write_queue(queue: LabelQueue, unlabeled: WaferDataset, out_dir: str | Path, class_names: list[str]) -> dict:
    """Write ``queue.csv``, ``queue.png`` and ``queue.json`` into ``out_dir`` (each atomically).

    Returns:
        The ``queue.json`` content.
    """
    out = Path(out_dir)
    png = _sheet_png(queue, unlabeled)  # everything is rendered before the first file is written
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_FIELDS)
    shapes = unlabeled.map_shapes()
    for r, i in enumerate(queue.indices):
        w.writerow([r + 1, int(i), int(shapes[i][0]), int(shapes[i][1]), queue.predicted[r],
                    f"{queue.confidence[r]:.4f}", f"{queue.margin[r]:.4f}", ""])
    info = {"n": int(len(queue.indices)), "pool_size": queue.pool_size, "unlabeled_maps": len(unlabeled),
            "unlabeled_sha256": queue.unlabeled_sha256, "model": queue.model, "class_names": list(class_names),
            "how": "fill the 'label' column with one of class_names (leave it empty to skip a map), then "
                   "`waferflow labels merge --queue queue.csv --unlabeled UNLABELED.npz --data LABELED.npz "
                   "--out NEW.npz`"}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "queue.csv", buf.getvalue())
    atomic_write_bytes(out / "queue.png", png)
    atomic_write_json(out / "queue.json", info)
    return info


def _sheet_png(queue: LabelQueue, unlabeled: WaferDataset, cols: int = 10) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    n = len(queue.indices)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows), squeeze=False)
    cmap = ListedColormap(["#ffffff", "#9ecae1", "#d62728"])  # off-wafer, pass, fail
    for ax in axes.ravel():
        ax.axis("off")
    for r, i in enumerate(queue.indices):
        ax = axes.ravel()[r]
        ax.imshow(unlabeled.get(int(i)), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"#{r + 1} row {int(i)}\n{queue.predicted[r]} {queue.confidence[r]:.2f}", fontsize=6)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def read_labels(queue_csv: str | Path, class_names: list[str], n_unlabeled: int) -> dict[int, int]:
    """``{row of the unlabeled file: class index}`` from a filled queue CSV (empty labels are skipped).

    Raises:
        DataError: A missing column, an unknown class, a row out of range or listed twice (naming the CSV line).
    """
    text = Path(queue_csv).read_text()
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"index", "label"} <= set(reader.fieldnames):
        raise DataError(f"{queue_csv}: needs the columns 'index' and 'label' (the file written by the label queue)")
    out: dict[int, int] = {}
    for line, row in enumerate(reader, start=2):
        label = (row.get("label") or "").strip()
        if not label:
            continue
        if label not in class_names:
            raise DataError(f"{queue_csv} line {line}: label {label!r} is not a class; use one of {class_names}")
        try:
            i = int(row["index"])
        except (TypeError, ValueError):
            raise DataError(f"{queue_csv} line {line}: index {row['index']!r} is not a row number") from None
        if not 0 <= i < n_unlabeled:
            raise DataError(f"{queue_csv} line {line}: index {i} is outside the unlabeled file (0..{n_unlabeled - 1}); "
                            "pass the unlabeled file the queue was built from")
        if i in out:
            raise DataError(f"{queue_csv} line {line}: index {i} is labeled twice")
        out[i] = class_names.index(label)
    return out


def merge_labels(queue_csv: str | Path, unlabeled: WaferDataset, labeled: WaferDataset
                 ) -> tuple[WaferDataset, WaferDataset, dict]:
    """Move the maps labeled in ``queue_csv`` from ``unlabeled`` into ``labeled``.

    The queue's ``queue.json`` (beside the CSV), when present, must name this unlabeled file's hash.

    Returns:
        ``(new labeled dataset, remaining unlabeled dataset, report)``.

    Raises:
        DataError: Bad CSV content, no label filled in, or a different unlabeled file than the queue's.
    """
    meta = Path(queue_csv).with_name("queue.json")
    if meta.is_file():
        want = json.loads(meta.read_text()).get("unlabeled_sha256")
        got = dataset_hash(unlabeled)
        if want and want != got:
            raise DataError(f"{queue_csv} was built from unlabeled maps with hash {want[:12]}, this file has "
                            f"{got[:12]}; pass the unlabeled file the queue was built from")
    names = list(labeled.class_names)
    labels = read_labels(queue_csv, names, len(unlabeled))
    if not labels:
        raise DataError(f"{queue_csv}: no row has a label yet; fill the 'label' column first")
    idx = np.asarray(sorted(labels), dtype=np.int64)
    new = replace(unlabeled.subset(idx), labels=np.asarray([labels[i] for i in idx], np.int64),
                  class_names=tuple(names), lots=None, meta=dict(labeled.meta))
    keep = np.setdiff1d(np.arange(len(unlabeled)), idx)
    merged = concat_datasets([labeled, new])
    report = {"added": int(len(idx)), "labeled_before": len(labeled), "labeled_after": len(merged),
              "unlabeled_left": int(len(keep)),
              "added_per_class": {n: int(c) for n, c in zip(names, np.bincount(new.labels, minlength=len(names)))}}
    return merged, unlabeled.subset(keep), report
