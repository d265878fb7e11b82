"""The backbone registry and ``create_model``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Sequence

from waferflow.errors import ConfigError, WeightsError
from waferflow.models.spec import ModelSpec
from waferflow.models.weights import (
    OFFLINE_PACKAGES,
    describe_sources,
    fit_state_dict,
    hub_reachable,
    load_weights,
    offline_state_dict,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backbone:
    """A supported timm backbone; ``tier`` is 'cpu' (local profile) or 'gpu' (full profile)."""

    name: str
    tier: str


BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("resnet50", "gpu"),
        Backbone("efficientnet_b3", "gpu"),
        Backbone("vit_base_patch16_224", "gpu"),
        Backbone("tf_efficientnet_lite0", "cpu"),
        Backbone("tf_efficientnet_lite1", "cpu"),
        Backbone("tf_efficientnet_lite2", "cpu"),
        Backbone("resnet18", "cpu"),
    )
}

# Spellings of "ImageNet weights from wherever they can be had" (hub, then offline).
AUTO = ("auto", "imagenet", "pretrained")


def check_backbone(name: str) -> None:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; supported: {', '.join(BACKBONES)}")


def data_config(backbone: str) -> dict:
    """The backbone's own pretrained input size, mean and std (timm's data config)."""
    import timm
    import torch
    from timm.data import resolve_model_data_config

    with torch.device("meta"):
        m = timm.create_model(backbone, pretrained=False)
    return resolve_model_data_config(m)


def _norm_for(in_chans: int, mean: Sequence[float], std: Sequence[float]) -> tuple[tuple, tuple]:
    if in_chans == 3:
        return tuple(mean), tuple(std)
    # timm sums the RGB stem weights for in_chans=1, so one channel sees the mean normalization
    return (sum(mean) / len(mean),), (sum(std) / len(std),)


def create_model(
    backbone: str,
    num_classes: int,
    pretrained: str = "auto",
    in_chans: int = 3,
    input_size: int | None = None,
    class_names: Sequence[str] | None = None,
    taxonomy: str | None = None,
    rotation_invariant: bool = False,
    tracking_uri: str | None = None,
    drop_rate: float | None = None,
    drop_path_rate: float = 0.0,
):
    """Build a timm backbone with ``num_classes`` outputs and load its weights.

    Args:
        backbone: A name from :data:`BACKBONES`.
        num_classes: Outputs of the (new) head.
        pretrained: ``"auto"`` (ImageNet: timm hub if reachable, else the offline package), ``"hub"``,
            ``"offline"``, ``"none"`` (random init, only when asked for), or an explicit source: a state_dict file,
            a waferflow model dir, a URL, or an MLflow URI (``models:/name@champion``, ``runs:/...``).
            A head whose class count differs from the source is re-initialized.
        in_chans: 3 (maps replicated to RGB) or 1 (timm's stem adaptation sums the RGB filters).
        input_size: Square input size; None = the backbone's own pretrained size.
        class_names: Names of the classes (default ``class0..``).
        taxonomy, rotation_invariant: Recorded in the spec.
        tracking_uri: MLflow tracking URI for MLflow sources.
        drop_rate: Optional classifier dropout.
        drop_path_rate: Stochastic depth in training (0 = off; timm's ``drop_path_rate``).

    Returns:
        ``(model, ModelSpec)``; the spec's ``weights_source`` says where the weights came from.

    Raises:
        WeightsError: pretrained weights were asked for and cannot be had (never falls back to random).
        ConfigError: unknown backbone or bad arguments.
    """
    import timm

    check_backbone(backbone)
    if in_chans not in (1, 3):
        raise ConfigError(f"in_chans must be 1 or 3, got {in_chans}")
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
    dc = data_config(backbone)
    size = int(input_size or dc["input_size"][-1])
    mean, std = _norm_for(in_chans, dc["mean"], dc["std"])
    names = tuple(class_names) if class_names is not None else tuple(f"class{i}" for i in range(num_classes))
    kw = {"num_classes": num_classes, "in_chans": in_chans}
    if drop_rate is not None:
        kw["drop_rate"] = drop_rate
    if drop_path_rate:
        kw["drop_path_rate"] = drop_path_rate
    src = str(pretrained)
    if src == "none":
        model, source, extra = timm.create_model(backbone, pretrained=False, **kw), "random", {}
    elif src in AUTO or src in ("hub", "offline"):
        model, source, extra = _imagenet_model(backbone, src, kw)
    else:
        model, source, extra = _model_from_source(backbone, src, kw, tracking_uri)
    spec = ModelSpec(
        backbone=backbone,
        num_classes=num_classes,
        class_names=names,
        input_size=size,
        in_chans=in_chans,
        mean=mean,
        std=std,
        taxonomy=taxonomy,
        rotation_invariant=rotation_invariant,
        weights_source=source,
        extra=extra,
    )
    log.info("created %s (%d classes, %d px, in_chans=%d) weights=%s", backbone, num_classes, size, in_chans, source)
    return model, spec


def _imagenet_model(backbone: str, src: str, kw: dict) -> tuple[Any, str, dict]:
    """ImageNet weights: the timm hub when reachable (unless ``offline``), else the offline package; never random."""
    import timm

    tried = []
    if src != "offline":
        ok, why = hub_reachable()
        if ok:
            try:
                model = timm.create_model(backbone, pretrained=True, **kw)
                return model, f"hub:{model.pretrained_cfg.get('hf_hub_id') or backbone}", {}
            except Exception as e:  # network or hub error: say so, try the next source
                tried.append(f"hub ({type(e).__name__}: {str(e)[:120]})")
        else:
            tried.append(f"hub ({why})")
        if src == "hub":
            raise WeightsError(f"timm hub weights for {backbone} unavailable: {tried}. {describe_sources(backbone)}")
    if backbone not in OFFLINE_PACKAGES:
        tried.append(f"offline (no offline package for {backbone})")
        raise WeightsError(
            f"no pretrained weights for {backbone}; tried: {'; '.join(tried)}. {describe_sources(backbone)} "
            f"E.g. download timm's {backbone} weights on a connected machine and pass --weights FILE.pt"
        )
    lw = offline_state_dict(backbone)
    model = timm.create_model(backbone, pretrained=False, **kw)
    return model, lw.source, {"weights_fit": fit_state_dict(model, lw.state_dict, lw.source)}


def _model_from_source(backbone: str, src: str, kw: dict, tracking_uri: str | None) -> tuple[Any, str, dict]:
    """Weights from an explicit source: a file, a model dir, a URL or an MLflow URI."""
    import timm

    lw = load_weights(src, backbone, tracking_uri=tracking_uri)
    model = timm.create_model(backbone, pretrained=False, **kw)
    fit = fit_state_dict(model, lw.state_dict, lw.source)
    fit["head_untrained"] = fit["head_reinitialized"] or not lw.head_trained
    extra: dict = {"weights_fit": fit}
    if lw.lineage:
        extra["weights_lineage"] = lw.lineage
    return model, lw.source, extra
