"""Synthetic wafer maps: the source domain for pretraining.

A map is a ``g x g`` die grid (``g`` drawn per map) on a circular wafer, in
WM-811K's coding (0 off-wafer, 1 pass, 2 fail), rendered into a fixed
``size x size`` image with nearest-neighbour blocks. Every map gets a small
random background fail rate; a class adds zero, one or two *patterns* (center,
donut, scratch, ...), each of which is a per-die fail probability field whose
position, size, density and orientation are drawn per map.

Determinism: the stream for a seed is cut into fixed blocks of
:data:`CHUNK` maps; block ``c`` draws every random number it needs from
``np.random.SeedSequence([seed, c])`` in a fixed order. Any window
``(start, n)`` regenerates the blocks it touches and keeps its maps, so the
bytes never depend on how the stream is chunked or spread over processes.

All the work is vectorized numpy: patterns are evaluated at die level on all
maps that share a grid size at once, then blown up to pixels with one gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from waferflow.config import progress_enabled
from waferflow.data.contract import WaferDataset
from waferflow.errors import ConfigError

GENERATOR = "waferflow.synth v1"
CHUNK = 1024  # maps per deterministic block of the stream
BATCH_CHUNKS = 8  # blocks rendered together (bounds memory; one progress step each)
N_PARAMS = 10  # uniform parameters per pattern slot
COARSE = 5  # coarse cells across for the clustered-random field
REF_GRID = 25  # background_fail_rate refers to maps of this many dies across
MIN_SIZE = 16
MAX_GRID = 256

# --------------------------------------------------------------------------- taxonomies


@dataclass(frozen=True)
class Taxonomy:
    """A label space and, for each class, the patterns that make its maps.

    Attributes:
        name: Registry key.
        class_names: Class names in label-index order.
        default_freqs: Imbalanced default class frequencies (sum 1).
        allowed_symmetries: Subset of ``("hflip", "vflip", "rot90", "rot180")`` under which
            every class's label is unchanged (for augmentation).
        recipes: Per class, the tuple of pattern names drawn on its maps (empty: background only).
    """

    name: str
    class_names: tuple[str, ...]
    default_freqs: tuple[float, ...]
    allowed_symmetries: tuple[str, ...]
    recipes: tuple[tuple[str, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        k = len(self.class_names)
        if len(self.default_freqs) != k or len(self.recipes) != k:
            raise ConfigError(f"taxonomy {self.name}: class_names, default_freqs and recipes need equal lengths")
        for r in self.recipes:
            if len(r) > 2 or any(p not in PATTERNS for p in r):
                raise ConfigError(f"taxonomy {self.name}: bad recipe {r}; up to two of {PATTERNS}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# Patterns inside taxonomies, then "novel" ones outside every taxonomy (drift tests).
PATTERNS: tuple[str, ...] = (
    "none", "center", "donut", "edge-loc", "edge-ring", "loc", "near-full", "random",
    "scratch", "vertical-scratch", "horizontal-scratch",
    "checkerboard", "half-wafer",
)
NOVEL_PATTERNS: tuple[str, ...] = ("checkerboard", "half-wafer")

_SEED20_SINGLE = (
    ("none", ()), ("center", ("center",)), ("edge-loc", ("edge-loc",)),
    ("vertical scratch", ("vertical-scratch",)), ("horizontal scratch", ("horizontal-scratch",)),
    ("edge-ring", ("edge-ring",)), ("random clusters", ("random",)), ("loc", ("loc",)),
    ("near-full", ("near-full",)), ("donut", ("donut",)),
)
# Ten FIXED pairs (index 10..19). Never drawn at random per map.
SEED20_MIXTURES: tuple[tuple[str, str], ...] = (
    ("center", "edge-ring"),
    ("donut", "vertical-scratch"),
    ("loc", "edge-loc"),
    ("center", "horizontal-scratch"),
    ("edge-ring", "loc"),
    ("donut", "edge-loc"),
    ("edge-ring", "vertical-scratch"),
    ("edge-loc", "horizontal-scratch"),
    ("loc", "vertical-scratch"),
    ("donut", "edge-ring"),
)


def _pname(p: str) -> str:
    return p.replace("-scratch", " scratch")


TAXONOMIES: dict[str, Taxonomy] = {
    "seed20": Taxonomy(
        name="seed20",
        class_names=tuple(n for n, _ in _SEED20_SINGLE) + tuple(f"{_pname(a)}+{_pname(b)}" for a, b in SEED20_MIXTURES),
        default_freqs=(0.30, 0.07, 0.08, 0.04, 0.04, 0.09, 0.03, 0.06, 0.01, 0.03) + (0.025,) * 10,
        # rot90 would swap vertical and horizontal scratch, so it is not allowed.
        allowed_symmetries=("hflip", "vflip", "rot180"),
        recipes=tuple(r for _, r in _SEED20_SINGLE) + SEED20_MIXTURES,
    ),
    "wm811k": Taxonomy(
        name="wm811k",
        class_names=("Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Near-full", "Random", "Scratch", "none"),
        default_freqs=(0.10, 0.05, 0.10, 0.12, 0.09, 0.02, 0.05, 0.07, 0.40),
        allowed_symmetries=("hflip", "vflip", "rot90", "rot180"),
        recipes=(("center",), ("donut",), ("edge-loc",), ("edge-ring",), ("loc",), ("near-full",), ("random",),
                 ("scratch",), ()),
    ),
}


#: The range each shape pattern draws its parameters from, per map (uniformly): positions and sizes in wafer radii
#: (1 = the wafer's radius), ``*_sq`` drawn as a square (uniform over the disc's area), ``density`` the fail
#: probability inside the pattern, ``half_width_dies`` in dies. ``SynthConfig.pattern_ranges`` overrides entries.
PATTERN_RANGES: dict[str, dict[str, tuple[float, float]]] = {
    "center": {"offset": (0.0, 0.08), "radius": (0.2, 0.45), "aspect": (0.7, 1.0), "density": (0.7, 0.97)},
    "donut": {"offset": (0.0, 0.06), "radius": (0.26, 0.52), "half_width": (0.08, 0.2), "density": (0.55, 0.92)},
    "edge-loc": {"centre_radius": (0.92, 1.08), "radial_extent": (0.2, 0.45), "elongation": (1.2, 2.2),
                 "density": (0.7, 0.97)},
    # a loc's radius is at least ~2 dies on the coarsest grid: a visible blob
    "loc": {"centre_radius_sq": (0.03, 0.45), "radius": (0.18, 0.36), "aspect": (0.6, 1.0), "density": (0.7, 0.97)},
    "scratch": {"centre_radius_sq": (0.0, 0.5), "length": (0.5, 1.5), "curvature": (-1.6, 1.6),
                "half_width_dies": (0.5, 0.72), "density": (0.8, 1.0)},
    "vertical-scratch": {"half_width_dies": (0.5, 0.72), "density": (0.8, 1.0)},
    "horizontal-scratch": {"half_width_dies": (0.5, 0.72), "density": (0.8, 1.0)},
}
_RANGE_BOUNDS = {"offset": (0.0, 1.0), "radius": (0.01, 2.0), "aspect": (0.05, 1.0), "density": (0.0, 1.0),
                 "half_width": (0.01, 1.0), "centre_radius": (0.0, 1.5), "radial_extent": (0.01, 2.0),
                 "elongation": (0.1, 10.0), "centre_radius_sq": (0.0, 1.0), "length": (0.01, 4.0),
                 "curvature": (-4.0, 4.0), "half_width_dies": (0.5, 10.0)}  # narrower can miss every die


@dataclass(frozen=True)
class SynthConfig:
    """Knobs of the generator (the drift helper shifts them to make shifted batches).

    Attributes:
        grid_range: Inclusive range of dies across, drawn per map.
        background_fail_rate: Per-map range of the random die-fail probability for a map of
            ``REF_GRID`` (25) dies across; it is scaled by ``(25 / g) ** background_grid_exponent``
            because on real wafers small grids (big dies) fail more often (WM-811K ``none`` maps:
            median fail rate ~0.16 at 25-30 dies, ~0.06 at 40-55, ~0.03 at 55-80).
            Set the exponent to 0 to use the range as-is for every grid.
        class_freqs: Class frequencies (normalized); None uses the taxonomy default.
        grid_skew: ``g = lo + (hi - lo + 1) * u ** grid_skew``; >1 favours small grids as real data does
            (WM-811K: median 27, 75th percentile 41 dies across; the default gives 30 and 42); 1 is uniform.
        background_grid_exponent: See ``background_fail_rate``.
        edge_fail_factor: Per-map range of the multiplier of the background rate on the outermost die
            ring (WM-811K ``none`` maps fail ~2.5x more often there); (1, 1) turns the edge effect off.
        pattern_density_scale: Multiplies every pattern's fail density (1 = as tuned; <1 fainter patterns).
        pattern_ranges: Overrides of :data:`PATTERN_RANGES`, e.g. ``{"loc": {"density": (0.3, 0.97)}}``: wider
            ranges give a class more variety (smaller, fainter or off-centre patterns).
    """

    grid_range: tuple[int, int] = (25, 64)
    background_fail_rate: tuple[float, float] = (0.06, 0.24)
    class_freqs: tuple[float, ...] | None = None
    grid_skew: float = 3.0
    background_grid_exponent: float = 1.7
    edge_fail_factor: tuple[float, float] = (1.5, 4.0)
    pattern_density_scale: float = 1.0
    pattern_ranges: dict = field(default_factory=dict, hash=False)

    def resolved_ranges(self) -> dict[str, dict[str, tuple[float, float]]]:
        """:data:`PATTERN_RANGES` with ``pattern_ranges`` applied."""
        return {p: {**r, **{k: (float(v[0]), float(v[1])) for k, v in self.pattern_ranges.get(p, {}).items()}}
                for p, r in PATTERN_RANGES.items()}

    def changed_ranges(self) -> dict[str, dict[str, list[float]]]:
        """The entries of :meth:`resolved_ranges` that differ from :data:`PATTERN_RANGES`, as plain floats (one
        spelling per setting: what a recipe key hashes)."""
        out = {p: {k: list(v) for k, v in r.items() if v != PATTERN_RANGES[p][k]}
               for p, r in self.resolved_ranges().items()}
        return {p: r for p, r in out.items() if r}

    def _validate_ranges(self) -> None:
        if not isinstance(self.pattern_ranges, dict):
            raise ConfigError(f"pattern_ranges must map a pattern to {{parameter: (lo, hi)}}, got {self.pattern_ranges!r}")
        for pat, over in self.pattern_ranges.items():
            if pat not in PATTERN_RANGES or not isinstance(over, dict):
                raise ConfigError(f"pattern_ranges: {pat!r} must be one of {sorted(PATTERN_RANGES)} with a dict of "
                                  f"parameters, got {over!r}")
            for k, v in over.items():
                if k not in PATTERN_RANGES[pat]:
                    raise ConfigError(f"pattern_ranges: {pat} has no parameter {k!r}; it has "
                                      f"{sorted(PATTERN_RANGES[pat])}")
                lo_b, hi_b = _RANGE_BOUNDS[k]
                ok = isinstance(v, (tuple, list)) and len(v) == 2 and all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
                if not ok or not lo_b <= v[0] <= v[1] <= hi_b:
                    raise ConfigError(f"pattern_ranges: {pat}.{k} must be (lo, hi) with {lo_b} <= lo <= hi <= {hi_b}; "
                                      f"got {v!r}")

    def validate(self, num_classes: int | None = None) -> "SynthConfig":
        """Check every knob.

        Raises:
            ConfigError: naming the bad knob and the valid range.
        """
        gr = tuple(self.grid_range)
        if len(gr) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in gr):
            raise ConfigError(f"grid_range must be two integers (lo, hi), got {self.grid_range!r}")
        lo, hi = gr
        if not 4 <= lo <= hi <= MAX_GRID:
            raise ConfigError(f"grid_range must satisfy 4 <= lo <= hi <= {MAX_GRID}; got {self.grid_range!r}")
        br = tuple(self.background_fail_rate)
        if len(br) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in br) or not (
            0.0 <= br[0] <= br[1] <= 1.0
        ):
            raise ConfigError(f"background_fail_rate must be (lo, hi) with 0 <= lo <= hi <= 1; got {br!r}")
        if not (math.isfinite(self.grid_skew) and self.grid_skew > 0):
            raise ConfigError(f"grid_skew must be > 0 (1 = uniform grids), got {self.grid_skew!r}")
        if not (math.isfinite(self.background_grid_exponent) and 0 <= self.background_grid_exponent <= 4):
            raise ConfigError(f"background_grid_exponent must be in [0, 4], got {self.background_grid_exponent!r}")
        ef = tuple(self.edge_fail_factor)
        if len(ef) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in ef) or not (
            0.0 <= ef[0] <= ef[1] <= 20.0
        ):
            raise ConfigError(f"edge_fail_factor must be (lo, hi) with 0 <= lo <= hi <= 20; got {ef!r}")
        if not (math.isfinite(self.pattern_density_scale) and 0 <= self.pattern_density_scale <= 2):
            raise ConfigError(f"pattern_density_scale must be in [0, 2], got {self.pattern_density_scale!r}")
        if self.class_freqs is not None and num_classes is not None:
            _norm_freqs(self.class_freqs, num_classes)
        self._validate_ranges()
        return self


#: Generator defaults that differ by taxonomy. ``seed20`` is the clean source domain of the main job: a
#: small background fail rate, so that every one of its 20 classes (mixtures included) is visible on the map,
#: as the seed describes. ``wm811k`` keeps the class defaults, which mimic real WM-811K backgrounds (heavy
#: fails on small grids, a failing rim) for synthetic -> real transfer and drift tests.
TAXONOMY_SYNTH_DEFAULTS: dict[str, dict] = {
    "seed20": {"background_fail_rate": (0.01, 0.05), "edge_fail_factor": (1.0, 2.0)},
    "wm811k": {},
}


def default_config(taxonomy: str = "seed20", **overrides) -> SynthConfig:
    """The generator knobs ``generate`` uses for ``taxonomy`` when given no config, with ``overrides`` applied."""
    get_taxonomy(taxonomy)
    return SynthConfig(**{**TAXONOMY_SYNTH_DEFAULTS.get(taxonomy, {}), **overrides})


def _norm_freqs(freqs, k: int) -> np.ndarray:
    f = np.asarray(freqs, dtype=np.float64).reshape(-1)
    if f.size != k:
        raise ConfigError(f"class_freqs has {f.size} entries but the taxonomy has {k} classes; give one per class")
    if not np.all(np.isfinite(f)) or (f < 0).any():
        raise ConfigError(f"class_freqs must be finite and >= 0; got {list(freqs)}")
    if f.sum() <= 0:
        raise ConfigError("class_freqs sum to 0; give at least one class a positive frequency")
    return f / f.sum()


def get_taxonomy(name: str) -> Taxonomy:
    """The taxonomy called ``name``.

    Raises:
        ConfigError: for an unknown name, listing the known ones.
    """
    if name not in TAXONOMIES:
        raise ConfigError(f"unknown taxonomy {name!r}; choose one of {sorted(TAXONOMIES)}")
    return TAXONOMIES[name]


# --------------------------------------------------------------------------- patterns
# Each pattern maps per-map uniforms u [m, N_PARAMS] to a fail probability [m, g, g]
# on the die grid described by the context.


class _Grid:
    """Die-centre coordinates of a g x g grid in wafer units (wafer radius 1)."""

    def __init__(self, g: int):
        self.g = g
        c = ((np.arange(g, dtype=np.float32) + 0.5) * (2.0 / g) - 1.0)
        self.x = c[None, None, :]  # columns, [1, 1, g]
        self.y = c[None, :, None]  # rows, [1, g, 1]
        r2 = self.x ** 2 + self.y ** 2
        self.r = np.sqrt(r2)
        self.on = (r2 <= 1.0)[0]  # [g, g]
        pad = np.pad(self.on, 1)
        inner = pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:]
        self.rim = self.on & ~inner  # outermost die ring: on-wafer dies with an off-wafer neighbour
        self.die = 2.0 / g
        self.idx = np.arange(g)
        cell = np.minimum((np.arange(g) * COARSE) // g, COARSE - 1)
        self.coarse_idx = (cell[:, None] * COARSE + cell[None, :]).reshape(-1)  # [g*g] into the coarse cells


def _col(u: np.ndarray, k: int, lo: float, hi: float) -> np.ndarray:
    return (lo + (hi - lo) * u[:, k]).astype(np.float32)[:, None, None]


def _soft(d: np.ndarray, s: float = 0.35) -> np.ndarray:
    """1 inside (d<=1-s), ramping to 0 at the boundary d=1: fuzzy, irregular edges after sampling."""
    np.subtract(1.0, d, out=d)
    np.multiply(d, 1.0 / s, out=d)
    return np.clip(d, 0.0, 1.0, out=d)


def _ellipse(G: _Grid, cx, cy, a, b, psi_c, psi_s) -> np.ndarray:
    """Normalized ellipse distance (1 on the boundary); a along direction psi, b across."""
    dx = G.x - cx
    dy = G.y - cy
    s = (dx * psi_c + dy * psi_s) / a
    t = (dy * psi_c - dx * psi_s) / b
    s *= s
    t *= t
    s += t
    return np.sqrt(s, out=s)


def _angle(u: np.ndarray, k: int, lo: float = 0.0, hi: float = 2 * math.pi):
    a = (lo + (hi - lo) * u[:, k])
    return np.cos(a).astype(np.float32)[:, None, None], np.sin(a).astype(np.float32)[:, None, None]


def _p_center(G, u, aux):
    r = aux["ranges"]
    ca, sa = _angle(u, 0)
    off = _col(u, 1, *r["offset"])
    ra = _col(u, 2, *r["radius"])
    asp = _col(u, 3, *r["aspect"])
    pc, ps = _angle(u, 4, 0, math.pi)
    d = _ellipse(G, off * ca, off * sa, ra, ra * asp, pc, ps)
    return _soft(d, 0.3) * _col(u, 5, *r["density"])


def _p_donut(G, u, aux):
    r = aux["ranges"]
    ca, sa = _angle(u, 0)
    off = _col(u, 1, *r["offset"])
    rr = _col(u, 2, *r["radius"])
    hw = _col(u, 3, *r["half_width"])
    dx = G.x - off * ca
    dy = G.y - off * sa
    d = np.sqrt(dx * dx + dy * dy)
    d -= rr
    np.abs(d, out=d)
    d /= hw
    return _soft(d, 0.5) * _col(u, 4, *r["density"])


def _p_edge_loc(G, u, aux):
    r = aux["ranges"]
    ca, sa = _angle(u, 0)
    rho = _col(u, 1, *r["centre_radius"])
    a = _col(u, 2, *r["radial_extent"])
    b = a * _col(u, 3, *r["elongation"])  # along the edge
    d = _ellipse(G, rho * ca, rho * sa, a, b, ca, sa)
    return _soft(d, 0.3) * _col(u, 4, *r["density"])


def _p_edge_ring(G, u, aux):
    ca, sa = _angle(u, 0)
    # The outermost die ring, sometimes thicker; as in WM-811K mostly complete (3 in 4 maps),
    # otherwise an arc covering at least ~45 % of the rim.
    w = _col(u, 1, 0.0, 1.6) * G.die
    half = np.minimum(np.float32(math.pi), _col(u, 2, 0.45 * math.pi, 2.65 * math.pi))
    ring = G.rim | (G.r > (1.0 - w))
    sector = (G.x * ca + G.y * sa) >= np.cos(half) * G.r
    return (ring & sector).astype(np.float32) * _col(u, 3, 0.85, 1.0)


def _p_loc(G, u, aux):
    r = aux["ranges"]
    ca, sa = _angle(u, 0)
    rho = np.sqrt(_col(u, 1, *r["centre_radius_sq"]))  # uniform over the disc's area between the two radii
    a = _col(u, 2, *r["radius"])
    b = a * _col(u, 3, *r["aspect"])
    pc, ps = _angle(u, 4, 0, math.pi)
    d = _ellipse(G, rho * ca, rho * sa, a, b, pc, ps)
    return _soft(d, 0.3) * _col(u, 5, *r["density"])


def _p_near_full(G, u, aux):
    ca, sa = _angle(u, 0)
    rho = _col(u, 1, 0.2, 0.9)
    rh = _col(u, 2, -0.1, 0.35)  # pass-die hole; <=0 means none
    d = _ellipse(G, rho * ca, rho * sa, np.maximum(rh, 1e-3), np.maximum(rh, 1e-3), ca, sa)
    hole = _soft(d) * (rh > 0)
    return (1.0 - 0.85 * hole) * _col(u, 3, 0.82, 0.99)


def _p_random(G, u, aux):
    coarse = aux["coarse"]  # [m, COARSE*COARSE]
    field_ = coarse[:, G.coarse_idx].reshape(-1, G.g, G.g)
    return _col(u, 0, 0.18, 0.42) + _col(u, 1, 0.1, 0.5) * field_


def _scratch(G, u, phi_c, phi_s, x0, y0, length, curv, r):
    dx = G.x - x0
    dy = G.y - y0
    s = dx * phi_c + dy * phi_s
    t = dy * phi_c - dx * phi_s
    t -= curv * s * s
    w = _col(u, 5, *r["half_width_dies"]) * G.die
    inside = (np.abs(t) < w) & (np.abs(s) < length * 0.5)
    return inside.astype(np.float32) * _col(u, 6, *r["density"])


def _p_scratch(G, u, aux):
    # Any angle, straight or arced, often starting near the edge.
    r = aux["ranges"]
    ca, sa = _angle(u, 0)
    rho = np.sqrt(_col(u, 1, *r["centre_radius_sq"]))
    pc, ps = _angle(u, 2, 0, math.pi)
    return _scratch(G, u, pc, ps, rho * ca, rho * sa, _col(u, 3, *r["length"]), _col(u, 4, *r["curvature"]), r)


def _axis_scratch(G, u, aux, base: float):
    jit = math.radians(8.0)
    pc, ps = _angle(u, 0, base - jit, base + jit)
    x0 = _col(u, 1, -0.55, 0.55)
    y0 = _col(u, 2, -0.3, 0.3)
    if base == 0.0:  # horizontal: swap roles so the spread is across the line
        x0, y0 = y0, x0
    return _scratch(G, u, pc, ps, x0, y0, _col(u, 3, 0.8, 1.5), _col(u, 4, -0.25, 0.25), aux["ranges"])


def _p_vscratch(G, u, aux):
    return _axis_scratch(G, u, aux, math.pi / 2)


def _p_hscratch(G, u, aux):
    return _axis_scratch(G, u, aux, 0.0)


def _p_checkerboard(G, u, aux):
    k = (2 + np.floor(u[:, 0] * 4)).astype(np.int64)[:, None, None]  # blocks of 2..5 dies
    ph = (np.floor(u[:, 1] * 2)).astype(np.int64)[:, None, None]
    par = ((G.idx[None, :, None] // k) + (G.idx[None, None, :] // k) + ph) & 1
    return par.astype(np.float32) * _col(u, 2, 0.6, 0.95)


def _p_half_wafer(G, u, aux):
    ca, sa = _angle(u, 0)
    side = (G.x * ca + G.y * sa) > _col(u, 1, -0.15, 0.15)
    return side.astype(np.float32) * _col(u, 2, 0.75, 1.0)


_PATTERN_FNS: dict[str, Callable] = {
    "center": _p_center, "donut": _p_donut, "edge-loc": _p_edge_loc, "edge-ring": _p_edge_ring,
    "loc": _p_loc, "near-full": _p_near_full, "random": _p_random, "scratch": _p_scratch,
    "vertical-scratch": _p_vscratch, "horizontal-scratch": _p_hscratch,
    "checkerboard": _p_checkerboard, "half-wafer": _p_half_wafer,
}

# --------------------------------------------------------------------------- the stream


def _chunk_draws(seed: int, chunk: int, cum_freqs: np.ndarray, cfg: SynthConfig) -> dict:
    """Every random number of block ``chunk`` of the stream, drawn in one fixed order."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk]))
    lab_u = rng.random(CHUNK)
    g_u = rng.random(CHUNK)
    bg_u = rng.random(CHUNK)
    edge_u = rng.random(CHUNK)
    params = rng.random((CHUNK, 2, N_PARAMS), dtype=np.float32)
    coarse = rng.random((CHUNK, 2, COARSE * COARSE), dtype=np.float32)
    labels = np.minimum(np.searchsorted(cum_freqs, lab_u, side="right"), len(cum_freqs) - 1)
    lo, hi = cfg.grid_range
    g = np.minimum(lo + np.floor((hi - lo + 1) * g_u ** cfg.grid_skew).astype(np.int64), hi)
    b0, b1 = cfg.background_fail_rate
    bg = (b0 + (b1 - b0) * bg_u) * (REF_GRID / g) ** cfg.background_grid_exponent
    e0, e1 = cfg.edge_fail_factor
    edge = np.clip(bg * (e0 + (e1 - e0) * edge_u), 0.0, 1.0).astype(np.float32)
    bg = np.clip(bg, 0.0, 1.0).astype(np.float32)
    offsets = np.zeros(CHUNK + 1, dtype=np.int64)
    np.cumsum(g * g, out=offsets[1:])
    dies = rng.random(int(offsets[-1]), dtype=np.float32)  # one uniform per die, map after map
    return dict(labels=labels, g=g, bg=bg, edge=edge, params=params, coarse=coarse, offsets=offsets, dies=dies)


