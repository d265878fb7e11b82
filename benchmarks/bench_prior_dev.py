"""Does taking the class weights' prior out of the final model pay? Before and after, on a finished development run.

Reads the workdir of ``python -m benchmarks.bench_real_pipeline --dev N --workdir DIR`` and scores the model that
self-training sent on, as trained (with the class prior its sqrt class weights put into its logits) and with that
prior taken out of its head (``waferflow.train.prior.undo_class_prior``, what the ``correct-prior`` stage does), on
the run's validation and test splits and on the dev maps it never saw, each with the deployed TTA (in torch).

A run made before models recorded their shift (``model.json`` ``train.logit_shift``) gets it recomputed from what
its training saw: the train split's labels plus, when the student went on, the last round's pseudo-labels per class
(the self-training report), weighted by the run's ``class_weights``. Nothing here reads ``wm811k_val_data.npz``::

    python -m benchmarks.bench_real_pipeline --dev 2000 --workdir /tmp/devB --out devB.json
    python -m benchmarks.bench_prior_dev --workdir /tmp/devB --out prior_devB.json

Prints JSON: accuracy, macro-F1, balanced accuracy and per-class recall of both models on each split, the shift,
and after minus before on the dev maps.

``--shrink K [K ...]`` also scores shifts shrunk where a class had few training maps: class ``c``'s shift times
``n_c / (n_c + K)``, with ``n_c`` its maps in the training that made the model (train split, plus the last round's
pseudo-labels when the student went on). These come from the as-trained model's logits per TTA view minus the shift
(the correction moves only the head's bias, so that is exact), with no second model; ``shrunk["0"]`` is the full
correction again and matches ``prior_undone`` to rounding::

    python -m benchmarks.bench_prior_dev --workdir /tmp/slice4 --shrink 0 2 5 20 --out shrink_slice4.json

When the run deployed the model and its source model as one ensemble (``source_ensemble_below``), ``in_ensemble``
scores that ensemble with the prior undone (the deployed model) and with the model as trained (the same source stage,
``benchmarks.bench_keep_dev.after_self_training``): what the correction does to the model that is deployed.
``--set`` gives the run's real-profile overrides.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np


def _training_labels(model_dir: Path, outs: Path) -> np.ndarray:
    """The labels the model was trained on: the train split's, plus the last round's pseudo-labels per class when
    the self-training student went on."""
    from waferflow.data.contract import load_dataset
    from waferflow.models.spec import read_spec

    spec = read_spec(model_dir)
    labels = load_dataset(outs / "split-data" / "train" / "data.npz", require_labels=True).labels
    report = json.loads((outs / "self-train-model" / "report" / "self_training.json").read_text())
    if report.get("chosen") == "student":
        kept = report["per_round"][-1]["kept_per_class"]
        extra = [np.full(kept.get(c, 0), i) for i, c in enumerate(spec.class_names)]
        labels = np.concatenate([labels, *extra])
    return labels.astype(np.int64)


def _shift_of(model_dir: Path, labels: np.ndarray) -> tuple[list[float], str]:
    """The model's recorded logit shift, or one recomputed from its training labels (runs before the record)."""
    import yaml

    from waferflow.models.spec import read_spec
    from waferflow.train.losses import training_logit_shift

    spec = read_spec(model_dir)
    if "logit_shift" in spec.extra.get("train", {}):
        return list(spec.extra["train"]["logit_shift"]), "recorded by training"
    cfg = yaml.safe_load((model_dir / "config.yaml").read_text())
    shift = training_logit_shift(labels, spec.num_classes, cfg["class_weights"], cfg.get("balanced_sampler", False))
    return [round(float(v), 6) for v in shift], "recomputed from the train split and the pseudo-labels"


def _view_logits(model_dir: Path, ds) -> np.ndarray:
    """float32 [views, N, K]: the model's logits for every TTA view of every map of ``ds`` (torch)."""
    from waferflow.models import load_model_dir

    model, spec = load_model_dir(model_dir)
    return view_logits(model, spec, ds)


def view_logits(model, spec, ds) -> np.ndarray:
    """float32 [views, N, K]: ``model``'s logits for every TTA view of ``spec``'s symmetries, every map of ``ds``."""
    from waferflow.predictors import batches_for, torch_predictor, tta_predictor
    from waferflow.train.augment import model_symmetries

    base, seen = torch_predictor(model), []
    predict = tta_predictor(lambda x: seen.append(base(x)) or seen[-1], model_symmetries(spec))
    out = np.empty((len(predict.views), len(ds), spec.num_classes), np.float32)
    for idx, x in batches_for(ds, spec, 256, desc=f"views:{len(ds)}"):
        seen.clear()
        predict(x)
        out[:, idx] = np.stack(seen)
    return out


