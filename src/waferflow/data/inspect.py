"""Look at a dataset: counts and shape statistics, and a PNG grid of sample maps per class."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from waferflow.config import atomic_write_bytes
from waferflow.data.contract import WaferDataset, dataset_hash
from waferflow.errors import DataError

# Fixed colours for the die codes: 0 off-wafer (light grey), 1 pass (green), 2 fail (red).
DIE_COLORS = ("#e6e6e6", "#5aae61", "#d7301f")
DIE_NAMES = ("off-wafer", "pass", "fail")


def inspect_dataset(ds: WaferDataset) -> dict[str, Any]:
    """Summary statistics of a dataset.

    Returns:
        ``{"n_maps", "layout", "labeled", "n_lots", "content_sha256",
        "classes": [{"name", "count", "fraction", "h_median", "w_median",
        "fail_fraction"}], "shape": {"h_min", "h_median", "h_max", "w_min",
        "w_median", "w_max", "n_distinct"}, "values": {"off_wafer", "pass", "fail"}}``
        where ``values`` are fractions over all dies and ``fail_fraction`` the
        mean share of failing dies among on-wafer dies per map.
    """
    ds.validate()
    shapes = ds.map_shapes().astype(np.int64)
    n = len(ds)
    counts = np.zeros(3, dtype=np.int64)
    fail_frac = np.zeros(n)
    for i in range(n):
        c = np.bincount(ds.get(i).ravel(), minlength=3)[:3]
        counts += c
        fail_frac[i] = c[2] / max(1, c[1] + c[2])
    labels = ds.labels if ds.labeled else np.zeros(n, dtype=np.int64)
    names = ds.class_names if ds.labeled else ("(unlabeled)",)
    classes = []
    for k, name in enumerate(names):
        sel = labels == k
        m = int(sel.sum())
        classes.append({
            "name": name, "count": m, "fraction": m / n,
            "h_median": float(np.median(shapes[sel, 0])) if m else None,
            "w_median": float(np.median(shapes[sel, 1])) if m else None,
            "fail_fraction": float(fail_frac[sel].mean()) if m else None,
        })
    total = counts.sum()
    return {
        "n_maps": n,
        "layout": "fixed" if ds.fixed_size else "variable",
        "labeled": ds.labeled,
        "n_lots": None if ds.lots is None else int(len(np.unique(ds.lots))),
        "content_sha256": dataset_hash(ds),
        "classes": classes,
        "shape": {
            "h_min": int(shapes[:, 0].min()), "h_median": float(np.median(shapes[:, 0])), "h_max": int(shapes[:, 0].max()),
            "w_min": int(shapes[:, 1].min()), "w_median": float(np.median(shapes[:, 1])), "w_max": int(shapes[:, 1].max()),
            "n_distinct": int(len(np.unique(shapes, axis=0))),
        },
        "values": {k: float(v / total) for k, v in zip(("off_wafer", "pass", "fail"), counts)},
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary of :func:`inspect_dataset` as a plain-text table."""
    def fmt(v: Any, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    rows = [(c["name"], str(c["count"]), f"{100 * c['fraction']:.1f}%", fmt(c["h_median"], ".0f") + "x" +
             fmt(c["w_median"], ".0f"), fmt(c["fail_fraction"], ".3f")) for c in summary["classes"]]
    head = ("class", "maps", "share", "median HxW", "fail share")
    widths = [max(len(r[j]) for r in rows + [head]) for j in range(len(head))]
    line = "  ".join("{:<%d}" % w if j == 0 else "{:>%d}" % w for j, w in enumerate(widths))
    out = [line.format(*head), line.format(*("-" * w for w in widths))] + [line.format(*r) for r in rows]
    s, v = summary["shape"], summary["values"]
    out += [
        "",
        f"maps: {summary['n_maps']}  layout: {summary['layout']}  labeled: {summary['labeled']}  "
        f"lots: {summary['n_lots'] if summary['n_lots'] is not None else '-'}",
        f"height: min {s['h_min']}  median {s['h_median']:.0f}  max {s['h_max']}   "
        f"width: min {s['w_min']}  median {s['w_median']:.0f}  max {s['w_max']}   distinct shapes: {s['n_distinct']}",
        f"dies: off-wafer {v['off_wafer']:.3f}  pass {v['pass']:.3f}  fail {v['fail']:.3f}",
        f"content_sha256: {summary['content_sha256']}",
    ]
    return "\n".join(out)


def plot_class_grid(ds: WaferDataset, path: str | Path, per_class: int = 6, seed: int = 0,
                    title: str | None = None) -> Path:
    """Write a PNG grid: one row per class (name as row label), ``per_class`` random maps each.

    Maps are drawn at their own size with nearest-neighbour display and the
    fixed colours of :data:`DIE_COLORS`. An unlabeled dataset gives one row.

    Returns:
        The PNG path (written atomically).
    """
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.patches import Patch

    if per_class < 1:
        raise DataError(f"--per-class must be >= 1, got {per_class}")
    ds.validate()
    rng = np.random.default_rng(seed)
    labels = ds.labels if ds.labeled else np.zeros(len(ds), dtype=np.int64)
    names = ds.class_names if ds.labeled else ("(unlabeled)",)
    cmap = ListedColormap(DIE_COLORS)
    norm = BoundaryNorm([-0.5, 0.5, 1.5, 2.5], cmap.N)
    fig, axes = plt.subplots(len(names), per_class, figsize=(1.3 * per_class + 1.2, 1.3 * len(names) + 0.6),
                             squeeze=False)
    for r, name in enumerate(names):
        idx = np.flatnonzero(labels == r)
        pick = rng.choice(idx, size=min(per_class, len(idx)), replace=False) if len(idx) else []
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for sp in ax.spines.values():
                sp.set_visible(False)
            if c < len(pick):
                ax.imshow(ds.get(int(pick[c])), cmap=cmap, norm=norm, interpolation="nearest")
        axes[r, 0].set_ylabel(f"{name}\n(n={len(idx)})", rotation=0, ha="right", va="center", fontsize=8)
    fig.legend(handles=[Patch(color=col, label=lab) for col, lab in zip(DIE_COLORS, DIE_NAMES)],
               loc="lower center", ncol=3, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97 if title else 1))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
