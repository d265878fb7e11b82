"""A mean-probability ensemble of models of one backbone, as one ``nn.Module`` with timm's feature interface.

Its logits are ``log(mean over members of softmax(member logits))``: softmax and argmax of them are the averaged
prediction, so test-time augmentation around it (itself a mean softmax) averages over members and views alike, and
every export form (ONNX, INT8, TTA, TensorRT) traces it as one graph. A model dir holds it as one ``weights.pt``
(keys ``members.<i>.``) and an ``ensemble`` record in ``model.json`` (:data:`ENSEMBLE_KEY`), which
:func:`waferflow.models.spec.load_model_dir` reads.

Features are the members' concatenated: ``forward_features`` stacks their feature maps along channels,
``forward_head(f, pre_logits=True)`` their pooled embeddings, and ``get_classifier()`` maps that embedding to the
ensemble's logits, so the label queue and the drift features see both members.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

ENSEMBLE_KEY = "ensemble"
#: what members of one ensemble share (``ModelSpec`` fields): same architecture, classes, input and normalization
MEMBER_KEYS = ("backbone", "class_names", "input_size", "in_chans", "mean", "std")


def _log_mean_softmax(member_logits: Sequence[torch.Tensor]) -> torch.Tensor:
    stacked = torch.stack([torch.log_softmax(z.float(), dim=1) for z in member_logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(member_logits))


class _EnsembleHead(nn.Module):
    """The members' classifiers over their concatenated embeddings, combined by mean probability."""

    def __init__(self, heads: Sequence[nn.Module], widths: Sequence[int]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.widths = list(widths)

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return _log_mean_softmax([h(e) for h, e in zip(self.heads, torch.split(emb, self.widths, dim=1))])


class MeanProbabilityEnsemble(nn.Module):
    """Members of one timm architecture (same input, same classes) whose probabilities are averaged."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _log_mean_softmax([m(x) for m in self.members])

    def _widths(self) -> list[int]:
        return [int(m.num_features) for m in self.members]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_features(x) for m in self.members], dim=1)

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        parts = torch.split(feats, self._widths(), dim=1)
        if pre_logits:
            return torch.cat([m.forward_head(f, pre_logits=True) for m, f in zip(self.members, parts)], dim=1)
        return _log_mean_softmax([m.forward_head(f) for m, f in zip(self.members, parts)])

    def get_classifier(self) -> nn.Module:
        return _EnsembleHead([m.get_classifier() for m in self.members], self._widths())


def is_ensemble(spec) -> bool:
    """Whether a :class:`~waferflow.models.spec.ModelSpec` describes an ensemble (its ``model.json`` has the record)."""
    return spec.extra.get(ENSEMBLE_KEY) is not None


def member_mismatch(spec, other) -> list[str]:
    """The :data:`MEMBER_KEYS` in which two specs differ (empty: the models can be members of one ensemble)."""
    return [k for k in MEMBER_KEYS if getattr(spec, k) != getattr(other, k)]


def ensemble_record(member_sources: Sequence[str]) -> dict:
    """The ``model.json`` record of an ensemble whose members came from ``member_sources`` (in member order)."""
    return {"members": len(member_sources), "combine": "mean_probability", "member_sources": list(member_sources)}
