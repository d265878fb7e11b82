"""Does free-rotation test-time augmentation pay? The deployed model of a finished development run, scored with the
deployed TTA (the data's dihedral views) and with those views taken again after rotating each map by further angles.

The ``real`` profile trains with free rotation (``train.rotation``: a share of the maps turned by up to 45 degrees,
one nearest-neighbour warp about the centre, off-wafer padding), while test-time augmentation averages only the 8
flips and quarter turns. Here every map is also turned by each angle of ``--variant NAME=A,B,...`` with the same warp
(``rotate_maps``), each turned map goes through the deployed TTA, and the mean probability over all views is scored:
on the dev maps (never seen by the run) and on the run's validation split, in torch::

    python -m benchmarks.bench_real_pipeline --draw-labels 11 --dev 2000 --workdir /tmp/s11 --out s11.json
    python -m benchmarks.bench_rot_tta_dev --workdir /tmp/s11 --out rot_s11.json

``--first-member-only`` (a deployed ensemble of the model and its source model, whose source member was trained
without free rotation): also each variant with only the first member's maps turned, the source member on the 8 views.

Prints JSON: accuracy and macro-F1 of the deployed TTA and of each variant on each split, the
variant minus the deployed TTA on the dev maps, and each variant's cost in views. Nothing here reads
``wm811k_val_data.npz``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEFAULT_VARIANTS = ("R2=45", "R3=22.5,-22.5")


def rotate_maps(maps: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 [N, S, S] maps turned by ``degrees`` about the centre as ``train.rotation`` turns them (the training
    warp as a fixed gather, ``waferflow.predictors.rotation.gather_index``; off-wafer 0 outside)."""
    from waferflow.predictors.rotation import gather_index

    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise ValueError(f"rotate_maps needs square uint8 [N, S, S] maps; got {maps.shape}")
    n, s, _ = maps.shape
    flat = np.concatenate([maps.reshape(n, s * s), np.zeros((n, 1), maps.dtype)], axis=1)
    return np.ascontiguousarray(flat[:, gather_index(s, float(degrees))].reshape(n, s, s))


def angle_probs(model_dir: Path, ds, angles: list[float], batch_size: int = 256, member: int | None = None
                ) -> dict[float, np.ndarray]:
    """{angle: float64 [N, K] deployed-TTA mean probability of every map of ``ds`` turned by that angle}; with
    ``member``, of that member of an ensemble alone."""
    from tqdm import tqdm

    from waferflow.models import load_model_dir, preprocess
    from waferflow.predictors import softmax, torch_predictor, tta_predictor
    from waferflow.train.augment import model_symmetries

    model, spec = load_model_dir(model_dir)
    if member is not None:
        model = model.members[member]
    predict = tta_predictor(torch_predictor(model), model_symmetries(spec))
    maps = ds.resized(int(spec.input_size))
    out = {}
    for ang in angles:
        turned = maps if ang == 0 else rotate_maps(maps, ang)
        parts = [softmax(predict(np.ascontiguousarray(preprocess(turned[i:i + batch_size], spec), np.float32)))
                 for i in tqdm(range(0, len(maps), batch_size), desc=f"{ang:+g} deg", unit="batch")]
        out[ang] = np.concatenate(parts).astype(np.float64)
    return out


def parse_variants(items: list[str]) -> dict[str, list[float]]:
    """``NAME=A,B`` -> {NAME: [0, A, B]} (the unturned maps always count)."""
    out = {}
    for item in items:
        name, _, angles = item.partition("=")
        try:
            extra = [float(v) for v in angles.split(",") if v.strip()]
        except ValueError:
            raise SystemExit(f"--variant {item!r}: give NAME=ANGLE,ANGLE in degrees (e.g. R2=45)") from None
        if not name or not extra or 0.0 in extra:
            raise SystemExit(f"--variant {item!r}: give NAME=ANGLE,... with non-zero angles (0 is always included)")
        out[name] = [0.0, *extra]
    return out


def main(argv: list[str] | None = None) -> int:
    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import _scores, deployed_model
    from benchmarks.bench_keep_dev import read_dev_run

    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--variant", action="append", default=None, metavar="NAME=A,B")
    ap.add_argument("--first-member-only", action="store_true",
                    help="an ensemble deployed (model + source model): also turn the first member's maps only")
    a, rest = ap.parse_known_args(argv)
    variants = parse_variants(a.variant or list(DEFAULT_VARIANTS))
    r = read_dev_run(__doc__, rest)
    model = deployed_model(r.outs)
    if a.first_member_only and not json.loads((model / "model.json").read_text()).get("ensemble"):
        raise SystemExit(f"--first-member-only: the deployed model {model} is not an ensemble (one network)")
    angles = sorted({ang for v in variants.values() for ang in v})
    res: dict = {"workdir": str(r.workdir), "model": str(model), "variants": variants}
    for split, ds in r.sets.items():
        probs = angle_probs(model, ds, angles)
        res.setdefault("deployed_tta", {})[split] = _scores(ds.labels, probs[0.0])
        for name, angs in variants.items():
            res.setdefault(name, {})[split] = _scores(ds.labels, np.mean([probs[g] for g in angs], axis=0))
        if a.first_member_only:
            first = angle_probs(model, ds, angles, member=0)
            second = angle_probs(model, ds, [0.0], member=1)[0.0]
            for name, angs in variants.items():
                turned = np.mean([first[g] for g in angs], axis=0)
                res.setdefault(f"{name}_first_member_only", {})[split] = _scores(ds.labels, (turned + second) / 2)
    res["dev_change_vs_deployed_tta"] = {
        name: {k: round(float(res[name]["dev"][k] - res["deployed_tta"]["dev"][k]), 4)
               for k in ("accuracy", "macro_f1")} for name in res if name in variants or name.endswith("_only")}
    res["cost_in_views"] = {name: f"{len(angs)}x the deployed TTA" for name, angs in variants.items()}
    emit(res, r.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
