"""Pictures and tables for evaluation: confusion matrix, training curves, Grad-CAM overlays, comparison table.

matplotlib is used with the non-interactive Agg backend; every PNG is written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from waferflow.config import atomic_write_bytes
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError, DataError


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | os.PathLike, dpi: int = 110) -> Path:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_confusion(metrics: dict, path: str | os.PathLike) -> Path:
    """Confusion matrix PNG: row-normalized (recall) and counts side by side, with class names.

    Args:
        metrics: an evaluator dict (``confusion_matrix``, ``class_names``).
        path: the PNG to write.
    """
    plt = _plt()
    if "confusion_matrix" not in metrics or "class_names" not in metrics:
        raise DataError("plot_confusion needs an evaluator metrics dict with 'confusion_matrix' and 'class_names'")
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    names = list(metrics["class_names"])
    k = len(names)
    if cm.shape != (k, k):
        raise DataError(f"confusion_matrix has shape {cm.shape}, expected ({k}, {k}) for {k} class names")
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm, dtype=np.float64), where=rows > 0)
    side = max(4.0, 0.45 * k + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, data, title, fmt in ((axes[0], norm, "normalized by true class", "{:.2f}"),
                                 (axes[1], cm, "counts", "{:d}")):
        im = ax.imshow(data, cmap="Blues", vmin=0, vmax=1 if data is norm else max(1, int(cm.max())))
        ax.set_title(title)
        ax.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if k <= 25:
            thresh = (data.max() or 1) / 2
            for i in range(k):
                for j in range(k):
                    v = data[i, j]
                    ax.text(j, i, fmt.format(int(v) if fmt == "{:d}" else float(v)), ha="center", va="center",
                            fontsize=6, color="white" if v > thresh else "black")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ov = metrics.get("overall", {})
    if ov:
        nan = float("nan")
        fig.suptitle(f"accuracy {ov.get('accuracy', nan):.4f}  balanced {ov.get('balanced_accuracy', nan):.4f}"
                     f"  macro-F1 {ov.get('macro_f1', nan):.4f}  n={ov.get('n', cm.sum())}"
                     + (f"  [{metrics['form']}]" if "form" in metrics else ""))
    return _save(fig, path)


def plot_history(history: Sequence[dict], path: str | os.PathLike) -> Path:
    """Training curves PNG: loss, validation accuracy and macro-F1 per epoch, with phase boundaries.

    Args:
        history: ``history.json`` entries (``epoch``, ``phase``, ``train_loss``, ``val_loss``, ``val_accuracy``,
            ``val_macro_f1``); missing keys are left out of the plot.
        path: the PNG to write.
    """
    plt = _plt()
    if not history:
        raise DataError("plot_history: the history is empty; train at least one epoch")
    ep = np.arange(1, len(history) + 1)

    def col(key: str) -> np.ndarray:
        return np.array([h.get(key, np.nan) if h.get(key) is not None else np.nan for h in history], dtype=float)

    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    panels = ((axes[0], ("train_loss", "val_loss"), "loss"),
              (axes[1], ("train_accuracy", "val_accuracy"), "accuracy"),
              (axes[2], ("train_macro_f1", "val_macro_f1"), "macro-F1"))
    for ax, keys, title in panels:
        for key in keys:
            y = col(key)
            if np.isfinite(y).any():
                ax.plot(ep, y, marker="o", ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        phases = [h.get("phase") for h in history]
        for i in range(1, len(phases)):
            if phases[i] != phases[i - 1]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                ax.text(i + 0.6, ax.get_ylim()[1], str(phases[i]), fontsize=7, va="top", rotation=90)
        if ax.lines:
            ax.legend(fontsize=8)
    return _save(fig, path)


def cam_layer(model: Any, x: np.ndarray, min_hw: int = 4) -> Any:
    """The last Conv2d whose output is at least ``min_hw`` x ``min_hw`` (the last conv stage with a usable map).

    At wafer-map sizes (e.g. 64 px) the very last conv of a CNN is 2x2 or 1x1, which carries no spatial
    information; the last stage at >= 4x4 does. Falls back to the conv with the largest output if none qualifies.
    In an ensemble (:mod:`waferflow.models.ensemble`) the layer is its first member's, the fine-tuned model: the
    heatmap shows that member's evidence for the ensemble's score.
    """
    import torch

    from waferflow.models.ensemble import MeanProbabilityEnsemble

    shapes: list[tuple[Any, tuple[int, int]]] = []
    searched = model.members[0] if isinstance(model, MeanProbabilityEnsemble) else model
    hooks = [m.register_forward_hook(lambda mod, i, o: shapes.append((mod, tuple(o.shape[-2:]))))
             for m in searched.modules() if isinstance(m, torch.nn.Conv2d)]
    if not hooks:
        raise ConfigError("Grad-CAM needs a model with at least one Conv2d layer")
    try:
        with torch.no_grad():
            model.eval()(torch.from_numpy(np.ascontiguousarray(x[:1])))
    finally:
        for h in hooks:
            h.remove()
    good = [m for m, hw in shapes if min(hw) >= min_hw]
    return good[-1] if good else max(shapes, key=lambda t: min(t[1]))[0]


def gradcam(model: Any, x: np.ndarray, target: np.ndarray | None = None,
            layer: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM heatmaps of ``layer`` (default: ``cam_layer``, the last conv stage with a >= 4x4 map).

    Args:
        model: torch module (eval mode is used). x: preprocessed float32 [B, C, S, S].
        target: class per map (default: the predicted class).

    Returns:
        ``(cams [B, S, S] in [0, 1], predicted classes [B])``.
    """
    import torch
    import torch.nn.functional as F

    layer = layer or cam_layer(model, x)
    acts: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}

    def fwd(_m: Any, _i: Any, out: torch.Tensor) -> None:
        acts["a"] = out
        out.register_hook(lambda g: grads.__setitem__("g", g))  # a tensor hook: safe with in-place ops after it

    h1 = layer.register_forward_hook(fwd)
    was_training = model.training
    model.eval()
    try:
        xt = torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)
        with torch.enable_grad():
            logits = model(xt)
            pred = logits.argmax(1)
            tgt = pred if target is None else torch.as_tensor(target, dtype=torch.long)
            model.zero_grad(set_to_none=True)
            logits.gather(1, tgt[:, None]).sum().backward()
    finally:
        h1.remove()
        model.train(was_training)
    a, g = acts["a"].detach(), grads["g"].detach()
    cam = F.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    flat = cam.flatten(1)
    lo, hi = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    span = hi - lo
    # a flat CAM (no evidence anywhere) stays 0 instead of amplifying rounding noise to [0, 1]
    cam = torch.where(span > 1e-6 * hi.abs().clamp_min(1e-12), (cam - lo) / span.clamp_min(1e-12),
                      torch.zeros_like(cam))
    return cam.numpy(), pred.numpy()


