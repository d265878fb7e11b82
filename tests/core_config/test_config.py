"""The frozen-config loader: defaults, YAML, overrides, unknown keys, types."""

import dataclasses
from dataclasses import dataclass, field

import pytest

from waferflow.config import atomic_write_json, dump_config, load_config
from waferflow.errors import ConfigError


@dataclass(frozen=True)
class Inner:
    lr: float = 0.1
    names: tuple[str, ...] = ("a",)


@dataclass(frozen=True)
class Cfg:
    epochs: int = 3
    flag: bool = False
    inner: Inner = field(default_factory=Inner)
    maybe: int | None = None


def test_defaults_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("epochs: 5\ninner:\n  lr: 0.01\n")
    cfg = load_config(Cfg, p, ["inner.names=[x, y]", "flag=true", "maybe=4"])
    assert cfg == Cfg(epochs=5, flag=True, inner=Inner(lr=0.01, names=("x", "y")), maybe=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.epochs = 1  # frozen


def test_unknown_key_is_rejected_with_valid_keys_listed():
    with pytest.raises(ConfigError, match=r"unknown config key\(s\) inner.lrr.*inner.lr"):
        load_config(Cfg, overrides={"inner.lrr": 1})


@pytest.mark.parametrize("override", ["epochs=three", "flag=maybe", "inner.lr=fast", "inner=3"])
def test_wrong_types_are_rejected(override):
    with pytest.raises(ConfigError):
        load_config(Cfg, overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Cfg, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, bad)
    notmap = tmp_path / "list.yaml"
    notmap.write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, notmap)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Cfg, overrides=["epochs"])


def test_dump_roundtrip(tmp_path):
    cfg = load_config(Cfg, overrides={"epochs": 7})
    out = dump_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(Cfg, out) == cfg


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"a": object()})
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_progress_bars_follow_one_switch(monkeypatch):
    from waferflow.config import progress_enabled

    for off in ("0", "false", "No", " off "):
        monkeypatch.setenv("WAFERFLOW_PROGRESS", off)
        assert progress_enabled() is False
        assert progress_enabled(True) is True  # an explicit choice wins
    monkeypatch.setenv("WAFERFLOW_PROGRESS", "1")
    assert progress_enabled() is True and progress_enabled(False) is False
    monkeypatch.delenv("WAFERFLOW_PROGRESS")
    assert progress_enabled() is True
