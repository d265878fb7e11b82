"""Average the deployed model's weights with the source model it was fine-tuned from (WiSE-FT).

A model fine-tuned on a few hundred real maps forgets what its synthetic source model knew about the classes those
maps barely show (a class with four training maps is never predicted). A model fine-tuned from a start point and
that start point usually lie in one basin of the loss, so the weights ``(1 - w) * final + w * source`` are one model
that keeps much of both (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): no second forward
pass, and every exported form (ONNX, INT8, TTA, TensorRT) works as it is. Averaged batch-norm statistics belong to
neither model, so they are then re-estimated on the run's own maps (:func:`~waferflow.train.adapt.adapt_bn`: the
train split and the unlabeled pool, no label read).

The start point is the source model with its batch norm adapted to the run's maps (the adaptive-BN stage's
``<backbone>@source`` folder, where the ``+source`` candidates start). A model that was not fine-tuned from it (an
ImageNet-only candidate won) is passed on unchanged, and the report says why.

:func:`run_source_interpolation` is the pipeline stage's work: it scores the validation split before and after
(before anything is written), then writes the averaged model.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from waferflow.errors import ConfigError, ModelFormatError


def interpolate_state(final: dict, start: dict, source_weight: float) -> dict:
    """``(1 - source_weight) * final + source_weight * start`` for every floating-point tensor; other tensors (batch
    norm's step counts) are the final model's.

    Raises:
        ModelFormatError: the two state dicts differ in keys or shapes (different architectures).
    """
    if final.keys() != start.keys() or any(final[k].shape != start[k].shape for k in final):
        raise ModelFormatError("the model and the source model differ in architecture, so their weights cannot be "
                               "averaged; set source_weight=0")
    w = float(source_weight)
    return {k: (1 - w) * v + w * start[k] if v.is_floating_point() else v for k, v in final.items()}


def _skip_reason(spec, start: Path) -> str | None:
    """Why the model is passed on unchanged, or None when it can be averaged with ``start``."""
    if not (start / "model.json").is_file():
        return "skipped: the run has no source model (no synthetic taxonomy matches the data, or source is off)"
    if not any(str(w).endswith(f"{spec.backbone}@source") for w in spec.extra.get("weights_lineage", [])):
        return "skipped: the model was not fine-tuned from the source model (an ImageNet-only candidate went on)"
    return None


def val_scores(model, spec, val) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro-F1 of an in-memory model on a labeled dataset (torch, no TTA)."""
    from waferflow.evaluation import metrics_from_logits
    from waferflow.predictors import predict_dataset, torch_predictor

    m = metrics_from_logits(val.labels, predict_dataset(torch_predictor(model), val, spec, desc="validation"),
                            spec.class_names)["overall"]
    return {k: float(m[k]) for k in ("accuracy", "balanced_accuracy", "macro_f1")}


def run_source_interpolation(model_dir: str | Path, adapted_dir: str | Path, maps: list[str | Path],
                             val_file: str | Path, out_dir: str | Path, source_weight: float,
                             max_maps: int = 20000, seed: int = 0) -> dict[str, Any]:
    """The source-interpolation stage: ``model_dir`` averaged with ``<adapted_dir>/<backbone>@source`` by
    ``source_weight``, its batch norm re-estimated on up to ``max_maps`` of the datasets ``maps``, written to
    ``out_dir``; or copied unchanged when ``source_weight`` is 0 or there is nothing to average with.

    Returns:
        ``{"status", "source_weight", ...}``; an averaged model's report also holds ``start`` (its start point),
        ``bn_maps`` and ``validation`` (before / after), and its ``model.json`` holds the report under
        ``source_interpolation``.

    Raises:
        ConfigError: ``source_weight`` outside [0, 1).
        DataError: unlabeled, empty or mismatched validation maps (before anything is written).
        ModelFormatError: the two models differ in classes, input size or architecture.
    """
    if not 0 <= source_weight < 1:
        raise ConfigError(f"source_weight must be in [0, 1) (0 = off), got {source_weight}")
    from waferflow.models.spec import read_spec

    spec = read_spec(model_dir)
    start = Path(adapted_dir) / f"{spec.backbone}@source"
    reason = "off: source_weight is 0" if source_weight == 0 else _skip_reason(spec, start)
    if reason is not None:
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
        return {"status": reason, "source_weight": source_weight}
    return _interpolate(Path(model_dir), start, maps, val_file, Path(out_dir), source_weight, max_maps, seed)


def _interpolate(model_dir: Path, start: Path, maps: list, val_file, out: Path, source_weight: float,
                 max_maps: int, seed: int) -> dict[str, Any]:
    from waferflow.data.contract import load_dataset
    from waferflow.evaluation import check_classes
    from waferflow.models.spec import copy_model_extras, load_model_dir, save_model_dir
    from waferflow.train.adapt import adapt_bn, sample_maps

    model, spec = load_model_dir(model_dir)
    source, source_spec = load_model_dir(start)
    if (source_spec.class_names, source_spec.input_size) != (spec.class_names, spec.input_size):
        raise ModelFormatError(f"the source model {start} has classes {list(source_spec.class_names)} at "
                               f"{source_spec.input_size} px; the model has {list(spec.class_names)} at "
                               f"{spec.input_size} px, so they cannot be averaged; set source_weight=0")
    val = load_dataset(val_file, require_labels=True)
    check_classes(val, spec)
    before = val_scores(model, spec, val)
    model.load_state_dict(interpolate_state(model.state_dict(), source.state_dict(), source_weight))
    bn_maps = sample_maps([load_dataset(p) for p in maps], spec.input_size, max_maps, seed)
    adapt_bn(model, spec, bn_maps, batch_size=64)
    report = {"status": "averaged", "source_weight": source_weight, "start": str(start),
              "bn_maps": int(len(bn_maps)), "validation": {"before": before, "after": val_scores(model, spec, val)}}
    copy_model_extras(model_dir, out)
    # the lineage already names the start point (the model was fine-tuned from it), so it stays as it is
    save_model_dir(model, spec.replace(extra={**spec.extra, "source_interpolation": report}, weights_sha256=None), out)
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the log: the status and the validation change."""
    line = f"source interpolation: {report['status']}"
    if "validation" in report:
        b, a = report["validation"]["before"], report["validation"]["after"]
        line += (f" (source weight {report['source_weight']:g}, batch norm re-estimated on {report['bn_maps']} maps); "
                 f"validation accuracy {b['accuracy']:.4f} -> {a['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f} -> "
                 f"{a['macro_f1']:.4f} (applied whatever these say: a recipe choice, not a per-run decision)")
    return line