def _shrunk_scores(view_logits: np.ndarray, ds, shift: np.ndarray, counts: np.ndarray, k: float) -> dict:
    """Scores of the TTA mean probability when ``shift * n / (n + k)`` is taken out of every view's logits."""
    from waferflow.predictors import softmax

    s = shift * counts / np.maximum(counts + k, 1e-12)
    prob = np.mean([softmax(v - s) for v in view_logits], axis=0)
    return split_scores(ds, np.log(prob + 1e-12))


def split_scores(ds, logits: np.ndarray) -> dict:
    """Accuracy, macro-F1, balanced accuracy and per-class recall of ``logits`` on the labeled dataset ``ds``."""
    from waferflow.evaluation import metrics_from_logits

    m = metrics_from_logits(ds.labels, logits, list(ds.class_names))
    return {**{k: round(m["overall"][k], 4) for k in ("accuracy", "macro_f1", "balanced_accuracy")},
            "recall": {c: round(v["recall"], 3) for c, v in m["per_class"].items() if v.get("support")}}


def _scores(model_dir: Path, datasets: dict) -> dict:
    from benchmarks.bench_ensemble_dev import _tta_probs

    return {split: split_scores(datasets[split], np.log(prob + 1e-12))
            for split, prob in _tta_probs(model_dir, datasets).items()}


def _in_ensemble(a, outs: Path, trained: Path, data: dict) -> dict:
    """The deployed ensemble (prior undone) and the same ensemble of the model as trained, scored on every split."""
    from waferflow.orchestration.local import embedded_tracking_uri
    from waferflow.profiles import get_profile

    from benchmarks.bench_ensemble_dev import deployed_model
    from benchmarks.bench_keep_dev import after_self_training

    uri = embedded_tracking_uri(a.workdir / "run")
    with tempfile.TemporaryDirectory(prefix="bench-prior-ens-") as tmp:
        plain, steps = after_self_training(trained, outs, get_profile("real", a.set), uri, Path(tmp), undo=False)
        res = {"as_trained": _scores(plain, data), "prior_undone": _scores(deployed_model(outs), data),
               "source_stage": steps["source_stage"]}
    res["after_minus_before_on_dev"] = {k: round(res["prior_undone"]["dev"][k] - res["as_trained"]["dev"][k], 4)
                                        for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    return res


def main(argv: list[str] | None = None) -> int:
    from waferflow.data.contract import load_dataset
    from waferflow.train.prior import undo_class_prior

    from benchmarks._report import emit
    from benchmarks.bench_ensemble_dev import run_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, required=True, help="a finished `bench_real_pipeline --dev` workdir")
    ap.add_argument("--dev", type=Path, default=None, help="dev maps (default: WORKDIR/dev.npz, from --dev N)")
    ap.add_argument("--shrink", type=float, nargs="*", default=[], metavar="K",
                    help="also score each class's shift times n/(n+K), n its training maps (see the docstring)")
    ap.add_argument("--set", action="append", default=[], help="the run's real-profile overrides (as given to it)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    outs = run_outputs(a.workdir / "run")
    trained = outs / "self-train-model" / "model"
    data = {s: load_dataset(outs / "split-data" / s / "data.npz", require_labels=True) for s in ("val", "test")}
    data["dev"] = load_dataset(a.dev or a.workdir / "dev.npz", require_labels=True)
    labels = _training_labels(trained, outs)
    shift, how = _shift_of(trained, labels)
    with tempfile.TemporaryDirectory(prefix="bench-prior-") as tmp:
        src = Path(tmp) / "trained"
        shutil.copytree(trained, src)
        spec = json.loads((src / "model.json").read_text())
        spec.setdefault("train", {})["logit_shift"] = shift
        (src / "model.json").write_text(json.dumps(spec))
        report = undo_class_prior(src, Path(tmp) / "corrected")
        res = {"workdir": str(a.workdir), "shift": report["shift"], "shift_source": how,
               "as_trained": _scores(trained, data), "prior_undone": _scores(Path(tmp) / "corrected", data)}
    res["after_minus_before_on_dev"] = {k: round(res["prior_undone"]["dev"][k] - res["as_trained"]["dev"][k], 4)
                                        for k in ("accuracy", "macro_f1", "balanced_accuracy")}
    ensembled = outs / "interpolate-source" / "model" / "model.json"
    if ensembled.is_file() and json.loads(ensembled.read_text()).get("ensemble"):
        res["in_ensemble"] = _in_ensemble(a, outs, trained, data)
    if a.shrink:
        counts = np.bincount(labels, minlength=len(shift)).astype(np.float64)
        res["training_maps_per_class"] = dict(zip(data["dev"].class_names, counts.astype(int).tolist()))
        views = {split: _view_logits(trained, ds) for split, ds in data.items()}
        res["shrunk"] = {f"{k:g}": {split: _shrunk_scores(views[split], ds, np.asarray(shift), counts, k)
                                    for split, ds in data.items()} for k in a.shrink}
    emit(res, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
