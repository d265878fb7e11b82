"""The source model's recipe (waferflow.train.source)."""

from __future__ import annotations

import pytest


def test_the_source_recipe_names_its_generator_settings_only_when_set(monkeypatch, tmp_path):
    """A recipe without generator settings keeps the registry key it always had (registered source models are still
    found); with them, it is another source model, and pretraining draws its maps with them."""
    from waferflow.data import synth
    from waferflow.train import source as src_mod
    from waferflow.errors import ConfigError
    from waferflow.train.source import SourceConfig, recipe, recipe_key

    plain = recipe(SourceConfig(), "wm811k", "tf_efficientnet_lite0", 80, "auto")
    assert set(plain) == {"taxonomy", "backbone", "input_size", "pretrained", "n_maps", "map_size", "seed", "train",
                          "waferflow"}
    wide = SourceConfig(synth={"pattern_ranges": {"loc": {"density": [0.35, 0.97]}}})
    rec = recipe(wide, "wm811k", "tf_efficientnet_lite0", 80, "auto")
    assert rec["synth"] == wide.synth and recipe_key(rec) != recipe_key(plain)
    # one spelling: equal settings make one key, settings that change nothing make none
    for same in ({"pattern_ranges": {"loc": {"density": (0.35, 0.97)}}, "grid_skew": 3.0},
                 {"pattern_ranges": {"loc": {"density": [0.35, 0.97], "radius": [0.18, 0.36]}, "scratch": {}}}):
        assert recipe_key(recipe(SourceConfig(synth=same), "wm811k", "tf_efficientnet_lite0", 80, "auto")) == \
            recipe_key(rec), same
    noop = SourceConfig(synth={"pattern_ranges": {}, "grid_range": [25, 64]})
    assert recipe(noop, "wm811k", "tf_efficientnet_lite0", 80, "auto") == plain
    # the taxonomy's own defaults are the reference: the wm811k background is seed20's change
    bg = SourceConfig(synth={"background_fail_rate": [0.06, 0.24]})
    assert "synth" not in recipe(bg, "wm811k", "tf_efficientnet_lite0", 80, "auto")
    assert recipe(bg, "seed20", "tf_efficientnet_lite0", 80, "auto")["synth"] == {"background_fail_rate": [0.06, 0.24]}
    with pytest.raises(ConfigError, match="source.synth must be a mapping"):
        SourceConfig(synth=None)

    seen = {}

    def fake_generate(n, size, seed, taxonomy, config):
        seen["ranges"] = config.resolved_ranges()["loc"]
        raise RuntimeError("stop after the maps")

    monkeypatch.setattr(synth, "generate", fake_generate)
    with pytest.raises(RuntimeError, match="stop after the maps"):
        src_mod.pretrain_source(wide, "wm811k", "tf_efficientnet_lite0", 32, tmp_path, pretrained="none")
    assert seen["ranges"]["density"] == (0.35, 0.97)
    assert seen["ranges"]["radius"] == synth.PATTERN_RANGES["loc"]["radius"]