def gradcam_overlays(model: Any, spec: Any, ds: WaferDataset, path: str | os.PathLike, per_class: int = 3,
                     seed: int = 0) -> Path:
    """One PNG grid: for up to ``per_class`` maps of each class, the map with its Grad-CAM overlaid.

    Rows are classes; each panel's title gives the true and the predicted class.
    """
    from waferflow.predictors import spec_field
    from waferflow.models import preprocess

    plt = _plt()
    if not ds.labeled:
        raise DataError("gradcam_overlays needs labeled maps to pick maps of each class")
    if per_class < 1:
        raise ConfigError(f"per_class must be >= 1, got {per_class}")
    names = list(spec_field(spec, "class_names"))
    size = int(spec_field(spec, "input_size"))
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(len(names)):
        members = np.flatnonzero(ds.labels == c)
        if len(members):
            rows.append((c, np.sort(rng.choice(members, min(per_class, len(members)), replace=False))))
    if not rows:
        raise DataError("gradcam_overlays: the dataset has no maps")
    fig, axes = plt.subplots(len(rows), per_class, figsize=(2.2 * per_class, 2.3 * len(rows)), squeeze=False)
    for r, (c, idx) in enumerate(rows):
        maps = ds.resized(size, idx)
        cams, pred = gradcam(model, preprocess(maps, spec))
        for j in range(per_class):
            ax = axes[r][j]
            ax.axis("off")
            if j >= len(idx):
                continue
            ax.imshow(maps[j], cmap="gray", vmin=0, vmax=2, interpolation="nearest")
            ax.imshow(cams[j], cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ok = "" if pred[j] == c else " ✗"
            ax.set_title(f"{names[c]} → {names[pred[j]]}{ok}", fontsize=7)
    fig.suptitle("Grad-CAM (last conv stage at >= 4x4): true → predicted", fontsize=9)
    return _save(fig, path)


COMPARISON_COLUMNS = (
    ("candidate", "candidate", "{}"), ("strategy", "strategy", "{}"), ("backbone", "backbone", "{}"),
    ("accuracy", "accuracy", "{:.4f}"), ("balanced_accuracy", "balanced acc", "{:.4f}"),
    ("macro_f1", "macro-F1", "{:.4f}"), ("ece", "ECE", "{:.4f}"),
    ("trainable_params", "trainable params", "{:,.0f}"), ("train_seconds", "train time (s)", "{:.1f}"),
    ("throughput_maps_per_s", "throughput (maps/s)", "{:.1f}"),
)


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table across candidates.

    Each row is a flat dict with the keys of ``COMPARISON_COLUMNS`` (``candidate``, ``strategy``, ``backbone``,
    ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``ece``, ``trainable_params``, ``train_seconds``,
    ``throughput_maps_per_s``); metric keys may instead sit under ``overall`` (an evaluator dict). A missing
    value prints as ``-``.
    """
    head = "| " + " | ".join(h for _, h, _ in COMPARISON_COLUMNS) + " |"
    sep = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(COMPARISON_COLUMNS))) + "|"
    lines = [head, sep]
    for row in rows:
        flat = {**row.get("overall", {}), **{k: v for k, v in row.items() if k != "overall"}}
        cells = []
        for key, _, fmt in COMPARISON_COLUMNS:
            v = flat.get(key)
            cells.append("-" if v is None else fmt.format(v).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
