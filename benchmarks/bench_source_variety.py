"""Does a wider synthetic generator make a better source model? Pattern statistics and the source model alone.

The source model is trained on synthetic maps only; its shape patterns draw their parameters (position, size,
elongation, density, ...; the table lists which for each pattern) from ``waferflow.data.synth.PATTERN_RANGES``,
which the source recipe can override (``source.synth``). This
benchmark compares the generator as tuned (the baseline) with a variant given as ``--set source.synth...`` on
real labeled maps that a development run never scores (the design set: ``--labeled`` and ``--unlabeled`` minus the
maps of every ``--exclude`` file, e.g. the dev maps of ``bench_real_pipeline --dev`` runs):

- **pattern statistics**, real vs each generator, per class: the largest failing component of each map after a 3x3
  closing, at 64 px: its share of the wafer (area), the distance of its centre from the wafer's centre (in wafer
  radii), the share of failing dies inside it (density) and its length (4 standard deviations along its major axis,
  in wafer radii), as 10th / 50th / 90th percentiles; and each map's fail rate;
- **the source model alone**: both recipes pretrained here (ImageNet -> synthetic maps, the ``real`` profile's
  backbone, input size and source recipe), each scored on the design set with the deployed TTA: accuracy, macro-F1,
  per-class recall. The variant minus the baseline closes the JSON.

Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_source_variety --exclude /tmp/slice6/dev.npz --exclude /tmp/slice7/dev.npz \\
        --set 'source.synth.pattern_ranges.loc.radius=[0.10,0.55]' --workdir /tmp/variety --out variety.json

``--stats-only`` prints the statistics and trains nothing (seconds, not minutes: for fitting ranges to the maps).
``--png`` draws eight maps per class of each (real, baseline, variant) for the eye.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.bench_real_pipeline import SHARED

CLASSES = ("Loc", "Edge-Loc", "Scratch", "Center", "none")
STATS = ("fail_rate", "area", "centre_radius", "density", "length")


def design_set(files: list[Path], exclude: list[Path]):
    """The labeled maps of ``files`` that no ``exclude`` file holds (compared map by map, shape included)."""
    from waferflow.data.contract import concat_datasets, load_dataset
    from waferflow.data.split import map_hashes

    held = {h for p in exclude for h in map_hashes(load_dataset(p))}
    full = concat_datasets([load_dataset(p, require_labels=True) for p in files])
    return full.subset(np.array([i for i, h in enumerate(map_hashes(full)) if h not in held], dtype=np.int64))


def component_stats(m: np.ndarray) -> list[float]:
    """Fail rate, and area / centre radius / density / length of the largest failing component (see the module)."""
    from scipy import ndimage

    on, fail = m > 0, m == 2
    yy, xx = np.nonzero(on)
    cy, cx, radius = yy.mean(), xx.mean(), np.sqrt(on.sum() / np.pi)
    lab, n = ndimage.label(ndimage.binary_closing(fail, np.ones((3, 3))) & on)
    if n == 0:
        return [float(fail[on].mean()), 0.0, 0.0, 0.0, 0.0]
    comp = lab == int(np.argmax(ndimage.sum(np.ones_like(lab), lab, range(1, n + 1)))) + 1
    py, px = np.nonzero(comp)
    spread = np.linalg.eigvalsh(np.cov(np.stack([py, px])))[-1] if len(py) > 2 else 0.0
    return [float(fail[on].mean()), comp.sum() / on.sum(), np.hypot(py.mean() - cy, px.mean() - cx) / radius,
            float(fail[comp].mean()), 4 * np.sqrt(max(spread, 0.0)) / radius]


def pattern_stats(ds, classes=CLASSES, per_class: int = 400) -> dict:
    """10th / 50th / 90th percentiles of :func:`component_stats` over up to ``per_class`` maps of each class."""
    from waferflow.data.contract import resize_nearest

    out = {}
    for c in classes:
        idx = np.flatnonzero(ds.labels == list(ds.class_names).index(c))[:per_class]
        if not idx.size:  # a design set without the class: nothing to measure
            continue
        rows = np.array([component_stats(resize_nearest(ds.get(i), 64)) for i in idx])
        out[c] = {s: [round(float(q), 3) for q in np.quantile(rows[:, j], [0.1, 0.5, 0.9])] for j, s in enumerate(STATS)}
    return out


def plot_maps(sets: dict, path: Path, classes=("Loc", "Edge-Loc", "Scratch"), per_row: int = 8) -> Path:
    """A PNG: for each class, one row of ``per_row`` maps of each set in ``sets`` (name -> dataset)."""
    from waferflow.data.contract import resize_nearest
    from waferflow.plots import _plt, _save

    plt = _plt()
    rows = [(c, name, ds) for c in classes for name, ds in sets.items()]
    fig, axes = plt.subplots(len(rows), per_row, figsize=(1.2 * per_row, 1.25 * len(rows)), squeeze=False)
    for ax_row, (c, name, ds) in zip(axes, rows):
        idx = np.flatnonzero(ds.labels == list(ds.class_names).index(c))[:per_row]
        for ax, i in zip(ax_row, idx):
            ax.imshow(resize_nearest(ds.get(i), 64), vmin=0, vmax=2, cmap="viridis", interpolation="nearest")
        for ax in ax_row:
            ax.set_xticks([]), ax.set_yticks([])
        ax_row[0].set_ylabel(f"{c}\n{name}", fontsize=7, rotation=0, ha="right", va="center")
    return _save(fig, path, dpi=80)


def _source(prof, work: Path, tag: str) -> Path:
    """The profile's source model of ``wm811k``, pretrained into ``work/tag`` and kept there with its recipe: a rerun
    with the same recipe scores it again, one with another recipe is refused.

    Raises:
        SystemExit: ``work/tag`` holds a source model of another recipe.
    """
    import json

    from waferflow.config import load_config
    from waferflow.train.source import SourceConfig, pretrain_source, recipe

    cfg = load_config(SourceConfig, overrides=dict(prof.source))
    rec = recipe(cfg, "wm811k", prof.backbones[0], prof.input_size, prof.pretrained)
    out, kept = work / tag, work / f"{tag}.recipe.json"
    if (out / "model.json").exists():
        if not kept.exists() or json.loads(kept.read_text()) != json.loads(json.dumps(rec)):
            raise SystemExit(f"{out} holds a source model of another recipe than {rec}; give another --workdir")
        return out
    pretrain_source(cfg, "wm811k", prof.backbones[0], prof.input_size, out, pretrained=prof.pretrained)
    kept.write_text(json.dumps(rec, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    from waferflow.config import load_config
    from waferflow.data.synth import generate
    from waferflow.profiles import get_profile
    from waferflow.train.source import SourceConfig

    from benchmarks._report import emit
    from benchmarks.bench_keep_dev import _scored

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labeled", type=Path, action="append", default=None,
                    help="labeled files of the design set (default: train_1 and train_10 of ../shared)")
    ap.add_argument("--exclude", type=Path, action="append", default=[], help="maps to leave out (dev maps)")
    ap.add_argument("--set", action="append", default=[], help="the variant: real-profile overrides (source.synth...)")
    ap.add_argument("--workdir", type=Path, default=None, help="where the two source models go (needed to train)")
    ap.add_argument("--stats-only", action="store_true", help="statistics only; train nothing")
    ap.add_argument("--png", type=Path, default=None, help="write real / baseline / variant maps of the weak classes")
    ap.add_argument("--synthetic", type=int, default=6000, help="synthetic maps per generator for the statistics")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if not a.stats_only and a.workdir is None:
        ap.error("--workdir is needed to train the two source models (or give --stats-only)")
    files = a.labeled or [SHARED / "wm811k_train_1_split.npz", SHARED / "wm811k_train_10_split.npz"]
    design = design_set(files, a.exclude)
    profs = {"baseline": get_profile("real"), "variant": get_profile("real", a.set)}
    synth = {t: generate(a.synthetic, 64, seed=5, taxonomy="wm811k",
                         config=load_config(SourceConfig, overrides=dict(p.source)).synth_config("wm811k"))
             for t, p in profs.items()}
    res = {"design_maps": len(design), "design_counts": design.class_counts(), "variant": profs["variant"].source,
           "stats": {"real": pattern_stats(design), **{t: pattern_stats(ds) for t, ds in synth.items()}}}
    if a.png:
        res["png"] = str(plot_maps({"real": design, **synth}, a.png))
    if not a.stats_only:
        res["source_alone"] = {t: _scored(_source(p, a.workdir, t), {"design": design})["design"]
                               for t, p in profs.items()}
        b, v = res["source_alone"]["baseline"], res["source_alone"]["variant"]
        res["variant_minus_baseline"] = {"accuracy": round(v["accuracy"] - b["accuracy"], 4),
                                         "macro_f1": round(v["macro_f1"] - b["macro_f1"], 4),
                                         "recall": {c: round(v["recall"][c] - b["recall"][c], 3) for c in b["recall"]}}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
