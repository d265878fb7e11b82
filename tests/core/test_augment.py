import numpy as np
import pytest
import torch

from waferflow.train.augment import Augmenter, resolve_symmetries
from waferflow.train.config import TrainConfig
from waferflow.errors import ConfigError



def _vertical_scratch(disk_maps, n=64, size=32):
    maps = disk_maps(n, size)
    maps[maps == 2] = 1
    maps[:, 4:-4, 11] = 2
    return torch.from_numpy(maps)


def test_seed20_never_turns_vertical_scratch_horizontal(make_disk):
    syms = resolve_symmetries("auto", "seed20", ["x"])
    assert "rot90" not in syms
    aug = Augmenter(syms, die_noise=0.0, scale_jitter=0.1, generator=torch.Generator().manual_seed(1))
    x = _vertical_scratch(make_disk)
    for _ in range(10):
        y = aug(x)
        for m in y.numpy():
            rows, cols = np.nonzero(m == 2)
            assert (rows.max() - rows.min()) > 3 * (cols.max() - cols.min() + 1), "scratch is no longer vertical"
    # the full group (WM-811K) does rotate it
    aug4 = Augmenter(("hflip", "vflip", "rot90", "rot180"), generator=torch.Generator().manual_seed(1))
    y = aug4(x).numpy()
    horizontal = [np.ptp(np.nonzero(m == 2)[1]) > np.ptp(np.nonzero(m == 2)[0]) for m in y]
    assert any(horizontal) and not all(horizontal)


def test_values_and_off_wafer_mask_preserved_under_noise(make_disk):
    x = torch.from_numpy(make_disk(32, 24))
    aug = Augmenter(("hflip", "vflip", "rot90", "rot180"), die_noise=0.1, scale_jitter=0.0,
                    generator=torch.Generator().manual_seed(0))
    y = aug(x)
    assert set(torch.unique(y).tolist()) <= {0, 1, 2}
    assert torch.equal(y == 0, x == 0)  # a round wafer's mask is invariant to the symmetries
    assert (y != x).any()
    z = Augmenter((), die_noise=0.0, scale_jitter=0.2, generator=torch.Generator().manual_seed(0))(x)
    assert set(torch.unique(z).tolist()) <= {0, 1, 2} and z.dtype == torch.uint8


def test_resolve_symmetries():
    wm = ["Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none"]
    assert resolve_symmetries("auto", None, wm) == ("hflip", "vflip", "rot90", "rot180")
    assert resolve_symmetries("auto", None, ["a", "b"]) == ()
    assert resolve_symmetries("hflip,rot180", None, ["a"]) == ("hflip", "rot180")
    with pytest.raises(ConfigError):
        TrainConfig(symmetries="hflip,shear")


def _loc_blob(disk_maps, n=256, size=48):
    """Wafers with one fail blob at angle 0 (right of centre), everything else passing."""
    maps = disk_maps(n, size)
    maps[maps == 2] = 1
    c = (size - 1) / 2
    maps[:, int(c) - 2:int(c) + 4, int(c) + 12:int(c) + 17] = 2  # rows centred on c
    return torch.from_numpy(maps), c


def _blob_angles_and_radii(y: torch.Tensor, c: float) -> tuple[np.ndarray, np.ndarray]:
    angles, radii = [], []
    for m in y.numpy():
        rows, cols = np.nonzero(m == 2)
        dy, dx = rows.mean() - c, cols.mean() - c
        angles.append(np.degrees(np.arctan2(dy, dx)) % 360)
        radii.append(np.hypot(dy, dx))
    return np.array(angles), np.array(radii)


def off_grid(angles: np.ndarray) -> np.ndarray:
    """Degrees from the nearest multiple of 90."""
    return np.minimum(angles % 90, 90 - angles % 90)


def test_free_rotation_reaches_angles_the_symmetries_do_not(make_disk):
    x, c = _loc_blob(make_disk)
    d4 = ("hflip", "vflip", "rot90", "rot180")
    plain, _ = _blob_angles_and_radii(Augmenter(d4, generator=torch.Generator().manual_seed(0))(x), c)
    assert off_grid(plain).max() < 1  # D4 alone: the blob only ever sits at 0, 90, 180, 270 degrees
    aug = Augmenter(d4, generator=torch.Generator().manual_seed(0), rotation=45, rotation_prob=0.5)
    y = aug(x)
    assert set(torch.unique(y).tolist()) <= {0, 1, 2} and y.dtype == torch.uint8
    angles, radii = _blob_angles_and_radii(y, c)
    turned = off_grid(angles) > 5
    assert 0.25 < turned.mean() < 0.75  # about half the maps (rotation_prob), at angles D4 cannot reach
    assert off_grid(angles).max() > 30
    assert np.abs(radii - 14).max() < 2  # a rotation about the centre keeps the blob's distance from it
    # the wafer stays a wafer: off-wafer pixels stay off-wafer except for nearest-neighbour jitter at the rim
    assert ((y == 0) != (x == 0)).float().mean() < 0.01


def test_free_rotation_refused_or_off_where_rot90_could_change_a_label(make_disk, caplog):
    with pytest.raises(ValueError, match="rot90"):
        Augmenter(("hflip", "vflip"), rotation=45)
    with pytest.raises(ConfigError, match="rotation"):
        TrainConfig(rotation=200)
    with pytest.raises(ConfigError, match="rotation_prob"):
        TrainConfig(rotation_prob=1.5)
    from types import SimpleNamespace
    from waferflow.train.loop import _augmenter

    run = SimpleNamespace(cfg=TrainConfig(rotation=45), syms=("hflip", "vflip"))  # seed20-like data: no rot90
    with caplog.at_level("WARNING"):
        aug = _augmenter(run, torch.Generator().manual_seed(0))
    assert aug.rotation == 0 and "rotation=45" in caplog.text and "is off" in caplog.text
    run = SimpleNamespace(cfg=TrainConfig(rotation=45), syms=("hflip", "vflip", "rot90", "rot180"))
    assert _augmenter(run, torch.Generator().manual_seed(0)).rotation > 0
