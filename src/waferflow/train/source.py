"""The source model: ImageNet -> synthetic maps of the taxonomy that matches the data's classes.

A new fab's few hundred labels are not enough to move an ImageNet backbone to wafer maps; thousands of synthetic maps
of the same defect classes are. :func:`pretrain_source` generates them and trains the backbone on them; the
fine-tuning candidates of a run then start from that model. :func:`matching_taxonomy` decides whether the data has
a synthetic counterpart at all: its class names must be a taxonomy's, in the same order (other class sets and
other fabs' taxonomies have none, and their runs keep ImageNet-only candidates).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from waferflow.errors import ConfigError


@dataclass(frozen=True)
class SourceConfig:
    """The synthetic pretraining recipe (the source model's identity: changing any field makes a new one).

    Attributes:
        n_maps: Synthetic maps generated (85% train, 15% validation for early stopping).
        map_size: Their size in pixels.
        seed: Generation and training seed.
        train: TrainConfig overrides (strategy, epochs or steps, ...); backbone and input size come from the run.
        synth: ``waferflow.data.synth.SynthConfig`` overrides for the synthetic maps (on top of the taxonomy's
            defaults), e.g. ``{"pattern_ranges": {"loc": {"density": [0.35, 0.97]}}}``; {} = the generator as tuned.
    """

    n_maps: int = 8000
    map_size: int = 64
    seed: int = 0
    train: dict = field(default_factory=lambda: {"strategy": "full_finetune", "epochs": 6})
    synth: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.n_maps < 50:
            raise ConfigError(f"source.n_maps {self.n_maps} is too few synthetic maps to pretrain on; use >= 50")
        if self.map_size < 16:
            raise ConfigError(f"source.map_size must be >= 16, got {self.map_size}")
        self.synth_config()

    def synth_config(self, taxonomy: str | None = None):
        """The generator settings of the source maps of ``taxonomy`` (its defaults, then ``synth``); without a
        taxonomy, on the generator's plain defaults (to check the keys).

        Raises:
            ConfigError: an unknown or bad ``synth`` key, naming it.
        """
        from waferflow.config import load_config
        from waferflow.data.synth import SynthConfig, default_config, get_taxonomy

        if not isinstance(self.synth, dict):
            raise ConfigError(f"source.synth must be a mapping of generator settings, got {self.synth!r}; e.g. "
                              "{pattern_ranges: {loc: {radius: [0.1, 0.55]}}}")
        try:
            cfg = load_config(SynthConfig, overrides=dict(self.synth),
                              base=default_config(taxonomy) if taxonomy else SynthConfig())
            return cfg.validate(get_taxonomy(taxonomy).num_classes if taxonomy else None)
        except ConfigError as e:
            raise ConfigError(f"source.synth: {e}") from None


def matching_taxonomy(class_names: Sequence[str]) -> str | None:
    """The synthetic taxonomy whose class names are ``class_names`` in the same order, else None."""
    from waferflow.data.synth import TAXONOMIES

    names = tuple(class_names)
    return next((t for t, tax in TAXONOMIES.items() if tuple(tax.class_names) == names), None)


def recipe(cfg: SourceConfig, taxonomy: str, backbone: str, input_size: int, pretrained: str) -> dict[str, Any]:
    """Everything that defines a source model, as plain data (its registry key is a hash of this)."""
    from waferflow import __version__

    rec = {"taxonomy": taxonomy, "backbone": backbone, "input_size": input_size, "pretrained": pretrained,
           "n_maps": cfg.n_maps, "map_size": cfg.map_size, "seed": cfg.seed, "train": dict(cfg.train),
           "waferflow": __version__.split("+")[0]}
    synth = canonical_synth(cfg, taxonomy)
    if synth:  # only when it changes the maps, so the key of a recipe without it is what it was
        rec["synth"] = synth
    return rec


def canonical_synth(cfg: SourceConfig, taxonomy: str) -> dict[str, Any]:
    """``cfg.synth`` in one spelling: the generator settings that differ from ``taxonomy``'s defaults (pattern ranges
    as plain floats), so that equal settings make one registry key and settings that change nothing make none."""
    from waferflow.config import to_dict
    from waferflow.data.synth import default_config

    if not cfg.synth:
        return {}
    synth = cfg.synth_config(taxonomy)
    mine, base = to_dict(synth), to_dict(default_config(taxonomy))
    out = {k: v for k, v in mine.items() if k != "pattern_ranges" and v != base[k]}
    ranges = synth.changed_ranges()
    if ranges:
        out["pattern_ranges"] = ranges
    return out


def recipe_key(rec: dict[str, Any]) -> str:
    """A short content hash of a recipe (16 hex digits)."""
    return hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pretrain_source(cfg: SourceConfig, taxonomy: str, backbone: str, input_size: int, out_dir: str | Path,
                    pretrained: str = "auto", device: str = "auto", weights: str | None = None):
    """Generate ``cfg.n_maps`` synthetic maps of ``taxonomy`` and train ``backbone`` on them into ``out_dir``.

    Returns:
        The :class:`waferflow.train.TrainResult`; its model dir's spec says ``source_domain``.

    Raises:
        ConfigError: unknown taxonomy or a bad train override (before anything is generated).
    """
    from waferflow.config import load_config
    from waferflow.data.split import split_dataset
    from waferflow.data.synth import get_taxonomy, generate
    from waferflow.train.config import TrainConfig
    from waferflow.train.loop import train

    get_taxonomy(taxonomy)
    overrides = {**cfg.train, "backbone": backbone, "seed": cfg.seed, "pretrained": pretrained, "device": device}
    if input_size:
        overrides["input_size"] = input_size
    tcfg = load_config(TrainConfig, overrides=overrides)
    ds = generate(cfg.n_maps, size=cfg.map_size, seed=cfg.seed, taxonomy=taxonomy, config=cfg.synth_config(taxonomy))
    parts = split_dataset(ds, val=0.15, test=0.0, seed=cfg.seed)
    return train(tcfg, parts.train, parts.val, out_dir, weights=weights)
