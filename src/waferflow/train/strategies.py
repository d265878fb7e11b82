"""Transfer strategies as data: each is a list of phases.

A phase says how deep the trainable part reaches (``depth``: the fraction of the
backbone's layer groups, counted from the top, that train next to the head), the
learning-rate scale and discriminative decay, and its share of the epochs.
Layer groups come from timm's ``group_matcher`` (coarse), with the classifier
split out as its own ``head`` group. Frozen groups keep ``requires_grad=False``
and their BN layers stay in eval mode (running statistics frozen).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class Phase:
    """One phase of a strategy.

    Attributes:
        name: Label in the history (``head``, ``top-1/3``, ``all``...).
        depth: 0 = head only, 1 = every layer group; in between, the top ``round(depth * G)`` groups.
        share: Share of the strategy's epochs (ignored when ``epochs`` is set).
        epochs: Fixed epoch count (used for cheap cached-feature phases).
        lr_scale: Multiplies the config's peak LR.
        lr_decay: Discriminative factor per group from the head down; None = the config's ``lr_decay``.
        cached_features: Train the head on backbone features computed once (depth must be 0).
    """

    name: str
    depth: float
    share: float = 1.0
    epochs: int | None = None
    lr_scale: float = 1.0
    lr_decay: float | None = None
    cached_features: bool = False


@dataclass(frozen=True)
class Strategy:
    """A named list of phases, its init and its default budget."""

    name: str
    init: str  # "pretrained" or "random"
    phases: tuple[Phase, ...]
    default_epochs: int
    default_lr: float
    description: str = ""
    adapt_bn: bool = False  # re-estimate BN stats on the train maps first (measured: needed for gradual unfreezing)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "scratch", "random", (Phase("all", 1.0, lr_decay=1.0),), default_epochs=8, default_lr=3e-3,
            description="random init, every layer, same budget (baseline)",
        ),
        Strategy(
            "feature_extraction", "pretrained", (Phase("head", 0.0, cached_features=True),), default_epochs=40,
            default_lr=3e-3, description="frozen backbone (BN in eval mode); head trained on cached features",
        ),
        Strategy(
            "full_finetune", "pretrained", (Phase("all", 1.0),), default_epochs=8, default_lr=2e-3,
            description="every layer, discriminative LRs by group, warm-up + cosine",
        ),
        Strategy(
            "gradual_unfreezing", "pretrained",
            (
                Phase("head", 0.0, epochs=10, cached_features=True, lr_scale=1.5),
                Phase("top-1/3", 1 / 3, share=0.25),
                Phase("top-2/3", 2 / 3, share=0.25),
                Phase("all", 1.0, share=0.5),
            ),
            default_epochs=8, default_lr=2e-3, adapt_bn=True,
            description="head on cached features, then the top third, two thirds, all; discriminative LRs",
        ),
    )
}


def phase_epochs(strategy: Strategy, total: int) -> list[int]:
    """Epochs of each phase: fixed ones as given, the rest split ``total`` by share (each >= 1)."""
    shared = [p for p in strategy.phases if p.epochs is None]
    out = []
    if shared:
        tot_share = sum(p.share for p in shared)
        raw = [total * p.share / tot_share for p in shared]
        alloc = [max(1, int(r)) for r in raw]
        # hand out the remainder to the largest fractional parts, then trim overshoot from the largest
        order = sorted(range(len(raw)), key=lambda i: raw[i] - int(raw[i]), reverse=True)
        i = 0
        while sum(alloc) < total and order:
            alloc[order[i % len(order)]] += 1
            i += 1
        while sum(alloc) > max(total, len(shared)):
            j = max(range(len(alloc)), key=lambda k: alloc[k])
            alloc[j] -= 1
    it = iter(alloc if shared else [])
    for p in strategy.phases:
        out.append(p.epochs if p.epochs is not None else next(it))
    return out


@dataclass
class LayerGroups:
    """Parameter names per layer group: ``backbone[0]`` is the stem, ``backbone[-1]`` the top; ``head`` separate."""

    backbone: list[list[str]]
    head: list[str]
    bn_modules: dict[str, int] = field(default_factory=dict)  # BN module name -> backbone group (-1 = head)

    def __len__(self) -> int:
        return len(self.backbone)


def layer_groups(model: nn.Module) -> LayerGroups:
    """Split a timm model into ordered layer groups with timm's coarse ``group_matcher``."""
    from timm.models._manipulate import group_parameters

    head_names = {f"{n}" for n, _ in _classifier_params(model)}
    if hasattr(model, "group_matcher"):
        grouped = group_parameters(model, model.group_matcher(coarse=True))
        ordered = [grouped[k] for k in sorted(grouped)]
    else:  # pragma: no cover - every supported backbone has a group_matcher
        ordered = [[n for n, _ in model.named_parameters()]]
    backbone = [[n for n in g if n not in head_names] for g in ordered]
    backbone = [g for g in backbone if g]
    owner = {n: i for i, g in enumerate(backbone) for n in g}
    bn = {}
    for name, mod in model.named_modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            key = f"{name}.weight" if mod.affine else None
            bn[name] = owner.get(key, -1) if key else _owner_by_prefix(name, owner)
    return LayerGroups(backbone=backbone, head=sorted(head_names), bn_modules=bn)


