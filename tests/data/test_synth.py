"""Tests of the synthetic wafer-map generator (waferflow.data.synth)."""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
import multiprocessing as mp

import numpy as np
import pytest
from scipy import ndimage

from waferflow.data.contract import WaferDataset, resize_nearest
from waferflow.data.synth import (
    CHUNK,
    GENERATOR,
    NOVEL_PATTERNS,
    PATTERNS,
    SEED20_MIXTURES,
    TAXONOMIES,
    SynthConfig,
    generate,
    generate_pattern,
)
from waferflow.errors import ConfigError, DataError

NO_BG = SynthConfig(background_fail_rate=(0.0, 0.0))


def _coords(size: int):
    c = (np.arange(size) + 0.5) / (size / 2) - 1
    x, y = np.meshgrid(c, c)
    r = np.hypot(x, y)
    octant = (((np.arctan2(y, x) + np.pi) / (2 * np.pi) * 8).astype(int)) % 8
    return r, octant


# ----------------------------------------------------------------- basics


@pytest.mark.parametrize("taxonomy", ["seed20", "wm811k"])
def test_shapes_dtype_values_labels_meta(taxonomy):
    ds = generate(300, size=48, seed=0, taxonomy=taxonomy)
    assert isinstance(ds, WaferDataset) and ds.fixed_size
    assert ds.maps.shape == (300, 48, 48) and ds.maps.dtype == np.uint8
    assert set(np.unique(ds.maps).tolist()) == {0, 1, 2}
    assert ds.labels.shape == (300,) and ds.labels.min() >= 0 and ds.labels.max() < len(ds.class_names)
    assert ds.class_names == TAXONOMIES[taxonomy].class_names
    assert ds.meta == {"source": "synthetic", "taxonomy": taxonomy, "seed": 0, "generator": GENERATOR}
    ds.validate(require_labels=True)
    # Circular wafer: corners off-wafer, centre on-wafer, and about pi/4 of the square is wafer.
    assert (ds.maps[:, 0, 0] == 0).all() and (ds.maps[:, 47, 47] == 0).all()
    assert (ds.maps[:, 24, 24] > 0).all()
    fill = (ds.maps > 0).mean(axis=(1, 2))
    assert 0.70 < fill.min() and fill.max() < 0.86


def test_class_names_exact():
    assert TAXONOMIES["wm811k"].class_names == (
        "Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none")
    s20 = TAXONOMIES["seed20"]
    assert s20.class_names[:10] == ("none", "center", "edge-loc", "vertical scratch", "horizontal scratch",
                                    "edge-ring", "random clusters", "loc", "near-full", "donut")
    assert len(s20.class_names) == 20 and len(set(s20.class_names)) == 20
    assert s20.recipes[10:] == SEED20_MIXTURES and len(set(map(frozenset, SEED20_MIXTURES))) == 10
    assert "rot90" not in s20.allowed_symmetries
    assert set(TAXONOMIES["wm811k"].allowed_symmetries) == {"hflip", "vflip", "rot90", "rot180"}
    for tax in TAXONOMIES.values():
        f = np.asarray(tax.default_freqs)
        assert abs(f.sum() - 1) < 1e-9
        assert f[tax.class_names.index("none")] == f.max()
        assert f[tax.class_names.index("near-full" if "near-full" in tax.class_names else "Near-full")] == f.min()


def test_die_blocks_are_nearest_neighbour_renders():
    # A map at 3x the size must be the nearest-neighbour blow-up of the die grid; with one
    # grid size the 64 px render of that grid size equals resize_nearest of a 64-die map.
    cfg = SynthConfig(grid_range=(32, 32))
    small = generate(20, size=32, seed=3, config=cfg).maps  # one pixel per die
    big = generate(20, size=96, seed=3, config=cfg).maps
    assert np.array_equal(resize_nearest(small, 96), big)


# ----------------------------------------------------------- determinism


def test_chunking_invariance_bit_for_bit():
    n = 2 * CHUNK + 300
    full = generate(n, size=32, seed=7, taxonomy="wm811k")
    cuts = [0, 1, 1000, CHUNK + 5, 2 * CHUNK, n]
    parts = [generate(b - a, size=32, seed=7, taxonomy="wm811k", start=a) for a, b in zip(cuts, cuts[1:])]
    assert np.array_equal(full.maps, np.concatenate([p.maps for p in parts]))
    assert np.array_equal(full.labels, np.concatenate([p.labels for p in parts]))
    one = generate(1, size=32, seed=7, taxonomy="wm811k", start=CHUNK - 1)
    assert np.array_equal(one.maps[0], full.maps[CHUNK - 1])


