"""Adaptive batch norm: re-estimate BN running statistics on target-domain maps."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn

from waferflow.data.contract import WaferDataset
from waferflow.models.spec import ModelSpec, preprocess
from waferflow.predictors import predict_batches


def _bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def _predict(model: nn.Module, spec: ModelSpec, maps: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    model.eval()
    out = list(predict_batches(
        lambda m: model(torch.from_numpy(preprocess(m, spec)).to(device)).float().cpu().numpy(), maps, batch_size))
    return np.concatenate(out) if out else np.zeros((0, spec.num_classes), np.float32)


def adapt_bn(model: nn.Module, spec: ModelSpec, maps_uint8: np.ndarray, batch_size: int = 64,
             labels: np.ndarray | None = None, device: str = "cpu") -> dict:
    """Recompute BN running statistics on target-domain maps (labels not needed).

    The statistics are re-estimated by :func:`torch.optim.swa_utils.update_bn`: running stats reset, then a
    cumulative average (``momentum=None``) over one pass without gradients. The caller's random stream is left
    where it was (dropout runs during that pass), and the model is left in eval mode with the new statistics.

    Args:
        model: The model (changed in place).
        spec: Its spec (for :func:`preprocess`).
        maps_uint8: Target-domain maps [N, h, w]; for a large pool pass :func:`sample_maps`' sample, never the
            whole pool.
        batch_size: Maps per forward pass (>= 2; BN needs batch statistics).
        labels: Optional labels of ``maps_uint8``; then accuracy before/after is reported.
        device: Torch device.

    Returns:
        ``{"n_maps", "n_layers", "mean_abs_shift_running_mean", "mean_abs_shift_running_var",
        "per_layer": {name: {"mean_shift", "var_shift"}}, "accuracy_before", "accuracy_after"}``.
    """
    from torch.optim.swa_utils import update_bn

    from waferflow.errors import DataError

    maps = np.asarray(maps_uint8)
    if len(maps) < 2:
        raise DataError("adaptive BN needs at least 2 target-domain maps")
    bns = _bn_layers(model)
    report: dict = {"n_maps": int(len(maps)), "n_layers": len(bns)}
    if labels is not None:
        report["accuracy_before"] = float((_predict(model, spec, maps, 256, device).argmax(1) == labels).mean())
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    model.to(memory_format=torch.channels_last)  # oneDNN runs Lite0 about 2x faster channels-last on CPU
    bs = max(2, int(batch_size))
    batches = (torch.from_numpy(preprocess(maps[i:i + bs], spec)).contiguous(memory_format=torch.channels_last)
               for i in range(0, len(maps), bs) if len(maps[i:i + bs]) >= 2)  # a 1-map batch breaks BN
    try:
        with torch.random.fork_rng(devices=[]):
            update_bn(batches, model, device=torch.device(device))
    finally:
        model.eval()
    per = {}
    for n, m in bns.items():
        mu0, var0 = before[n]
        per[n] = {"mean_shift": float((m.running_mean - mu0).abs().mean()),
                  "var_shift": float((m.running_var - var0).abs().mean())}
    report["mean_abs_shift_running_mean"] = float(np.mean([v["mean_shift"] for v in per.values()])) if per else 0.0
    report["mean_abs_shift_running_var"] = float(np.mean([v["var_shift"] for v in per.values()])) if per else 0.0
    report["per_layer"] = per
    if labels is not None:
        report["accuracy_after"] = float((_predict(model, spec, maps, 256, device).argmax(1) == labels).mean())
    return report


def sample_maps(datasets: Sequence[WaferDataset], size: int, max_maps: int, seed: int = 0) -> np.ndarray:
    """Maps for adaptive BN from one or more datasets, resized to ``size``, at most ``max_maps`` of them.

    Only the chosen maps are resized, so memory stays at ``max_maps * size**2`` bytes however large the pool is
    (the full WM-811K pool at 224 px would be about 38 GB). When everything fits, every map is taken in order.

    Raises:
        ConfigError: ``max_maps`` < 2.
    """
    from waferflow.errors import ConfigError

    if max_maps < 2:
        raise ConfigError(f"max_maps for adaptive BN must be >= 2, got {max_maps}")
    counts = [len(d) for d in datasets]
    total = sum(counts)
    if total <= max_maps:
        return np.concatenate([d.resized(size) for d in datasets]) if datasets else np.zeros((0, size, size), np.uint8)
    pick = np.sort(np.random.default_rng(seed).choice(total, size=max_maps, replace=False))
    starts = np.cumsum([0, *counts])
    parts = [d.resized(size, indices=pick[(pick >= lo) & (pick < hi)] - lo)
             for d, lo, hi in zip(datasets, starts[:-1], starts[1:]) if np.any((pick >= lo) & (pick < hi))]
    return np.concatenate(parts)