def _render_indices(g: int, size: int) -> np.ndarray:
    """Nearest die index (same rule as ``resize_nearest``) for each output row/column."""
    return np.minimum(((np.arange(size) + 0.5) * g / size).astype(np.int64), g - 1)


def _render_window(
    seed: int, start: int, n: int, size: int, recipes: tuple[tuple[str, ...], ...], cum_freqs: np.ndarray,
    cfg: SynthConfig, desc: str,
) -> tuple[np.ndarray, np.ndarray]:
    out = np.empty((n, size, size), dtype=np.uint8)
    labels_out = np.empty(n, dtype=np.int64)
    first, last = start // CHUNK, (start + n - 1) // CHUNK
    batches = [list(range(c, min(c + BATCH_CHUNKS, last + 1))) for c in range(first, last + 1, BATCH_CHUNKS)]
    density = np.float32(cfg.pattern_density_scale)
    ranges = cfg.resolved_ranges()
    from tqdm import tqdm

    bar = tqdm(total=n, desc=desc, unit="map", disable=not progress_enabled() or None,
               leave=False)
    grids: dict[int, _Grid] = {}
    rix: dict[int, np.ndarray] = {}
    try:
        for batch in batches:
            draws = [_chunk_draws(seed, c, cum_freqs, cfg) for c in batch]
            # Global stream positions of the kept maps of this batch, and where they go in ``out``.
            lo_pos = max(start, batch[0] * CHUNK)
            hi_pos = min(start + n, (batch[-1] + 1) * CHUNK)
            pos = np.arange(lo_pos, hi_pos)
            ci, li = pos // CHUNK - batch[0], pos % CHUNK
            dst = pos - start
            labels = np.concatenate([d["labels"] for d in draws])[ci * CHUNK + li]
            labels_out[dst] = labels
            gs = np.concatenate([d["g"] for d in draws])[ci * CHUNK + li]
            bg = np.concatenate([d["bg"] for d in draws])[ci * CHUNK + li]
            edge = np.concatenate([d["edge"] for d in draws])[ci * CHUNK + li]
            params = np.concatenate([d["params"] for d in draws])[ci * CHUNK + li]
            coarse = np.concatenate([d["coarse"] for d in draws])[ci * CHUNK + li]
            base = np.cumsum([0] + [d["dies"].size for d in draws])[:-1]
            die_off = np.concatenate([d["offsets"][:-1] + b for d, b in zip(draws, base)])[ci * CHUNK + li]
            dies_all = np.concatenate([d["dies"] for d in draws])
            for g in np.unique(gs):
                g = int(g)
                G = grids.get(g) or grids.setdefault(g, _Grid(g))
                sel = np.flatnonzero(gs == g)
                m = sel.size
                p = np.empty((m, g, g), dtype=np.float32)
                p[:] = bg[sel, None, None]
                p[:, G.rim] = edge[sel, None]
                lab = labels[sel]
                for slot in (0, 1):
                    for k in np.unique(lab):
                        rec = recipes[int(k)]
                        if len(rec) <= slot or rec[slot] == "none":
                            continue
                        sub = np.flatnonzero(lab == k)
                        rows = sel[sub]
                        aux = {"coarse": coarse[rows, slot], "ranges": ranges.get(rec[slot], {})}
                        pk = _PATTERN_FNS[rec[slot]](G, params[rows, slot], aux)
                        if density != 1:
                            pk *= density
                        p[sub] = np.maximum(p[sub], pk)
                u = dies_all[die_off[sel, None] + np.arange(g * g)].reshape(m, g, g)
                vals = (u < p).view(np.uint8)
                vals += 1
                vals *= G.on  # 0 off-wafer, 1 pass, 2 fail
                ri = rix.get(g)
                if ri is None:
                    ri = rix.setdefault(g, _render_indices(g, size))
                # Columns first on the small die array, then whole rows: two cheap gathers.
                up = np.take(vals, ri, axis=2)
                out[dst[sel]] = np.take(up, ri, axis=1)
            bar.update(pos.size)
    finally:
        bar.close()
    return out, labels_out


