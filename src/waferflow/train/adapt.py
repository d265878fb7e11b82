"""Adaptive batch norm: re-estimate BN running statistics on target-domain maps."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from waferflow.models.spec import ModelSpec, preprocess


def _bn_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def _predict(model: nn.Module, spec: ModelSpec, maps: np.ndarray, batch_size: int, device: str) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(maps), batch_size):
        x = torch.from_numpy(preprocess(maps[i:i + batch_size], spec)).to(device)
        out.append(model(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, spec.num_classes), np.float32)


@torch.no_grad()
def adapt_bn(model: nn.Module, spec: ModelSpec, maps_uint8: np.ndarray, batch_size: int = 64,
             labels: np.ndarray | None = None, device: str = "cpu", layers: list[str] | None = None) -> dict:
    """Recompute BN running statistics on target-domain maps (labels not needed).

    Running stats are reset and re-estimated as a cumulative average (``momentum=None``)
    over one pass with the BN layers in train mode and everything else in eval mode, without
    gradients. The model is left in eval mode with the new statistics.

    Args:
        model: The model (changed in place).
        spec: Its spec (for :func:`preprocess`).
        maps_uint8: Target-domain maps [N, h, w].
        batch_size: Maps per forward pass (>= 2; BN needs batch statistics).
        labels: Optional labels of ``maps_uint8``; then accuracy before/after is reported.
        device: Torch device.
        layers: Only these BN modules (default: all).

    Returns:
        ``{"n_maps", "n_layers", "mean_abs_shift_running_mean", "mean_abs_shift_running_var",
        "per_layer": {name: {"mean_shift", "var_shift"}}, "accuracy_before", "accuracy_after"}``.
    """
    from waferflow.errors import DataError

    maps = np.asarray(maps_uint8)
    if len(maps) < 2:
        raise DataError("adaptive BN needs at least 2 target-domain maps")
    bns = _bn_layers(model)
    if layers is not None:
        bns = {n: bns[n] for n in layers if n in bns}
    report: dict = {"n_maps": int(len(maps)), "n_layers": len(bns)}
    if labels is not None:
        report["accuracy_before"] = float((_predict(model, spec, maps, 256, device).argmax(1) == labels).mean())
    before = {n: (m.running_mean.clone(), m.running_var.clone()) for n, m in bns.items()}
    momenta = {n: m.momentum for n, m in bns.items()}
    model.eval()
    model.to(memory_format=torch.channels_last)  # oneDNN runs Lite0 about 2x faster channels-last on CPU
    for m in bns.values():
        m.reset_running_stats()
        m.momentum = None
        m.train()
    bs = max(2, int(batch_size))
    try:
        for i in range(0, len(maps), bs):
            chunk = maps[i:i + bs]
            if len(chunk) < 2:
                continue
            model(torch.from_numpy(preprocess(chunk, spec)).to(device).contiguous(memory_format=torch.channels_last))
    finally:
        for n, m in bns.items():
            m.momentum = momenta[n]
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
