"""The source model's recipe (waferflow.train.source)."""

from __future__ import annotations

import pytest


def test_the_source_recipe_names_its_generator_settings_only_when_set(monkeypatch, tmp_path):
    """A recipe without generator settings keeps the registry key it always had (registered source models are still
    found); with them, it is another source model, and pretraining draws its maps with them."""
    from waferflow.data import synth
    from waferflow.train import source as src_mod
    from waferflow.train.source import SourceConfig, recipe, recipe_key

    plain = recipe(SourceConfig(), "wm811k", "tf_efficientnet_lite0", 80, "auto")
    assert set(plain) == {"taxonomy", "backbone", "input_size", "pretrained", "n_maps", "map_size", "seed", "train",
                          "waferflow"}
    wide = SourceConfig(synth={"pattern_ranges": {"loc": {"density": [0.35, 0.97]}}})
    rec = recipe(wide, "wm811k", "tf_efficientnet_lite0", 80, "auto")
    assert rec["synth"] == wide.synth and recipe_key(rec) != recipe_key(plain)

    seen = {}

    def fake_generate(n, size, seed, taxonomy, config):
        seen["ranges"] = config.resolved_ranges()["loc"]
        raise RuntimeError("stop after the maps")

    monkeypatch.setattr(synth, "generate", fake_generate)
    with pytest.raises(RuntimeError, match="stop after the maps"):
        src_mod.pretrain_source(wide, "wm811k", "tf_efficientnet_lite0", 32, tmp_path, pretrained="none")
    assert seen["ranges"]["density"] == (0.35, 0.97)
    assert seen["ranges"]["radius"] == synth.PATTERN_RANGES["loc"]["radius"]
