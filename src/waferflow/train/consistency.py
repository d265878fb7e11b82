"""FixMatch-style consistency on unlabeled maps, inside the training loop's steps.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020. Each
step of a phase that trains through the whole model draws ``unlabeled_ratio`` unlabeled maps per labeled map:

- **weak view**: the data's symmetries only (a flip or a quarter turn, which keep every label). The model predicts
  it with no gradient and its BN layers in eval mode; where the prediction's confidence reaches
  ``unlabeled_threshold``, the predicted class is the map's target (recomputed every step, so targets follow the
  model as it learns, unlike self-training's fixed pseudo-labels).
- **strong view**: the same map through the run's own augmentation (symmetries, free rotation, die noise, scale
  jitter; with ``augment`` off, the map itself). It goes through the model in the same forward pass as the labeled batch (shared BN statistics, as in the
  paper), and its loss is cross-entropy with the run's class weights, masked to the confident maps and averaged over
  the unlabeled batch, times ``unlabeled_weight``.

Phases that train only the head (cached or frozen features) do not use it. Labels the unlabeled maps may carry are
never read: only their pixels reach this module.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from waferflow.errors import ConfigError, DataError
from waferflow.train.augment import Augmenter


class Consistency:
    """The unlabeled maps of one training run and the consistency term of its steps.

    Args:
        maps: uint8 [N, S, S] unlabeled maps at the model's input size.
        symmetries: The run's symmetries (the weak view draws from them only).
        weight, threshold, ratio: ``TrainConfig.unlabeled_weight`` / ``unlabeled_threshold`` / ``unlabeled_ratio``.
        class_weight: The run's per-class loss weights (None: unweighted).
        generator: The run's generator (draws and weak views; checkpointed with the run).
    """

    def __init__(self, maps: torch.Tensor, symmetries, weight: float, threshold: float, ratio: int,
                 class_weight: torch.Tensor | None, generator: torch.Generator):
        if maps.ndim != 3 or len(maps) == 0:
            raise DataError(f"consistency training needs unlabeled maps [N, S, S] with N >= 1; got "
                            f"{tuple(maps.shape)}")
        self.maps, self.weight, self.threshold, self.ratio = maps, float(weight), float(threshold), int(ratio)
        self.class_weight = class_weight
        self.g = generator
        self.weak = Augmenter(tuple(symmetries), generator=generator)
        self.confident = 0
        self.drawn = 0

    def draw(self, n_labeled: int) -> torch.Tensor:
        """``ratio`` x ``n_labeled`` unlabeled maps, drawn with replacement."""
        idx = torch.randint(len(self.maps), (self.ratio * n_labeled,), generator=self.g)
        return self.maps[idx]

    @torch.no_grad()
    def targets(self, model: torch.nn.Module, to_input, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, mask)`` of the maps ``x_u`` from the model's prediction on their weak views, in eval mode;
        every module's train / eval mode is put back as it was."""
        modes = [(m, m.training) for m in model.modules()]
        model.eval()
        try:
            prob = torch.softmax(model(to_input(self.weak(x_u))).float(), dim=1)
        finally:
            for m, training in modes:
                m.training = training
        conf, target = prob.max(1)
        mask = (conf >= self.threshold).float()
        self.confident += int(mask.sum())
        self.drawn += len(x_u)
        return target, mask

    def loss(self, logits_strong: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The weighted, masked cross-entropy of the strong views, averaged over the unlabeled batch."""
        w = None if self.class_weight is None else self.class_weight.to(logits_strong.device)
        per = F.cross_entropy(logits_strong.float(), target, weight=w, reduction="none")
        return self.weight * (per * mask).mean()

    def take_rate(self) -> float | None:
        """The share of drawn maps that had a confident target since the last call (None if none was drawn)."""
        rate = self.confident / self.drawn if self.drawn else None
        self.confident = self.drawn = 0
        return rate


def check_pool(cfg, unlabeled) -> None:
    """Raise ConfigError when ``cfg.unlabeled_weight`` is above 0 and ``unlabeled`` holds no maps (checked before
    the model is built or any weights are fetched)."""
    if cfg.unlabeled_weight and (unlabeled is None or len(unlabeled) == 0):
        raise ConfigError(f"unlabeled_weight={cfg.unlabeled_weight} trains on unlabeled maps, and this training was "
                          "given none; in a pipeline run set it under self_training.train (the students get the "
                          "pool), or set unlabeled_weight=0")


def build(cfg, unlabeled, input_size: int, symmetries, class_weight, generator) -> Consistency | None:
    """The run's :class:`Consistency`, or None when ``cfg.unlabeled_weight`` is 0.

    Raises:
        ConfigError: ``unlabeled_weight`` > 0 and no unlabeled maps were given.
    """
    check_pool(cfg, unlabeled)
    if not cfg.unlabeled_weight:
        return None
    maps = torch.from_numpy(unlabeled.resized(input_size))
    return Consistency(maps, symmetries, cfg.unlabeled_weight, cfg.unlabeled_threshold, cfg.unlabeled_ratio,
                       class_weight, generator)
