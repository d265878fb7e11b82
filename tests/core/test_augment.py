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
