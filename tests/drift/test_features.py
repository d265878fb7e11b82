"""Readable features on hand-made maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from waferflow.data.contract import WaferDataset
from waferflow.drift.features import READABLE_FEATURES, map_features
from waferflow.errors import DataError

from .conftest import disc_map


def _ds(*maps):
    return WaferDataset(class_names=("a",), maps=np.stack(maps))


def test_fail_ratio_clusters_and_grid_on_a_square_map():
    m = np.ones((10, 10), np.uint8)
    m[1:3, 1:3] = 2  # cluster of 4
    m[6, 6] = 2  # single die
    m[7, 7] = 2  # diagonal neighbour: same cluster under 8-connectivity
    f = map_features(_ds(m)).iloc[0]
    assert list(map_features(_ds(m)).columns) == list(READABLE_FEATURES)
    assert f.fail_ratio == pytest.approx(6 / 100)
    assert f.n_clusters == 2
    assert f.largest_cluster == pytest.approx(4 / 100)
    assert (f.die_rows, f.die_cols, f.n_dies) == (10, 10, 100)


def test_ring_profile_and_edge_ratio():
    base = disc_map(21)
    center = base.copy()
    center[9:12, 9:12] = 2
    edge = base.copy()
    on = base > 0
    pad = np.pad(on, 1)
    interior = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
    edge[on & ~interior] = 2
    f = map_features(_ds(center, edge))
    c, e = f.iloc[0], f.iloc[1]
    assert c.ring_1 > 0 and c.ring_2 == 0 and c.ring_3 == 0 and c.ring_4 == 0
    assert c.edge_ratio == 0
    assert e.edge_ratio == pytest.approx(1.0)
    assert e.ring_4 > 0.5 and e.ring_1 == 0
    # equal-area rings: each ring holds about a quarter of the dies
    assert c.n_dies == e.n_dies == on.sum()


def test_quadrant_and_angular_balance():
    base = disc_map(21)
    one = base.copy()
    one[2:8, 2:8][base[2:8, 2:8] > 0] = 2  # upper-left only
    spread = base.copy()
    for sl in [(slice(2, 5), slice(2, 5)), (slice(2, 5), slice(16, 19)), (slice(16, 19), slice(2, 5)),
               (slice(16, 19), slice(16, 19))]:
        spread[sl][base[sl] > 0] = 2
    f = map_features(_ds(one, spread))
    assert f.quadrant_imbalance[0] == pytest.approx(1.0)
    assert f.quadrant_imbalance[1] == pytest.approx(0.0)
    assert f.angular_conc[0] > 0.9
    assert f.angular_conc[1] < 0.05


def test_no_fails_gives_zeros_not_nan():
    f = map_features(_ds(disc_map(15)))
    assert not f.isna().any().any()
    assert f.fail_ratio[0] == 0 and f.n_clusters[0] == 0 and f.quadrant_imbalance[0] == 0


def test_variable_size_maps_use_their_own_grid():
    a = disc_map(15)
    a[7, 7] = 2
    b = disc_map(23)
    b[3:6, 10:13][b[3:6, 10:13] > 0] = 2
    flat = np.concatenate([a.ravel(), b.ravel(), a.ravel()])
    ds = WaferDataset(class_names=("x",), maps_flat=flat, shapes=np.array([[15, 15], [23, 23], [15, 15]]),
                      offsets=np.array([0, 225, 225 + 529, 225 + 529 + 225]))
    f = map_features(ds)
    assert list(f.die_rows) == [15, 23, 15]
    pd_a = map_features(_ds(a)).iloc[0]
    pd_b = map_features(_ds(b)).iloc[0]
    np.testing.assert_allclose(f.iloc[0].to_numpy(), pd_a.to_numpy())
    np.testing.assert_allclose(f.iloc[1].to_numpy(), pd_b.to_numpy())
    np.testing.assert_allclose(f.iloc[2].to_numpy(), pd_a.to_numpy())


def test_empty_batch_is_refused():
    ds = WaferDataset(class_names=("a",), maps=np.zeros((0, 8, 8), np.uint8))
    with pytest.raises(DataError, match="no wafer maps"):
        map_features(ds)


def test_unknown_die_coding_is_refused():
    m = disc_map(9)
    m[4, 4] = 3
    with pytest.raises(DataError, match="die value 3"):
        map_features(_ds(m))