def test_same_across_processes():
    # Fresh interpreters (spawn) generating halves of a stream give the same bytes as one call here.
    with ProcessPoolExecutor(max_workers=2, mp_context=mp.get_context("spawn")) as ex:
        futs = [ex.submit(generate, 700, size=32, seed=5, start=0), ex.submit(generate, 600, size=32, seed=5, start=700)]
        parts = [f.result() for f in futs]
    ds = generate(1300, size=32, seed=5)
    assert np.array_equal(np.concatenate([p.maps for p in parts]), ds.maps)
    assert np.array_equal(np.concatenate([p.labels for p in parts]), ds.labels)


def test_same_seed_same_bytes_different_seed_different_maps():
    a = generate(200, size=32, seed=1)
    b = generate(200, size=32, seed=1)
    c = generate(200, size=32, seed=2)
    assert a.maps.tobytes() == b.maps.tobytes() and np.array_equal(a.labels, b.labels)
    assert (a.maps != c.maps).reshape(200, -1).any(1).mean() > 0.95
    assert not np.array_equal(a.labels, c.labels)


def test_maps_are_diverse():
    ds = generate(400, size=128, seed=0, taxonomy="wm811k")
    flat = ds.maps.reshape(400, -1)
    assert len({row.tobytes() for row in flat}) == 400
    assert len(np.unique((ds.maps > 0).sum((1, 2)))) > 20  # grid sizes vary


# ---------------------------------------------------------- frequencies


def test_class_frequencies_follow_config():
    freqs = (5, 0, 3, 0, 2, 0, 0, 0, 10)  # unnormalized on purpose
    ds = generate(6000, size=16, seed=3, taxonomy="wm811k", config=SynthConfig(class_freqs=freqs))
    got = np.bincount(ds.labels, minlength=9) / 6000
    want = np.asarray(freqs) / sum(freqs)
    assert np.abs(got - want).max() < 0.025
    assert got[[1, 3, 5, 6, 7]].sum() == 0  # zero-frequency classes never appear


def test_default_frequencies_are_the_taxonomy_default():
    ds = generate(6000, size=16, seed=4)
    got = np.bincount(ds.labels, minlength=20) / 6000
    assert np.abs(got - np.asarray(TAXONOMIES["seed20"].default_freqs)).max() < 0.025


# ------------------------------------------------------------ patterns


def _center(m, r, o):
    return (m == 2)[r < 0.1].mean() >= 0.3


def _donut(m, r, o):
    f = m == 2
    band = (r > 0.25) & (r < 0.65) & (m > 0)
    return min(f[band & (o == k)].mean() for k in range(8)) >= 0.08 and f[r < 0.1].mean() < 0.3


def _edge_ring(m, r, o):
    w = m > 0
    rim = w & ~ndimage.binary_erosion(w, border_value=0)
    return (m[rim] == 2).mean() >= 0.35


def _edge_loc(m, r, o):
    f = m == 2
    band = (r > 0.8) & (m > 0)
    return max(f[band & (o == k)].mean() for k in range(8)) >= 0.3


def _line(m, vertical, length=20):
    # Bridge dotted gaps along the line, then keep only straight runs of ``length`` pixels.
    f = ndimage.binary_closing(m == 2, structure=np.ones((5, 1) if vertical else (1, 5)))
    return bool(ndimage.binary_opening(f, structure=np.ones((length, 1) if vertical else (1, length))).any())


SIGNATURES = {
    "center": _center, "donut": _donut, "edge-ring": _edge_ring, "edge-loc": _edge_loc,
    "vertical-scratch": lambda m, r, o: _line(m, True), "horizontal-scratch": lambda m, r, o: _line(m, False),
}
# (mixture, pattern whose per-map signature must show) where the partner alone does not trigger it.
PER_MAP_CHECKS = [
    (("center", "edge-ring"), "center"), (("center", "edge-ring"), "edge-ring"),
    (("donut", "vertical-scratch"), "donut"),
    (("loc", "edge-loc"), "edge-loc"),
    (("center", "horizontal-scratch"), "center"),
    (("edge-ring", "loc"), "edge-ring"),
    (("donut", "edge-loc"), "donut"), (("donut", "edge-loc"), "edge-loc"),
    (("edge-ring", "vertical-scratch"), "edge-ring"),
    (("edge-loc", "horizontal-scratch"), "edge-loc"), (("edge-loc", "horizontal-scratch"), "horizontal-scratch"),
    (("loc", "vertical-scratch"), "vertical-scratch"),
    (("donut", "edge-ring"), "donut"), (("donut", "edge-ring"), "edge-ring"),
]


