"""One evaluator for every model form (PyTorch, ONNX FP32/INT8, TensorRT): metrics only.

``evaluate`` runs a predictor (``waferflow.predictors``: any callable float32 [B, C, S, S] -> logits [B, K],
made by ``create_predictor``) over a dataset and returns a plain dict; ``metrics_from_logits`` is the pure core.
The predictors and the batched loop live in ``waferflow.predictors``; their names are re-exported here for
older callers.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from waferflow.data.contract import WaferDataset
from waferflow.errors import DataError
from waferflow.predictors import Predictor, predict_dataset, spec_field
from waferflow.predictors import softmax as _softmax


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE with equal-width confidence bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, bins[1:-1], right=True), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def metrics_from_logits(y_true: np.ndarray, logits: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, balanced accuracy, macro-F1, ECE, per-class P/R/F1/support, confusion matrix.

    Args:
        y_true: int [N] class indices.
        logits: float [N, K] (logits or probabilities; softmax is applied to logits).
        class_names: K names.

    Returns:
        ``{"overall": {...}, "per_class": {name: {...}}, "confusion_matrix": [[...]], "class_names": [...]}``.
        Rows of the confusion matrix are true classes, columns predicted.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    y_true = np.asarray(y_true, dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    k = len(class_names)
    labels = np.arange(k)
    y_pred = logits.argmax(axis=1)
    probs = logits if np.allclose(logits.sum(1), 1.0) and (logits >= 0).all() else _softmax(logits)
    present = np.unique(y_true)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    overall = {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(present) else 0.0,
        # macro over the classes present in y_true, so an absent class does not count as F1 = 0
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "ece": expected_calibration_error(probs, y_true),
        "n": int(len(y_true)),
    }
    per_class = {
        name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, name in enumerate(class_names)
    }
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    return {
        "overall": overall,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": list(class_names),
    }


# --------------------------------------------------------------------------- the evaluator


def check_classes(ds: WaferDataset, spec: Any) -> None:
    """Raise DataError unless the dataset's class names are the model's, in the same order."""
    names = tuple(spec_field(spec, "class_names"))
    if tuple(ds.class_names) != names:
        raise DataError(
            f"dataset classes {list(ds.class_names)} differ from the model's {list(names)}; "
            "evaluate on data with the model's taxonomy (same names, same order)"
        )


def evaluate(predict: Predictor, ds: WaferDataset, spec: Any, batch_size: int = 256, form: str = "torch") -> dict:
    """Evaluate any model form on a labeled dataset with the one shared metric code.

    Args:
        predict: float32 [B, C, S, S] -> logits [B, K] (``waferflow.predictors.create_predictor``).
        ds: labeled WaferDataset with the model's class names.
        spec: the model's ModelSpec (or its dict); ``models.preprocess`` uses it.
        batch_size: maps per predictor call.
        form: a label stored in the result (``torch``, ``onnx_fp32``, ``onnx_int8``, ...).

    Returns:
        The ``metrics_from_logits`` dict plus ``"form"`` and ``"seconds"`` (wall time of prediction).

    Raises:
        DataError: unlabeled or empty data, or a class-name mismatch.
        ModelFormatError: the predictor returns logits of the wrong shape.
    """
    if not ds.labeled:
        raise DataError("evaluate needs labeled maps; the dataset has no 'labels'")
    check_classes(ds, spec)
    t0 = time.perf_counter()
    logits = predict_dataset(predict, ds, spec, batch_size, desc=f"evaluate {form}")
    seconds = time.perf_counter() - t0
    m = metrics_from_logits(ds.labels, logits, spec_field(spec, "class_names"))
    m["form"] = form
    m["seconds"] = float(seconds)
    return m
