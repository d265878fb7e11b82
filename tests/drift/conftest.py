"""Tiny fixtures for the drift tests: a random-init resnet18 at 32 px and its reference."""

from __future__ import annotations

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset, save_dataset
from waferflow.data.synth import SynthConfig, generate

TAX = "wm811k"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """(model dir, model, spec) of an untrained resnet18 (1 channel, 32 px) with WM-811K class names."""
    import torch

    from waferflow.models import create_model, load_model_dir, save_model_dir

    torch.manual_seed(0)
    names = generate(1, size=32, seed=0, taxonomy=TAX).class_names
    model, spec = create_model("resnet18", len(names), pretrained="none", in_chans=1, input_size=32,
                               class_names=names, taxonomy=TAX)
    d = tmp_path_factory.mktemp("model") / "model"
    save_model_dir(model, spec, d)
    m, s = load_model_dir(d)
    return d, m, s


@pytest.fixture(scope="session")
def tiny_reference(tiny_model, tmp_path_factory):
    """Reference folder: PCA on 400 clean synthetic maps, rows from 400 held-out ones."""
    from waferflow.drift.reference import build_reference_from_model

    d, m, s = tiny_model
    train = generate(400, size=32, seed=1, taxonomy=TAX)
    held = generate(400, size=32, seed=1, taxonomy=TAX, start=400)
    return build_reference_from_model(m, s, train, d / "drift_reference", model_ref=str(d), holdout_ds=held)


@pytest.fixture()
def clean_batch(tmp_path):
    ds = generate(300, size=32, seed=2, taxonomy=TAX)
    p = tmp_path / "clean.npz"
    save_dataset(ds, p)
    return p


@pytest.fixture()
def shifted_batch(tmp_path):
    """Background fail rate x3 and a bigger die grid: every readable feature moves."""
    cfg = SynthConfig(background_fail_rate=(0.25, 0.6), grid_range=(40, 64))
    ds = generate(300, size=32, seed=3, taxonomy=TAX, config=cfg)
    p = tmp_path / "shifted.npz"
    save_dataset(ds, p)
    return p


def unlabeled(ds: WaferDataset) -> WaferDataset:
    return WaferDataset(class_names=ds.class_names, maps=ds.maps)


@pytest.fixture()
def shifted_unlabeled(tmp_path):
    cfg = SynthConfig(background_fail_rate=(0.25, 0.6))
    ds = unlabeled(generate(200, size=32, seed=4, taxonomy=TAX, config=cfg))
    p = tmp_path / "shifted_unlabeled.npz"
    save_dataset(ds, p)
    return p


class Launcher:
    """A launcher that records its calls (stands in for kfp.local / kfp.Client in the fast tests)."""

    def __init__(self):
        self.calls = []

    def __call__(self, plan):
        self.calls.append(plan)
        return {"where": "recorded"}


@pytest.fixture()
def launcher():
    return Launcher()


def disc_map(n: int = 21) -> np.ndarray:
    """A round wafer on an n x n grid, all dies passing."""
    yy, xx = np.mgrid[:n, :n]
    c = (n - 1) / 2
    m = np.zeros((n, n), np.uint8)
    m[(yy - c) ** 2 + (xx - c) ** 2 <= (n / 2) ** 2] = 1
    return m