def test_mixture_maps_carry_both_patterns_signatures():
    tax = TAXONOMIES["seed20"]
    size = 64
    ds = generate(2500, size=size, seed=5, config=NO_BG)
    r, o = _coords(size)
    rate = {}

    def sig_rate(recipe, pattern):
        key = (recipe, pattern)
        if key not in rate:
            idx = np.flatnonzero(ds.labels == tax.recipes.index(recipe))
            assert len(idx) >= 30
            rate[key] = np.mean([SIGNATURES[pattern](ds.maps[i], r, o) for i in idx])
        return rate[key]

    for mix, pattern in PER_MAP_CHECKS:
        partner = mix[1] if mix[0] == pattern else mix[0]
        assert sig_rate(mix, pattern) >= 0.7, (mix, pattern, rate)
        assert sig_rate((partner,), pattern) <= 0.25, (partner, pattern, rate)


def test_every_mixture_class_is_its_fixed_pair():
    # With independent patterns the mean fail map of A+B is mA + mB - mA*mB. The documented pair must
    # explain each mixture's mean map better than any other pair of single patterns; a pair drawn at
    # random per map would match none of them.
    tax = TAXONOMIES["seed20"]
    cfg = SynthConfig(background_fail_rate=(0.0, 0.0), class_freqs=(0.0,) + (1.0,) * 19)
    ds = generate(8000, size=32, seed=11, config=cfg)
    fails = (ds.maps == 2).astype(np.float64)
    mean = {tax.recipes[k]: fails[ds.labels == k].mean(0) for k in range(1, 20)}
    singles = [tax.recipes[k][0] for k in range(1, 10)]
    for k in range(10, 20):
        errs = {
            frozenset((p, q)): np.sqrt(
                ((mean[(p,)] + mean[(q,)] - mean[(p,)] * mean[(q,)] - mean[tax.recipes[k]]) ** 2).mean())
            for p, q in itertools.combinations(singles, 2)
        }
        best = min(errs, key=errs.get)
        assert best == frozenset(tax.recipes[k]), (tax.class_names[k], sorted(best), errs[best])


def _orientation(m):
    ys, xs = np.nonzero(m == 2)
    return float(np.log((ys.std() + 1e-3) / (xs.std() + 1e-3)))


def test_vertical_and_horizontal_scratch_swap_under_rot90():
    v = generate_pattern("vertical-scratch", 100, size=64, seed=3, config=NO_BG)
    h = generate_pattern("horizontal-scratch", 100, size=64, seed=4, config=NO_BG)
    ov = np.array([_orientation(m) for m in v])
    oh = np.array([_orientation(m) for m in h])
    orot = np.array([_orientation(np.rot90(m)) for m in v])
    assert (ov > 0.7).all() and (oh < -0.7).all()  # rows spread far more than columns, and vice versa
    assert (orot < -0.7).all()  # a rot90'd vertical scratch is a horizontal one
    assert (np.array([_orientation(np.rot90(m, 2)) for m in v]) > 0.7).all()  # rot180 keeps it vertical


def test_wm811k_scratches_take_any_angle():
    maps = generate_pattern("scratch", 150, size=64, seed=2, config=NO_BG)
    o = np.array([_orientation(m) for m in maps if (m == 2).sum() >= 5])
    assert (o > 0.7).mean() > 0.1 and (o < -0.7).mean() > 0.1 and (np.abs(o) < 0.5).mean() > 0.1


def test_pattern_fail_fractions_are_realistic():
    # Fail fraction of on-wafer dies per pattern, against WM-811K's per-class ranges.
    def frac(p):
        m = generate_pattern(p, 200, size=64, seed=1)
        return np.median((m == 2).sum((1, 2)) / (m > 0).sum((1, 2)))

    assert 0.02 < frac("none") < 0.2
    assert frac("near-full") > 0.75
    assert 0.3 < frac("random") < 0.7
    for p in ("center", "donut", "edge-loc", "edge-ring", "loc", "scratch"):
        assert frac("none") < frac(p) < 0.5, p


@pytest.mark.parametrize("pattern", PATTERNS)
def test_generate_pattern_every_name(pattern):
    m = generate_pattern(pattern, 8, size=32, seed=0)
    assert m.shape == (8, 32, 32) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 1, 2}
    assert np.array_equal(m, generate_pattern(pattern, 8, size=32, seed=0))