def _check_common(n, size, seed, start) -> None:
    for name, v in (("n", n), ("size", size), ("seed", seed), ("start", start)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ConfigError(f"{name} must be an integer, got {v!r}")
    if n <= 0:
        raise ConfigError(f"n must be >= 1 (number of maps to generate), got {n}")
    if size < MIN_SIZE:
        raise ConfigError(f"size {size} is too small; maps must be at least {MIN_SIZE}x{MIN_SIZE} pixels (e.g. 64)")
    if size > 1024:
        raise ConfigError(f"size {size} is too large; use at most 1024 pixels (models use 64-224)")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")
    if start < 0:
        raise ConfigError(f"start must be >= 0 (index of the first map in the stream), got {start}")


def generate(
    n: int, size: int = 64, seed: int = 0, taxonomy: str = "seed20", config: SynthConfig | None = None,
    start: int = 0,
) -> WaferDataset:
    """Generate maps ``start .. start+n-1`` of the synthetic stream defined by ``seed``.

    ``generate(n, seed=s)`` equals the concatenation of ``generate(k, seed=s)`` and
    ``generate(n-k, seed=s, start=k)`` bit for bit.

    Args:
        n: Number of maps (>= 1).
        size: Output side in pixels (>= 16); each pixel belongs to one die (nearest neighbour).
        seed: Stream seed (>= 0).
        taxonomy: ``"seed20"`` or ``"wm811k"``.
        config: Generator knobs; None uses ``default_config(taxonomy)``.
        start: Index of the first map in the stream.

    Returns:
        A fixed-size :class:`WaferDataset` (uint8 [n, size, size]) with labels, the taxonomy's
        class names and meta ``{"source", "taxonomy", "seed", "generator"}``.

    Raises:
        ConfigError: for a bad argument or knob (unknown taxonomy, n <= 0, size too small,
            class_freqs of the wrong length or negative, ...).
    """
    _check_common(n, size, seed, start)
    tax = get_taxonomy(taxonomy)
    cfg = config if config is not None else default_config(taxonomy)
    if not isinstance(cfg, SynthConfig):
        raise ConfigError(f"config must be a SynthConfig, got {type(cfg).__name__}")
    cfg.validate(tax.num_classes)
    freqs = _norm_freqs(cfg.class_freqs if cfg.class_freqs is not None else tax.default_freqs, tax.num_classes)
    maps, labels = _render_window(int(seed), int(start), int(n), int(size), tax.recipes, np.cumsum(freqs), cfg,
                                  desc=f"generate {taxonomy}")
    meta = {"source": "synthetic", "taxonomy": tax.name, "seed": int(seed), "generator": GENERATOR}
    return WaferDataset(class_names=tax.class_names, labels=labels, maps=maps, meta=meta)


def generate_pattern(
    pattern: str, n: int, size: int = 64, seed: int = 0, config: SynthConfig | None = None,
) -> np.ndarray:
    """Maps that all carry one named pattern (including novel ones outside every taxonomy).

    Args:
        pattern: One of :data:`PATTERNS` (``"none"`` is background only; ``"checkerboard"`` and
            ``"half-wafer"`` belong to no taxonomy, for drift tests).
        n: Number of maps (>= 1).
        size: Output side in pixels (>= 16).
        seed: Stream seed.
        config: Generator knobs (``class_freqs`` is ignored).

    Returns:
        uint8 [n, size, size] with values 0/1/2.

    Raises:
        ConfigError: for an unknown pattern or a bad argument.
    """
    if pattern not in PATTERNS:
        raise ConfigError(f"unknown pattern {pattern!r}; choose one of {list(PATTERNS)}")
    _check_common(n, size, seed, 0)
    cfg = config if config is not None else SynthConfig()
    if not isinstance(cfg, SynthConfig):
        raise ConfigError(f"config must be a SynthConfig, got {type(cfg).__name__}")
    cfg.validate()
    recipe = () if pattern == "none" else (pattern,)
    maps, _ = _render_window(int(seed), 0, int(n), int(size), (recipe,), np.ones(1), cfg, desc=f"pattern {pattern}")
    return maps


__all__ = ["CHUNK", "GENERATOR", "NOVEL_PATTERNS", "PATTERNS", "PATTERN_RANGES", "SEED20_MIXTURES", "SynthConfig", "TAXONOMIES",
           "TAXONOMY_SYNTH_DEFAULTS", "Taxonomy", "default_config", "generate", "generate_pattern", "get_taxonomy"]
