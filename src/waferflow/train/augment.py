"""Batched, label-preserving augmentation of uint8 wafer maps (values 0/1/2).

Geometric transforms apply only where the taxonomy allows them (e.g. seed20 has
vertical and horizontal scratch as different classes, so no rot90). Die noise
flips a few pass<->fail dies and never touches off-wafer pixels. Scale jitter and
free rotation are one nearest-neighbour warp about the centre, so values stay in
{0, 1, 2}; free rotation needs rot90 among the symmetries.
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from waferflow.train.config import SYMMETRIES, parse_symmetries

log = logging.getLogger(__name__)

WM811K_CLASSES = frozenset(("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none"))


def resolve_symmetries(setting: str, taxonomy: str | None, class_names: Sequence[str]) -> tuple[str, ...]:
    """The symmetries augmentation may use.

    ``auto``: the taxonomy's ``allowed_symmetries`` when the taxonomy is known; all four for
    user data whose class names are WM-811K's; otherwise none (a warning says how to set them).
    """
    explicit = parse_symmetries(setting)
    if explicit is not None:
        return explicit
    if taxonomy:
        try:
            from waferflow.data.synth import TAXONOMIES
        except ImportError:  # pragma: no cover
            TAXONOMIES = {}
        if taxonomy in TAXONOMIES:
            return tuple(TAXONOMIES[taxonomy].allowed_symmetries)
    if set(class_names) <= WM811K_CLASSES:
        return SYMMETRIES
    log.warning(
        "no known symmetries for classes %s; geometric augmentation is off. Set symmetries=hflip,vflip,... "
        "to the transforms that keep every label", list(class_names)[:5],
    )
    return ()


def model_symmetries(spec, taxonomy: str | None = None) -> tuple[str, ...]:
    """The symmetries a trained model was augmented with (recorded in its spec), so test-time augmentation uses
    exactly the views it learned to treat alike; for older model dirs, resolved from its taxonomy / classes."""
    recorded = (getattr(spec, "extra", None) or {}).get("train", {}).get("symmetries")
    if recorded is not None:
        return tuple(recorded)
    return resolve_symmetries("auto", getattr(spec, "taxonomy", None) or taxonomy, spec.class_names)


class Augmenter:
    """Callable on a uint8 tensor [B, S, S]; randomness comes from one ``torch.Generator``."""

    def __init__(self, symmetries: Sequence[str], die_noise: float = 0.0, scale_jitter: float = 0.0,
                 generator: torch.Generator | None = None, rotation: float = 0.0, rotation_prob: float = 0.5):
        bad = [s for s in symmetries if s not in SYMMETRIES]
        if bad:
            raise ValueError(f"unknown symmetries {bad}")
        if rotation and "rot90" not in symmetries:
            raise ValueError(f"a free rotation of {rotation} degrees needs rot90 among the symmetries (classes that "
                             f"keep their label under rotation); got {tuple(symmetries)}")
        self.symmetries = tuple(symmetries)
        self.die_noise = float(die_noise)
        self.scale_jitter = float(scale_jitter)
        self.rotation = math.radians(float(rotation))
        self.rotation_prob = float(rotation_prob)
        self.g = generator if generator is not None else torch.Generator().manual_seed(0)
        if "rot90" in self.symmetries:
            self.rotations = (0, 1, 2, 3)
        elif "rot180" in self.symmetries:
            self.rotations = (0, 2)
        else:
            self.rotations = (0,)

    def _rand(self, *shape) -> torch.Tensor:
        return torch.rand(*shape, generator=self.g)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim != 3:
            raise ValueError(f"Augmenter needs uint8 [B, S, S]; got {x.dtype} {tuple(x.shape)}")
        x = x.clone()
        b = x.shape[0]
        if len(self.rotations) > 1:
            k = torch.randint(0, len(self.rotations), (b,), generator=self.g)
            for j, rot in enumerate(self.rotations):
                sel = (k == j).nonzero().flatten()
                if rot and len(sel) and x.shape[1] == x.shape[2]:
                    x[sel] = torch.rot90(x[sel], rot, dims=(1, 2))
        if "hflip" in self.symmetries:
            sel = (self._rand(b) < 0.5).nonzero().flatten()
            x[sel] = torch.flip(x[sel], dims=(2,))
        if "vflip" in self.symmetries:
            sel = (self._rand(b) < 0.5).nonzero().flatten()
            x[sel] = torch.flip(x[sel], dims=(1,))
        if self.scale_jitter > 0 or self.rotation > 0:
            x = self._warp(x)
        if self.die_noise > 0:
            flip = (self._rand(*x.shape) < self.die_noise) & (x > 0)
            x = torch.where(flip, 3 - x, x)
        return x

    def _warp(self, x: torch.Tensor) -> torch.Tensor:
        """Zoom by 1 +- scale_jitter and, for a rotation_prob share of the maps, rotate by +- rotation."""
        b = x.shape[0]
        s = 1 + (self._rand(b) * 2 - 1) * self.scale_jitter if self.scale_jitter > 0 else torch.ones(b)
        angle = torch.zeros(b)
        if self.rotation > 0:
            if x.shape[1] != x.shape[2]:
                raise ValueError(f"free rotation needs square maps; got {tuple(x.shape[1:])}")
            turn = self._rand(b) < self.rotation_prob
            angle = torch.where(turn, (self._rand(b) * 2 - 1) * self.rotation, angle)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.cos(angle) / s
        theta[:, 0, 1] = -torch.sin(angle) / s
        theta[:, 1, 0] = torch.sin(angle) / s
        theta[:, 1, 1] = torch.cos(angle) / s
        grid = F.affine_grid(theta, (b, 1, x.shape[1], x.shape[2]), align_corners=False)
        out = F.grid_sample(x[:, None].float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return out[:, 0].round().to(torch.uint8)
