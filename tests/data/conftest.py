"""Fixtures for the data tests: small real maps (tests/fixtures) and builders of bad inputs."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))  # crafted.py: builders shared with benchmarks/bench_fuzz.py

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
LSWMD_SMALL = FIXTURES / "LSWMD_small.pkl"
WM811K_SMALL = FIXTURES / "wm811k_small.npz"


@pytest.fixture
def lswmd_small() -> Path:
    """48-row LSWMD-format pickle (pandas 1.5.3, protocol 2): 36 labeled, 12 unlabeled, 8 lots."""
    return LSWMD_SMALL


@pytest.fixture
def wm811k_small() -> Path:
    """200 real WM-811K maps, variable layout, 9 classes."""
    return WM811K_SMALL


def lswmd_frame(n: int = 12, labeled_every: int = 1, seed: int = 0, labels=("Center", "Loc", "none")):
    """A modern-pandas DataFrame with LSWMD's columns and nested labels (unlabeled rows every k-th)."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        h, w = int(rng.integers(20, 30)), int(rng.integers(20, 30))
        m = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
        lab = labels[i % len(labels)]
        is_lab = labeled_every and i % labeled_every == 0
        rows.append({
            "waferMap": m, "dieSize": float(np.count_nonzero(m)), "lotName": f"lot{i // 3}",
            "waferIndex": float(i % 3 + 1),
            "trianTestLabel": np.array([["Training"]]) if is_lab else np.zeros((0, 0)),
            "failureType": np.array([[lab]]) if is_lab else np.zeros((0, 0)),
        })
    return pd.DataFrame(rows)


def write_pickle(obj, path: Path, protocol: int = 5) -> Path:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)
    return path


class RunsCommand:
    """A pickle payload that would run a shell command when loaded."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        import os

        return (os.system, (self.cmd,))


@pytest.fixture
def make_frame():
    """The :func:`lswmd_frame` builder."""
    return lswmd_frame


@pytest.fixture
def dump_pickle():
    """The :func:`write_pickle` helper."""
    return write_pickle


@pytest.fixture
def evil():
    """The :class:`RunsCommand` payload class."""
    return RunsCommand
