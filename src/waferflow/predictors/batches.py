"""Batched inference: the one loop that runs a model, or any predictor, over maps in fixed-size batches.

A *predictor* is any callable that maps a float32 array [B, C, S, S] (already preprocessed for the model) to
logits [B, K]. ``batches_for`` yields a dataset's maps preprocessed as the model's spec says,
``predict_dataset`` runs a predictor over them, ``predict_batches`` runs any function over consecutive slices
of an in-memory array or tensor, and ``penultimate_features`` / ``features_and_logits`` read a timm model's
pre-logit embedding.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator, Mapping, TypeVar

import numpy as np

from waferflow.config import progress_enabled
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError, ModelFormatError

Predictor = Callable[[np.ndarray], np.ndarray]
T = TypeVar("T")


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a numpy [N, K] array (max-subtracted)."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def spec_field(spec: Any, key: str) -> Any:
    """Read ``key`` from a ModelSpec (attribute) or a plain dict (item)."""
    if isinstance(spec, Mapping):
        if key not in spec:
            raise ModelFormatError(f"model spec has no '{key}'; re-save the model with save_model_dir")
        return spec[key]
    if not hasattr(spec, key):
        raise ModelFormatError(f"model spec has no '{key}'; re-save the model with save_model_dir")
    return getattr(spec, key)


def _preprocess(maps: np.ndarray, spec: Any) -> np.ndarray:
    from waferflow.models import preprocess

    return preprocess(maps, spec)


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")


def _progress(it: Iterable[T], total: int, desc: str | None, progress: bool | None) -> Iterable[T]:
    if desc is None or not progress_enabled(progress):
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="batch")


def batches_for(ds: WaferDataset, spec: Any, batch_size: int = 256, indices: np.ndarray | None = None,
                desc: str | None = None, progress: bool | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, x)`` with ``x`` = ``models.preprocess`` of each batch (float32 [B, C, S, S]).

    Variable-size maps are first resized (nearest) to the model's input size, so every form sees the
    bytes that ``preprocess`` makes of them. With ``desc`` a tqdm bar is shown (unless progress is off).
    """
    _check_batch_size(batch_size)
    size = int(spec_field(spec, "input_size"))
    idx_all = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    starts = range(0, len(idx_all), batch_size)
    for a in _progress(starts, len(starts), desc, progress):
        idx = idx_all[a:a + batch_size]
        x = _preprocess(ds.resized(size, idx), spec)
        yield idx, np.ascontiguousarray(x, dtype=np.float32)


def predict_batches(fn: Callable[[Any], T], xs: Any, batch_size: int) -> Iterator[T]:
    """Yield ``fn(xs[i:i + batch_size])`` for consecutive slices of ``xs`` (a numpy array or a tensor), in order."""
    _check_batch_size(batch_size)
    for i in range(0, len(xs), batch_size):
        yield fn(xs[i:i + batch_size])


def predict_dataset(predict: Predictor, ds: WaferDataset, spec: Any, batch_size: int = 256,
                    desc: str = "predict") -> np.ndarray:
    """Run ``predict`` over every map of ``ds``; returns float32 logits [N, K]."""
    k = len(spec_field(spec, "class_names"))
    _check_batch_size(batch_size)
    if len(ds) == 0:
        raise DataError("the dataset is empty; evaluate needs at least one map")
    out = np.empty((len(ds), k), dtype=np.float32)
    for idx, x in batches_for(ds, spec, batch_size, desc=desc):
        logits = np.asarray(predict(x))
        if logits.shape != (len(idx), k):
            raise ModelFormatError(
                f"the {desc} predictor returned shape {logits.shape} for a batch of {len(idx)}; expected "
                f"({len(idx)}, {k}) logits; is the model built for {k} classes?"
            )
        out[idx] = logits
    return out


def penultimate_features(model: Any, x: Any) -> Any:
    """Pooled pre-logit features of a timm model (what the classifier sees) for a float batch tensor."""
    return model.forward_head(model.forward_features(x), pre_logits=True)


def features_and_logits(model: Any, x: Any) -> tuple[Any, Any]:
    """Penultimate embedding [B, D] and logits [B, K] of a timm model for a float batch tensor.

    Uses ``forward_features``/``forward_head`` when present, else a pre-hook on ``get_classifier()``.

    Raises:
        ModelFormatError: the model exposes neither.
    """
    if hasattr(model, "forward_features") and hasattr(model, "forward_head"):
        feats = model.forward_features(x)
        emb = model.forward_head(feats, pre_logits=True)
        logits = model.forward_head(feats)
        return emb.flatten(1), logits
    if hasattr(model, "get_classifier"):
        captured: dict = {}
        head = model.get_classifier()
        h = head.register_forward_pre_hook(lambda m, a: captured.__setitem__("emb", a[0]))
        try:
            logits = model(x)
        finally:
            h.remove()
        return captured["emb"].flatten(1), logits
    raise ModelFormatError(
        f"{type(model).__name__} exposes neither forward_features/forward_head nor get_classifier; "
        "a penultimate embedding needs a timm backbone"
    )