def test_novel_patterns_are_outside_every_taxonomy_and_distinct():
    used = {p for t in TAXONOMIES.values() for r in t.recipes for p in r}
    assert NOVEL_PATTERNS and not set(NOVEL_PATTERNS) & used
    half = generate_pattern("half-wafer", 50, size=64, seed=0, config=NO_BG)
    f = (half == 2).sum((1, 2)) / (half > 0).sum((1, 2))
    assert ((f > 0.25) & (f < 0.7)).all()
    cb = generate_pattern("checkerboard", 50, size=64, seed=0, config=NO_BG)
    f = (cb == 2).sum((1, 2)) / (cb > 0).sum((1, 2))
    assert ((f > 0.2) & (f < 0.6)).all()


def test_config_knobs_shift_the_maps():
    flat = dict(background_grid_exponent=0.0, edge_fail_factor=(1.0, 1.0))
    base = generate_pattern("none", 300, size=32, seed=0, config=SynthConfig(**flat))
    more = generate_pattern("none", 300, size=32, seed=0, config=SynthConfig(background_fail_rate=(0.3, 0.4), **flat))
    fb = (base == 2).sum((1, 2)) / (base > 0).sum((1, 2))
    fm = (more == 2).sum((1, 2)) / (more > 0).sum((1, 2))
    assert 0.32 < fm.mean() < 0.38 and 0.12 < fb.mean() < 0.18  # uniform in (0.3, 0.4) vs (0.06, 0.24)
    assert np.corrcoef(fb, fm)[0, 1] > 0.3  # same stream: the rate shifts, the maps stay related
    faint = generate_pattern("near-full", 100, size=32, seed=0, config=SynthConfig(
        pattern_density_scale=0.5, background_fail_rate=(0.0, 0.0)))
    assert ((faint == 2).sum((1, 2)) / (faint > 0).sum((1, 2))).max() < 0.6
    # Edge effect: the outermost die ring fails more often than the interior, unless turned off.
    r, _ = _coords(64)
    rim, inner = (r > 0.93), (r < 0.8)
    for factor, lo, hi in (((3.0, 3.0), 2.0, 4.5), ((1.0, 1.0), 0.7, 1.4)):
        m = generate_pattern("none", 300, size=64, seed=0, config=SynthConfig(
            grid_range=(32, 32), background_fail_rate=(0.1, 0.1), edge_fail_factor=factor))
        w = m > 0
        ratio = ((m == 2) & rim).sum() / (w & rim).sum() / (((m == 2) & inner).sum() / (w & inner).sum())
        assert lo < ratio < hi, (factor, ratio)
    # Grid range: a fixed 25-die grid gives 25 distinct rows per 100-px map.
    g25 = generate(5, size=100, seed=0, config=SynthConfig(grid_range=(25, 25))).maps
    assert all(len({r.tobytes() for r in m}) <= 25 for m in g25)


