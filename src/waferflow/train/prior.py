"""Undo, in a trained model's head, the class prior that its class weights (or balanced sampler) trained in.

Class weights help a few-label model learn its rare classes, but they also tilt its outputs towards them: a map it
is unsure of leans to the rare class, which costs precision (and accuracy) on maps where rare classes are rare. The
training loop records that tilt (``model.json`` ``train.logit_shift``, :func:`~waferflow.train.losses.
training_logit_shift`); :func:`undo_class_prior` subtracts it from the classifier's bias, so every form exported
from the model (ONNX, INT8, TTA, TensorRT) scores maps under the training data's own class prior, with no extra
operator. A model trained without class weights has a zero shift and is written unchanged.

:func:`run_prior_correction` is the pipeline stage's work: it scores the validation split as trained and corrected
(:func:`validation_before_after`, before anything is written), then writes the corrected model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from waferflow.errors import ModelFormatError


def recorded_shift(spec) -> np.ndarray:
    """The logit shift the model's last training recorded.

    Raises:
        ModelFormatError: the model predates the record (train it again with this version).
    """
    shift = spec.extra.get("train", {}).get("logit_shift")
    if shift is None:
        raise ModelFormatError(
            "model.json has no train.logit_shift (the class prior its training used): the model was trained by an "
            "older waferflow, or a pipeline cache made by one served it; train it again (`waferflow run --no-cache`), "
            "or turn the prior correction off (--set undo_class_weights=false)")
    if len(shift) != spec.num_classes:
        raise ModelFormatError(f"model.json train.logit_shift has {len(shift)} values for {spec.num_classes} classes")
    return np.asarray(shift, dtype=np.float64)


def undo_class_prior(model_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write ``model_dir``'s model to ``out_dir`` with its recorded logit shift subtracted from the head's bias.

    Returns:
        ``{"status": "undone" | "nothing to undo", "shift": {class: value}}``; ``model.json`` of the written model
        holds it under ``prior_correction``, and its ``train.logit_shift`` is then all zeros. A corrected model is
        written without ``checkpoints/`` (their weights are the uncorrected ones; a training resumes from the source).
    """
    import torch
    from torch import nn

    from waferflow.models.spec import copy_model_extras, load_model_dir, read_spec, save_model_dir

    src, out = Path(model_dir), Path(out_dir)
    spec = read_spec(src)
    shift = recorded_shift(spec)
    report = {"status": "nothing to undo" if not shift.any() else "undone",
              "shift": {c: round(float(v), 6) for c, v in zip(spec.class_names, shift)}}
    if not shift.any():  # nothing to change: a plain copy, no model built
        shutil.copytree(src, out, dirs_exist_ok=True)
        return report
    model, spec = load_model_dir(src)
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, nn.Linear) or head.bias is None or head.out_features != spec.num_classes:
        raise ModelFormatError(f"{spec.backbone}: the classifier is not a linear layer with a bias over "
                               f"{spec.num_classes} classes, so its class prior cannot be corrected")
    copy_model_extras(src, out)
    with torch.no_grad():
        head.bias -= torch.as_tensor(shift, dtype=head.bias.dtype)
    train = {**spec.extra.get("train", {}), "logit_shift": [0.0] * spec.num_classes}
    spec = spec.replace(extra={**spec.extra, "train": train, "prior_correction": report}, weights_sha256=None)
    save_model_dir(model, spec, out)
    return report


def validation_before_after(model_dir: str | Path, val_file: str | Path) -> dict[str, dict]:
    """Validation accuracy, balanced accuracy and macro-F1 of a model as trained and with its prior undone.

    One forward pass of the model as trained: the correction moves only the head's bias, so the corrected logits are
    these minus its :func:`recorded_shift`. Run it before :func:`undo_class_prior`, so bad validation data stops the
    stage before anything is written.

    Returns:
        ``{"before": {...}, "after": {...}}``.

    Raises:
        DataError: unlabeled or empty validation maps, or classes that differ from the model's.
        ModelFormatError: the model has no recorded shift.
    """
    from waferflow.data.contract import load_dataset
    from waferflow.evaluation import check_classes, metrics_from_logits
    from waferflow.models.spec import read_spec
    from waferflow.predictors import create_predictor, predict_dataset

    spec = read_spec(model_dir)
    shift = recorded_shift(spec).astype(np.float32)
    ds = load_dataset(val_file, require_labels=True)
    check_classes(ds, spec)
    logits = predict_dataset(create_predictor("torch", model_dir), ds, spec, desc="validation, as trained")

    def overall(z: np.ndarray) -> dict[str, float]:
        m = metrics_from_logits(ds.labels, z, spec.class_names)["overall"]
        return {k: float(m[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}

    return {"before": overall(logits), "after": overall(logits - shift[None])}


def run_prior_correction(trained_dir: str | Path, val_file: str | Path, out_dir: str | Path,
                         undo: bool) -> dict[str, Any]:
    """The prior-correction stage: ``trained_dir`` written to ``out_dir`` corrected (``undo``) or unchanged.

    A model with a shift to undo is scored on validation first (:func:`validation_before_after`), so nothing is
    written when the validation maps are bad; the report then holds ``validation`` (before / after).
    """
    if not undo:
        shutil.copytree(trained_dir, out_dir, dirs_exist_ok=True)
        return {"status": "off: undo_class_weights is false"}
    from waferflow.models.spec import read_spec

    scored = validation_before_after(trained_dir, val_file) if recorded_shift(read_spec(trained_dir)).any() else None
    report = undo_class_prior(trained_dir, out_dir)
    if scored is not None:
        report["validation"] = scored
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the log: the status, the shift and the validation change."""
    line = f"prior correction: {report['status']}"
    if "shift" in report:
        line += " (" + ", ".join(f"{c} {v:+.3f}" for c, v in report["shift"].items()) + ")"
    if "validation" in report:
        b, a = report["validation"]["before"], report["validation"]["after"]
        line += (f"; validation accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f} "
                 f"-> {a['macro_f1']:.4f} (applied whatever these say: a recipe choice, not a per-run decision)")
    return line
