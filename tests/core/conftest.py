"""Tiny fixtures for the core tests: hand-sized synthetic maps, tiny models."""

import numpy as np
import pytest
import torch

from waferflow.data.contract import WaferDataset


def disk_maps(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Round wafers (1 = pass) with a few random fails (2); 0 off-wafer."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    r = (size - 1) / 2
    disk = (yy - r) ** 2 + (xx - r) ** 2 <= r ** 2
    maps = np.where(disk, 1, 0).astype(np.uint8)[None].repeat(n, 0)
    noise = (rng.random(maps.shape) < 0.05) & disk
    maps[noise] = 2
    return maps


LINE_CLASSES = ("vertical", "horizontal")


def line_dataset(n: int = 48, size: int = 16, seed: int = 0) -> WaferDataset:
    """Two easy classes: a vertical or a horizontal fail line through the wafer."""
    maps = disk_maps(n, size, seed)
    labels = np.arange(n) % 2
    c = size // 2
    for i in range(n):
        if labels[i] == 0:
            maps[i, 2:-2, c] = 2
        else:
            maps[i, c, 2:-2] = 2
    return WaferDataset(class_names=LINE_CLASSES, labels=labels, maps=maps, meta={})


def unlabeled_lines(n: int = 16, size: int = 16, seed: int = 6) -> WaferDataset:
    """:func:`line_dataset`'s maps without labels (e.g. validation maps a stage must refuse)."""
    return WaferDataset(class_names=LINE_CLASSES, labels=None, maps=line_dataset(n, size, seed).maps, meta={})


def lite0(seed: int, classes=LINE_CLASSES, size: int = 32, lineage=None):
    """A seeded, randomly initialised ``tf_efficientnet_lite0`` in eval mode and its spec (``weights_lineage`` set
    when ``lineage`` is given)."""
    from waferflow.models import create_model

    torch.manual_seed(seed)
    model, spec = create_model("tf_efficientnet_lite0", num_classes=len(classes), pretrained="none",
                               input_size=size, class_names=list(classes))
    if lineage is not None:
        spec = spec.replace(extra={**spec.extra, "weights_lineage": list(lineage)})
    return model.eval(), spec


@pytest.fixture
def tiny_ds():
    return line_dataset()


@pytest.fixture
def make_disk():
    return disk_maps


@pytest.fixture
def make_lines():
    return line_dataset


@pytest.fixture
def r18_file(tmp_path):
    """A resnet18 state_dict with 10 classes, as a 'pretrained' weights file for the transfer strategies."""
    from waferflow.models import create_model

    torch.manual_seed(0)
    m, _ = create_model("resnet18", 10, pretrained="none")
    f = tmp_path / "r18_source.pt"
    torch.save(m.state_dict(), f)
    return str(f)


@pytest.fixture
def killed_after_first_epoch(monkeypatch):
    """Call it for a context manager: ``train`` inside it stops with KeyboardInterrupt right after it writes its first
    ``last.pt``, as a kill after the checkpoint would."""
    from contextlib import contextmanager

    import waferflow.train.loop as loop

    save = loop._save

    def kill(path, obj):
        save(path, obj)
        if path.name == "last.pt":
            raise KeyboardInterrupt

    @contextmanager
    def killed():
        monkeypatch.setattr(loop, "_save", kill)
        try:
            yield
        finally:
            monkeypatch.setattr(loop, "_save", save)

    return killed


@pytest.fixture
def assert_same_run():
    """Asserts two training dirs hold the same run: best and last weights bit for bit, and the same history
    (but for the seconds each epoch took)."""
    import json

    def check(a, b):
        for name in ("weights.pt", "checkpoints/last.pt"):
            wa, wb = (torch.load(d / name, weights_only=True) for d in (a, b))
            wa, wb = wa.get("model", wa), wb.get("model", wb)
            assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name
        ha, hb = ([{k: v for k, v in row.items() if k != "seconds"} for row in json.loads((d / "history.json")
                                                                                        .read_text())]
                  for d in (a, b))
        assert ha == hb

    return check
