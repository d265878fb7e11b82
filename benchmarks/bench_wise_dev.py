"""Would averaging the final model's weights with the source model's pay? WiSE-FT on a finished development run.

Weight-space ensembling (Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022): a model fine-tuned
from a start point and that start point often lie in one basin, and the weights ``alpha * final + (1 - alpha) *
start`` keep much of what the start point knew, as one model (no second forward pass, and every exported form works
as it is). Here the start point is the synthetic source model with its batch norm adapted to the run's maps
(``adapt-batchnorm/adapted/<backbone>@source``, what the ``+source`` candidates fine-tune from), and the final model is
the one the run sent on after the prior correction (before the ``source_weight`` stage, which does this in the
pipeline). The post-hoc ensemble of these two in probability space
gained on one 623-label dev slice and lost on a 4,225-label one (docs/MEASUREMENTS.md, "What do the real labels add?").

Each ``alpha`` is scored twice: with the interpolated batch-norm statistics, and with them re-estimated on the run's
train and pool maps (``waferflow.train.adapt.adapt_bn``; maps only, no label), on the run's validation and test
splits and on the dev maps it never saw, with the deployed TTA in torch. ``alpha=1`` is the final model (the
baseline), ``alpha=0`` the adapted source model alone. Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_real_pipeline --draw-labels 4 --dev 2000 --workdir /tmp/slice4 --out slice4.json
    python -m benchmarks.bench_wise_dev --workdir /tmp/slice4 --out wise_slice4.json

Prints JSON: accuracy, macro-F1, balanced accuracy and per-class recall of every variant on each split, and each
variant minus the final model on the dev maps.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path


ALPHAS = (0.5, 0.7, 0.85)


def _start_point(outs: Path, spec) -> Path:
    """The BN-adapted source model the run's ``+source`` candidates started from."""
    path = outs / "adapt-batchnorm" / "adapted" / f"{spec.backbone}@source"
    if not (path / "model.json").is_file():
        raise SystemExit(f"{path} does not exist: the run had no source model, so there is nothing to interpolate to")
    return path


def interpolate(final, start, alpha: float):
    """A copy of ``final`` whose floating-point weights and buffers are ``alpha * final + (1 - alpha) * start``
    (integer buffers, such as batch norm's step counts, are the final model's)."""
    a, b = final.state_dict(), start.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise SystemExit("the final and source models differ in architecture; they cannot be interpolated")
    mixed = {k: alpha * v + (1 - alpha) * b[k] if v.is_floating_point() else v for k, v in a.items()}
    model = copy.deepcopy(final)
    model.load_state_dict(mixed)
    return model.eval()


def _scores(model, spec, datasets: dict) -> dict:
    from waferflow.predictors import predict_dataset, torch_predictor, tta_predictor
    from waferflow.train.augment import model_symmetries

    from benchmarks.bench_prior_dev import split_scores

    predict = tta_predictor(torch_predictor(model), model_symmetries(spec))
    return {split: split_scores(ds, predict_dataset(predict, ds, spec, 256, desc=split)) for split, ds in datasets.items()}


def main(argv: list[str] | None = None) -> int:
    import torch

    from waferflow.data.contract import load_dataset
    from waferflow.models import load_model_dir
    from waferflow.train.adapt import adapt_bn, sample_maps

    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import corrected_model, run_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--dev", type=Path, default=None, help="dev maps (default: WORKDIR/dev.npz, from --dev N)")
    ap.add_argument("--pool", type=Path, default=None, help="the run's pool (default: WORKDIR/pool.npz; its maps "
                    "only, for the batch-norm statistics)")
    ap.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS), help="weights of the final model")
    ap.add_argument("--bn-maps", type=int, default=20000, help="at most this many maps re-estimate batch norm")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.manual_seed(0)
    outs = run_outputs(a.workdir / "run")
    final, spec = load_model_dir(corrected_model(outs))
    start, start_spec = load_model_dir(_start_point(outs, spec))
    if list(start_spec.class_names) != list(spec.class_names) or start_spec.input_size != spec.input_size:
        raise SystemExit("the source model's classes or input size differ from the final model's")
    data = {s: load_dataset(outs / "split-data" / s / "data.npz", require_labels=True) for s in ("val", "test")}
    data["dev"] = load_dataset(a.dev or a.workdir / "dev.npz", require_labels=True)
    bn_maps = sample_maps([load_dataset(outs / "split-data" / "train" / "data.npz"),
                           load_dataset(a.pool or a.workdir / "pool.npz")], spec.input_size, a.bn_maps)
    res: dict = {"workdir": str(a.workdir), "bn_maps": int(len(bn_maps)), "variants": {}}
    res["variants"]["final (alpha=1)"] = _scores(final, spec, data)
    res["variants"]["source (alpha=0)"] = _scores(start, spec, data)
    for alpha in a.alphas:
        model = interpolate(final, start, alpha)
        res["variants"][f"alpha={alpha:g}"] = _scores(model, spec, data)
        adapt_bn(model, spec, bn_maps, batch_size=64)
        res["variants"][f"alpha={alpha:g}, BN re-estimated"] = _scores(model, spec, data)
    base = res["variants"]["final (alpha=1)"]["dev"]
    keys = ("accuracy", "macro_f1", "balanced_accuracy")
    res["minus_final_on_dev"] = {k: {m: round(v["dev"][m] - base[m], 4) for m in keys}
                                 for k, v in res["variants"].items() if k != "final (alpha=1)"}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
