"""One evaluator for every model form (PyTorch, ONNX FP32/INT8, TensorRT).

A *predictor* is any callable that maps a float32 array [B, C, S, S] (already
preprocessed for the model) to logits [B, K]. ``evaluate`` runs it over a
dataset and returns a plain dict; ``metrics_from_logits`` is the pure core.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from waferflow.config import progress_enabled
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError, ModelFormatError


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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

Predictor = Callable[[np.ndarray], np.ndarray]


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


def batches_for(ds: WaferDataset, spec: Any, batch_size: int = 256, indices: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(indices, x)`` with ``x`` = ``models.preprocess`` of each batch (float32 [B, C, S, S]).

    Variable-size maps are first resized (nearest) to the model's input size, so every form sees the
    bytes that ``preprocess`` makes of them.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    size = int(spec_field(spec, "input_size"))
    idx_all = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    for a in range(0, len(idx_all), batch_size):
        idx = idx_all[a:a + batch_size]
        x = _preprocess(ds.resized(size, idx), spec)
        yield idx, np.ascontiguousarray(x, dtype=np.float32)


def predict_dataset(predict: Predictor, ds: WaferDataset, spec: Any, batch_size: int = 256,
                    desc: str = "predict") -> np.ndarray:
    """Run ``predict`` over every map of ``ds``; returns float32 logits [N, K]."""
    from tqdm import tqdm

    k = len(spec_field(spec, "class_names"))
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    if len(ds) == 0:
        raise DataError("the dataset is empty; evaluate needs at least one map")
    out = np.empty((len(ds), k), dtype=np.float32)
    n_batches = (len(ds) + batch_size - 1) // batch_size
    for idx, x in tqdm(batches_for(ds, spec, batch_size), total=n_batches, desc=desc, unit="batch",
                       disable=not progress_enabled()):
        logits = np.asarray(predict(x))
        if logits.shape != (len(idx), k):
            raise ModelFormatError(
                f"the {desc} predictor returned shape {logits.shape} for a batch of {len(idx)}; expected "
                f"({len(idx)}, {k}) logits; is the model built for {k} classes?"
            )
        out[idx] = logits
    return out


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
        predict: float32 [B, C, S, S] -> logits [B, K] (see ``torch_predictor``, ``onnx_predictor``,
            ``waferflow.export.trt.tensorrt_predictor``).
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


def torch_predictor(model: Any, device: str = "cpu") -> Predictor:
    """A predictor around a torch module (eval mode, inference_mode, float32 logits back on the CPU).

    Raises:
        ConfigError: ``device`` asks for CUDA and no CUDA device is present (never falls back to CPU).
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but torch sees no CUDA device; use device='cpu'")
    # channels-last: oneDNN runs the conv backbones about 2x faster this way on the CPU
    model = model.to(dev, memory_format=torch.channels_last).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(dev)
            if xt.ndim == 4:
                xt = xt.contiguous(memory_format=torch.channels_last)
            return model(xt).float().cpu().numpy()

    return predict


def tta_views(symmetries: Sequence[str]) -> list[tuple[int, bool, bool]]:
    """Distinct label-preserving views ``(rot90 k, hflip, vflip)`` that ``symmetries`` allow (identity first).

    ``rot90`` gives 4 rotations, ``rot180`` 2; with ``hflip``/``vflip`` the group is closed and duplicates
    (e.g. vflip = rot180 + hflip) are dropped, so the dihedral group gives 8 views, not 16.
    """
    from waferflow.train.config import SYMMETRIES

    bad = [s for s in symmetries if s not in SYMMETRIES]
    if bad:
        raise ConfigError(f"unknown symmetries {bad}; use {list(SYMMETRIES)}")
    rots = (0, 1, 2, 3) if "rot90" in symmetries else (0, 2) if "rot180" in symmetries else (0,)
    probe = np.arange(16).reshape(4, 4)
    seen, views = set(), []
    for k in rots:
        for h in ((False, True) if "hflip" in symmetries else (False,)):
            for v in ((False, True) if "vflip" in symmetries else (False,)):
                key = _view(probe, (k, h, v)).tobytes()
                if key not in seen:
                    seen.add(key)
                    views.append((k, h, v))
    return views


def _view(x: np.ndarray, view: tuple[int, bool, bool]) -> np.ndarray:
    k, h, v = view
    x = np.rot90(x, k, axes=(-2, -1)) if k else x
    x = x[..., ::-1] if h else x
    x = x[..., ::-1, :] if v else x
    return np.ascontiguousarray(x)


def tta_predictor(predict: Predictor, symmetries: Sequence[str]) -> Predictor:
    """Test-time augmentation around any predictor: the mean softmax over ``tta_views(symmetries)``.

    Returns log(mean probability) as logits, so argmax and softmax of the result are the averaged ones.
    Only the transforms the taxonomy allows are used (seed20's vertical vs horizontal scratch forbid rot90).
    """
    views = tta_views(symmetries)

    def predict_tta(x: np.ndarray) -> np.ndarray:
        acc = None
        for view in views:
            p = _softmax(np.asarray(predict(_view(x, view)), dtype=np.float64))
            acc = p if acc is None else acc + p
        return np.log(np.maximum(acc / len(views), 1e-12)).astype(np.float32)

    predict_tta.views = views  # type: ignore[attr-defined]
    return predict_tta


def onnx_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime InferenceSession with a clear error for a missing, corrupt or truncated file.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: onnxruntime's default).
        device: ``cpu`` (CPUExecutionProvider) or ``cuda`` (CUDAExecutionProvider; an error when absent).

    Raises:
        ModelFormatError: the file is missing, empty, or onnxruntime cannot load it.
        ConfigError: CUDA was asked for and onnxruntime has no CUDA provider.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"ONNX model {p} does not exist; run `waferflow export` first")
    if p.stat().st_size == 0:
        raise ModelFormatError(f"ONNX model {p} is empty (0 bytes); re-run `waferflow export`")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("device='cuda' was asked for but onnxruntime has no CUDAExecutionProvider; "
                              "install onnxruntime-gpu on a CUDA machine or use device='cpu'")
        providers = ["CUDAExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(p), sess_options=so, providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        raise ModelFormatError(
            f"ONNX model {p} is corrupt or truncated and cannot be loaded ({type(e).__name__}: "
            f"{str(e).strip()[:300]}); re-run `waferflow export` to rebuild it"
        ) from None


def onnx_predictor(path: str | os.PathLike, threads: int | None = None, device: str = "cpu") -> Predictor:
    """A predictor around an ONNX model (input ``input``, output ``logits``); see ``onnx_session``."""
    sess = onnx_session(path, threads=threads, device=device)
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name

    def predict(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {in_name: x})[0]

    return predict
