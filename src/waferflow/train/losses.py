"""Imbalance-aware losses: class-weighted cross-entropy and focal loss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from waferflow.errors import ConfigError


def class_weights(labels: np.ndarray, num_classes: int, mode: str = "none") -> torch.Tensor | None:
    """Per-class loss weights from training label frequencies.

    Args:
        labels: int [N] training labels.
        num_classes: K.
        mode: ``none`` | ``inverse`` (N / (K * n_c)) | ``sqrt`` (its square root).

    Returns:
        float32 [K] normalized to mean 1 over present classes, or None for ``none``.
    """
    if mode == "none":
        return None
    if mode not in ("inverse", "sqrt"):
        raise ConfigError(f"class_weights must be none, sqrt or inverse; got {mode!r}")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    if mode == "sqrt":
        w = np.sqrt(w)
    w[present] /= w[present].mean()
    return torch.tensor(w, dtype=torch.float32)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017) with optional class weights and label smoothing.

    ``loss = -sum_c q_c * w_c * (1 - p_c)^gamma * log p_c`` with ``q`` the (smoothed) target.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = float(gamma)
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight if weight is not None else None, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(logits.float(), dim=1)
        k = logits.shape[1]
        q = F.one_hot(target, k).float()
        if self.label_smoothing:
            q = q * (1 - self.label_smoothing) + self.label_smoothing / k
        mod = (1 - logp.exp()).pow(self.gamma)
        per = -(q * mod * logp)
        if self.weight is not None:
            per = per * self.weight.to(per.device)[None]
            # normalize like weighted CE: by the weight of each sample's true class
            return per.sum(1).sum() / self.weight.to(per.device)[target].sum().clamp_min(1e-12)
        return per.sum(1).mean()


def build_loss(kind: str, weight: torch.Tensor | None, label_smoothing: float = 0.0, gamma: float = 2.0) -> nn.Module:
    """``ce`` (weighted cross-entropy) or ``focal``."""
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
    if kind == "focal":
        return FocalLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing)
    raise ConfigError(f"loss must be ce or focal; got {kind!r}")


def training_logit_shift(labels: np.ndarray, num_classes: int, mode: str = "none",
                         balanced_sampler: bool = False) -> np.ndarray:
    """The per-class shift that class weights and a balanced sampler add to a trained model's logits.

    A loss that weighs class ``c`` by ``w_c`` is minimised by ``logits_c = log p(c | x) + log w_c`` (up to a
    constant), and drawing every class equally often subtracts ``log prior_c``; so subtracting this shift from the
    logits gives scores under the training data's own class prior (Menon et al., "Long-tail learning via logit
    adjustment", ICLR 2021). Exact for cross-entropy, approximate for focal loss.

    Args:
        labels: int [N] the training labels the weights were computed from.
        num_classes: K.
        mode, balanced_sampler: ``TrainConfig.class_weights`` and ``balanced_sampler``.

    Returns:
        float64 [K], mean 0 over the classes present in ``labels``; 0 for absent classes and all 0 when neither is on.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    present = counts > 0
    shift = np.zeros(num_classes)
    w = class_weights(labels, num_classes, mode)
    if w is not None:
        shift[present] += np.log(w.double().numpy()[present])
    if balanced_sampler:
        shift[present] -= np.log(counts[present] / counts.sum())
    if present.any():
        shift[present] -= shift[present].mean()
    return shift


def balanced_sample_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Per-sample weights so every present class is drawn equally often."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    w = 1.0 / np.maximum(counts[labels], 1)
    return torch.tensor(w / w.sum(), dtype=torch.float64)