# ----------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n=0), "n must be >= 1"),
        (dict(n=-5), "n must be >= 1"),
        (dict(n=2.5), "n must be an integer"),
        (dict(n=10, size=8), "too small"),
        (dict(n=10, seed=-1), "seed must be >= 0"),
        (dict(n=10, start=-1), "start must be >= 0"),
        (dict(n=10, taxonomy="wm999"), "unknown taxonomy 'wm999'.*seed20"),
        (dict(n=10, config=SynthConfig(class_freqs=(1.0, 2.0))), "has 2 entries but the taxonomy has 20"),
        (dict(n=10, config=SynthConfig(class_freqs=(-1.0,) + (1.0,) * 19)), "must be finite and >= 0"),
        (dict(n=10, config=SynthConfig(class_freqs=(0.0,) * 20)), "sum to 0"),
        (dict(n=10, config=SynthConfig(grid_range=(40, 30))), "grid_range"),
        (dict(n=10, config=SynthConfig(grid_range=(2, 30))), "grid_range"),
        (dict(n=10, config=SynthConfig(background_fail_rate=(0.2, 0.1))), "background_fail_rate"),
        (dict(n=10, config=SynthConfig(background_fail_rate=(0.0, 1.5))), "background_fail_rate"),
        (dict(n=10, config=SynthConfig(grid_skew=0.0)), "grid_skew"),
        (dict(n=10, config=SynthConfig(edge_fail_factor=(2.0, 1.0))), "edge_fail_factor"),
        (dict(n=10, config={"grid_range": (25, 64)}), "must be a SynthConfig"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"blob": {"density": (0.1, 0.2)}})), "'blob' must be one of"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"size": (0.1, 0.2)}})), "loc has no parameter 'size'"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"density": (0.9, 0.2)}})), r"loc.density must be"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"density": (0.1, 1.5)}})), r"<= hi <= 1.0"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"radius": (0.0, 0.2)}})), r"0.01 <= lo"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"radius": 0.2}})), r"loc.radius must be \(lo, hi\)"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": [0.1, 0.2]})), "with a dict of parameters"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"scratch": {"half_width_dies": (0.2, 0.6)}})), r"0.5 <= lo"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"radius": (float("nan"), 0.2)}})), "loc.radius must"),
        (dict(n=10, config=SynthConfig(pattern_ranges={"loc": {"radius": (True, 0.2)}})), "loc.radius must"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises((ConfigError, DataError), match=match):
        generate(**kwargs)


def test_bad_pattern_arguments():
    with pytest.raises(ConfigError, match="unknown pattern 'zigzag'"):
        generate_pattern("zigzag", 4)
    with pytest.raises(ConfigError, match="n must be >= 1"):
        generate_pattern("center", 0)
    with pytest.raises(ConfigError, match="too small"):
        generate_pattern("center", 4, size=4)


def test_config_loads_from_yaml_dict():
    from waferflow.config import load_config

    cfg = load_config(SynthConfig, overrides=["grid_range=[30, 40]", "class_freqs=[1, 1, 1, 1, 1, 1, 1, 1, 1]"])
    assert cfg.grid_range == (30, 40) and len(cfg.class_freqs) == 9
    ds = generate(50, size=32, taxonomy="wm811k", config=cfg)
    assert len(ds) == 50
    with pytest.raises(ConfigError, match="unknown config key"):
        load_config(SynthConfig, overrides=["grid_rnage=[30, 40]"])


# ----------------------------------------------------------- pattern ranges


def test_pattern_ranges_change_only_the_pattern_they_name():
    """An override moves the named pattern's maps and no other; the defaults are the table's."""
    same = SynthConfig(background_fail_rate=(0.0, 0.0), pattern_ranges={"loc": {"radius": [0.18, 0.36]}})
    assert same.changed_ranges() == {}  # the table's own value, as a YAML list: no change
    assert np.array_equal(generate_pattern("loc", 50, size=32, config=same),
                          generate_pattern("loc", 50, size=32, config=NO_BG))
    faint = SynthConfig(background_fail_rate=(0.0, 0.0), pattern_ranges={"loc": {"density": (0.0, 0.0)}})
    assert faint.resolved_ranges()["loc"]["density"] == (0.0, 0.0)
    assert (generate_pattern("loc", 50, size=32, config=faint) != 2).all()  # no fails: density 0
    assert (generate_pattern("loc", 50, size=32, config=NO_BG) == 2).any()
    for p in ("center", "edge-loc", "scratch"):
        assert np.array_equal(generate_pattern(p, 50, size=32, config=faint),
                              generate_pattern(p, 50, size=32, config=NO_BG)), p
    # the scratch entry leaves the axis scratches alone; their own entries apply
    scratch_off = SynthConfig(background_fail_rate=(0.0, 0.0), pattern_ranges={"scratch": {"density": (0.0, 0.0)}})
    assert (generate_pattern("scratch", 50, size=32, config=scratch_off) != 2).all()
    assert np.array_equal(generate_pattern("vertical-scratch", 50, size=32, config=scratch_off),
                          generate_pattern("vertical-scratch", 50, size=32, config=NO_BG))
    axis_off = SynthConfig(background_fail_rate=(0.0, 0.0),
                           pattern_ranges={"horizontal-scratch": {"density": (0.0, 0.0)}})
    assert (generate_pattern("horizontal-scratch", 50, size=32, config=axis_off) != 2).all()


def test_wider_ranges_give_smaller_fainter_patterns():
    """Lower density and radius ranges give loc maps with fewer failing dies (what the source model's variety
    setting relies on)."""
    wide = SynthConfig(background_fail_rate=(0.0, 0.0),
                       pattern_ranges={"loc": {"radius": (0.1, 0.15), "density": (0.35, 0.5)}})
    base = (generate_pattern("loc", 200, size=32, config=NO_BG) == 2).sum(axis=(1, 2))
    small = (generate_pattern("loc", 200, size=32, config=wide) == 2).sum(axis=(1, 2))
    assert small.mean() < 0.4 * base.mean()
    assert (small > 0).mean() > 0.9  # still visible patterns
