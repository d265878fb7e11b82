"""Free rotation as a fixed pixel gather, for test-time augmentation.

Training turns maps by free angles with one nearest-neighbour warp about the centre (``train.rotation``:
``affine_grid`` + ``grid_sample(mode="nearest", padding_mode="zeros")``, off-wafer outside). For one map size and
one angle that warp is a fixed map from output pixels to input pixels, so test-time augmentation can apply it to
already preprocessed input as a gather (``gather_index``): in numpy (``rotate_input``) and as an ONNX ``Gather`` in
the TTA graph (``waferflow.export.tta_onnx``), with every pixel from outside the map set to the preprocessed
off-wafer value. The index is computed with the training warp itself, so the three agree exactly.
"""

from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Sequence

import numpy as np

from waferflow.errors import ConfigError

log = logging.getLogger(__name__)


def check_rotations(rotations: Sequence[float], symmetries: Sequence[str]) -> tuple[float, ...]:
    """The extra TTA angles as floats, checked: non-zero, distinct, in (-180, 180], and only where rot90 keeps
    every label (as for the training rotation).

    Raises:
        ConfigError: what is wrong and how to fix it.
    """
    try:
        out = tuple(float(r) for r in rotations)
    except (TypeError, ValueError):
        raise ConfigError(f"tta_rotations must be angles in degrees, got {rotations!r}") from None
    if not out:
        return out
    bad = [r for r in out if not (-180 < r <= 180) or r == 0 or not math.isfinite(r)]
    if bad or len(set(out)) != len(out):
        raise ConfigError(f"tta_rotations must be distinct non-zero angles in (-180, 180] degrees (the unturned "
                          f"maps always count); got {list(out)}")
    if "rot90" not in symmetries:
        raise ConfigError(f"tta_rotations {list(out)} need rot90 among the model's symmetries (classes that keep "
                          f"their label under any rotation); it has {list(symmetries)}. Drop tta_rotations")
    return out


def check_rotation_setting(key: str, rotations, tta: bool, needs: str) -> tuple[float, ...]:
    """A config's extra TTA angles (``key``, e.g. ``export.tta_rotations``), checked before any training: a list,
    angles as :func:`check_rotations` wants them (whether the model's classes allow rot90 is checked where the
    model is known, :func:`effective_rotations`), and only with ``tta`` on; ``needs`` says what turns them on.

    Raises:
        ConfigError: what is wrong and how to fix it.
    """
    if not isinstance(rotations, (list, tuple)):
        raise ConfigError(f"{key} must be a list of angles in degrees, got {rotations!r}; e.g. {key}=[45]")
    out = check_rotations(rotations, ("rot90",))
    if out and not tta:
        raise ConfigError(f"{key}={list(rotations)} turn maps for test-time augmentation, which is off: {needs}, "
                          f"or drop {key}")
    return out


def effective_rotations(key: str, rotations: Sequence[float],
                        symmetries: Sequence[str]) -> tuple[tuple[float, ...], dict]:
    """``(rotations, {})`` where rot90 is among the model's ``symmetries``; else ``((), {"rotations_off": why})``,
    logged: classes that keep their label only under flips could change label when turned (as ``train.rotation``
    is off for them).

    Raises:
        ConfigError: angles :func:`check_rotations` refuses.
    """
    out = check_rotations(rotations, ("rot90",))
    if not out or "rot90" in symmetries:
        return out, {}
    why = (f"{key} {list(rotations)} are off: this model's classes keep their label only under {list(symmetries)}, "
           "not under any rotation")
    log.warning("%s", why)
    return (), {"rotations_off": why}


@lru_cache(maxsize=32)
def gather_index(size: int, degrees: float) -> np.ndarray:
    """int64 [size * size]: for each output pixel (row-major) the input pixel the training warp reads when it turns
    a ``size`` x ``size`` map by ``degrees``, or ``size * size`` where it reads outside the map (off-wafer)."""
    import torch
    import torch.nn.functional as F

    a = math.radians(float(degrees))
    theta = torch.tensor([[[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]])
    ids = torch.arange(1, size * size + 1, dtype=torch.float32).view(1, 1, size, size)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    got = F.grid_sample(ids, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    idx = got.round().to(torch.int64).view(-1).numpy() - 1
    idx[idx < 0] = size * size
    idx.setflags(write=False)
    return idx


def rotate_input(x: np.ndarray, degrees: float, pad: Sequence[float]) -> np.ndarray:
    """Preprocessed input [N, C, S, S] turned by ``degrees`` as training turns maps; ``pad`` [C] is the
    preprocessed off-wafer value of each channel."""
    n, c, s, s2 = x.shape
    if s != s2:
        raise ConfigError(f"a free rotation needs square input; got {tuple(x.shape)}")
    flat = np.concatenate([x.reshape(n, c, s * s), np.broadcast_to(np.asarray(pad, x.dtype).reshape(1, c, 1),
                                                                  (n, c, 1))], axis=2)
    return np.ascontiguousarray(flat[:, :, gather_index(s, float(degrees))].reshape(n, c, s, s))