def _owner_by_prefix(name: str, owner: dict[str, int]) -> int:
    for pname, g in owner.items():
        if pname.startswith(name + "."):
            return g
    return -1


def _classifier_params(model: nn.Module):
    clf = model.get_classifier()
    prefix = None
    for name, mod in model.named_modules():
        if mod is clf:
            prefix = name
            break
    if prefix is None:  # pragma: no cover
        return []
    return [(f"{prefix}.{n}", p) for n, p in clf.named_parameters()]


@dataclass
class PhaseSetup:
    """The outcome of :func:`apply_phase`: optimizer param groups and the explicit BN state."""

    param_groups: list[dict]
    trainable_params: int
    frozen_bn: list[str]
    train_bn: list[str]
    trainable_groups: list[str]


def apply_phase(model: nn.Module, groups: LayerGroups, phase: Phase, lr: float, lr_decay: float,
                weight_decay: float) -> PhaseSetup:
    """Freeze/unfreeze groups for ``phase`` and build discriminative-LR param groups.

    The head has depth 0 and LR ``lr * phase.lr_scale``; the backbone group ``d`` levels
    below the head gets ``lr_scale * decay**d`` (timm's schedulers honour ``lr_scale``).
    Biases and 1-d weights get no weight decay.
    """
    g = len(groups)
    n_train = g if phase.depth >= 1 else int(round(phase.depth * g))
    decay = phase.lr_decay if phase.lr_decay is not None else lr_decay
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(False)
    # depth 0 = head, 1 = top backbone group, ...
    plan: list[tuple[str, list[str], int]] = [("head", groups.head, 0)]
    for k in range(n_train):
        gi = g - 1 - k
        plan.append((f"group{gi}", groups.backbone[gi], k + 1))
    param_groups, names = [], []
    for label, pnames, depth in plan:
        scale = phase.lr_scale * (decay ** depth)
        decay_p, no_decay_p = [], []
        for n in pnames:
            p = params[n]
            p.requires_grad_(True)
            (no_decay_p if p.ndim <= 1 else decay_p).append(p)
        for ps, wd in ((decay_p, weight_decay), (no_decay_p, 0.0)):
            if ps:
                param_groups.append({"params": ps, "lr_scale": scale, "weight_decay": wd, "name": label})
        names.append(label)
    trainable_backbone = set(range(g - n_train, g))
    frozen_bn = [m for m, gi in groups.bn_modules.items() if gi >= 0 and gi not in trainable_backbone]
    train_bn = [m for m, gi in groups.bn_modules.items() if gi < 0 or gi in trainable_backbone]
    n_params = sum(p.numel() for p in params.values() if p.requires_grad)
    return PhaseSetup(param_groups, n_params, frozen_bn, train_bn, names)


def set_train_mode(model: nn.Module, frozen_bn: list[str]) -> None:
    """``model.train()``, but BN layers of frozen groups stay in eval mode (running stats frozen)."""
    model.train()
    mods = dict(model.named_modules())
    for name in frozen_bn:
        mods[name].eval()
