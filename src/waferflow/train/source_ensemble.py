"""Deploy the model together with the synthetic source model it was fine-tuned from, when labels are few.

With a few hundred real labels, the fine-tuned model forgets much of what the source model (ImageNet -> synthetic
maps of the same taxonomy, never a real label) knew about the classes those labels barely show. The mean
probability of the two (:class:`~waferflow.models.ensemble.MeanProbabilityEnsemble`) keeps both: on three
623-label development slices it gained 0.041-0.088 macro-F1 over the model alone, and on one slice with 4,225
labels it lost 0.015 (docs/MEASUREMENTS.md, "The model and its source model, as one ensemble"). So the stage
builds it only when the train split holds fewer than ``source_ensemble_below`` labeled maps, and passes the model on
unchanged otherwise. Unlike weight averaging, an ensemble does not need the model to descend from the source (an
ImageNet-only winner is ensembled too), only the same backbone, classes and input.

The source member is the source model as registered (its batch norm as the synthetic maps left it: the measured
recipe), downloaded by the URI the adaptive-BN stage's ``<backbone>@source`` start point was loaded from. The
ensemble is one model dir (:func:`waferflow.models.spec.load_model_dir` reads it), so export, TTA, INT8 (both
heads kept FP32), the gates and serving treat it as one model; inference costs two forward passes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from waferflow.errors import ConfigError, ModelFormatError
from waferflow.train.wise import val_scores, run_source_interpolation
from waferflow.train.wise import describe as describe_interpolation



def run_source_stage(model_dir: str | Path, adapted_dir: str | Path, maps: list[str | Path], val_file: str | Path,
                     out_dir: str | Path, source_weight: float, ensemble_below: int, max_maps: int = 20000,
                     seed: int = 0, tracking_uri: str | None = None) -> dict[str, Any]:
    """The stage after the prior correction: average the weights with the source model's (``source_weight`` > 0,
    :func:`~waferflow.train.wise.run_source_interpolation`), or ensemble the two when ``ensemble_below`` > 0 (the
    train split is ``maps[0]``), or copy the model. Setting both is refused."""
    if source_weight and ensemble_below:
        raise ConfigError(f"source_weight={source_weight} and source_ensemble_below={ensemble_below} both combine "
                          "the model with the source model; set one of them to 0")
    if ensemble_below:
        return run_source_ensemble(model_dir, adapted_dir, maps[0], val_file, out_dir, ensemble_below, tracking_uri)
    return run_source_interpolation(model_dir, adapted_dir, maps, val_file, out_dir, source_weight,
                                    max_maps=max_maps, seed=seed)


def run_source_ensemble(model_dir: str | Path, adapted_dir: str | Path, train_file: str | Path,
                        val_file: str | Path, out_dir: str | Path, below: int,
                        tracking_uri: str | None = None) -> dict[str, Any]:
    """``model_dir`` and its source model as one mean-probability ensemble in ``out_dir`` when ``train_file``
    holds fewer than ``below`` labeled maps; else ``model_dir`` copied unchanged, the report saying why.

    Returns:
        ``{"status", "source_ensemble_below", "n_labeled", ...}``; an ensemble's report also holds ``source`` (the
        source model's URI) and ``validation`` (the model alone / the ensemble), and its ``model.json`` holds the
        report under ``source_ensemble``.

    Raises:
        ConfigError: ``below`` negative.
        DataError: unlabeled or empty train maps; unlabeled, empty or mismatched validation maps when an ensemble
            is built (before anything is written).
        ModelFormatError, WeightsError: the source model cannot be had, or differs in architecture, classes or input.
    """
    if below < 0:
        raise ConfigError(f"source_ensemble_below must be >= 0 (0 = off), got {below}")
    from waferflow.data.contract import load_dataset
    from waferflow.models.spec import read_spec

    spec = read_spec(model_dir)
    n = len(load_dataset(train_file, require_labels=True))
    start = Path(adapted_dir) / f"{spec.backbone}@source"
    reason = None
    if below == 0:
        reason = "off: source_ensemble_below is 0"
    elif n >= below:
        reason = f"skipped: {n} labeled training maps, not fewer than source_ensemble_below={below}"
    elif not (start / "model.json").is_file():
        reason = "skipped: the run has no source model (no synthetic taxonomy matches the data, or source is off)"
    found = {"source_ensemble_below": below, "n_labeled": n}
    if reason is not None:
        shutil.copytree(model_dir, out_dir, dirs_exist_ok=True)
        return {"status": reason, **found}
    return _ensemble(Path(model_dir), read_spec(start).weights_source, val_file, Path(out_dir), found, tracking_uri)


def _load_source(weights_source: str, tracking_uri: str | None) -> tuple[str, Any, Any]:
    """The source model's URI, module and spec, from the ``weights_source`` of the start point it was loaded as (an
    MLflow URI is downloaded to a temporary folder, removed once the model is loaded)."""
    from waferflow.models.spec import load_model_dir
    from waferflow.models.weights import downloaded_model_dir, is_mlflow_uri

    uri = weights_source.removeprefix("mlflow:")
    if is_mlflow_uri(uri):
        with downloaded_model_dir(uri, tracking_uri) as local:
            return (uri, *load_model_dir(local))
    path = Path(uri.removeprefix("file:"))
    if not (path / "model.json").is_file():
        raise ModelFormatError(f"the source model was loaded from {weights_source!r}, which is not a model dir or an "
                               "MLflow URI, so it cannot be ensembled; set source_ensemble_below=0")
    return (uri, *load_model_dir(path))


def _ensemble(model_dir: Path, weights_source: str, val_file, out: Path, found: dict,
              tracking_uri: str | None) -> dict[str, Any]:
    from waferflow.data.contract import load_dataset
    from waferflow.evaluation import check_classes
    from waferflow.models.ensemble import (ENSEMBLE_KEY, MeanProbabilityEnsemble, ensemble_record, is_ensemble,
                                           member_mismatch)
    from waferflow.models.spec import copy_model_extras, load_model_dir, save_model_dir

    model, spec = load_model_dir(model_dir)
    uri, source, source_spec = _load_source(weights_source, tracking_uri)
    differ = member_mismatch(source_spec, spec)
    if differ:
        raise ModelFormatError(f"the source model {uri} differs from the model in {differ} "
                               f"({[getattr(source_spec, k) for k in differ]} against "
                               f"{[getattr(spec, k) for k in differ]}), so they cannot be ensembled; set "
                               "source_ensemble_below=0")
    if is_ensemble(spec) or is_ensemble(source_spec):
        raise ModelFormatError(f"the model or the source model {uri} is an ensemble already, so they cannot be "
                               "ensembled again; set source_ensemble_below=0")
    val = load_dataset(val_file, require_labels=True)
    check_classes(val, spec)
    ensemble = MeanProbabilityEnsemble([model, source]).eval()
    report = {"status": "ensembled", **found, "source": uri,
              "validation": {"before": val_scores(model, spec, val), "after": val_scores(ensemble, spec, val)}}
    copy_model_extras(model_dir, out)  # history and config are the first member's
    record = ensemble_record([f"sha256:{spec.weights_sha256}", uri])
    save_model_dir(ensemble, spec.replace(extra={**spec.extra, ENSEMBLE_KEY: record, "source_ensemble": report},
                                          weights_sha256=None), out)
    return report


def describe(report: dict[str, Any]) -> str:
    """One line for the log: the status and the validation change (of either kind of report)."""
    if "source_ensemble_below" not in report:
        return describe_interpolation(report)
    line = f"source ensemble: {report['status']}"
    if "validation" in report:
        b, a = report["validation"]["before"], report["validation"]["after"]
        line += (f" (the model and {report['source']}, mean probability; {report['n_labeled']} labeled training "
                 f"maps < {report['source_ensemble_below']}); validation accuracy {b['accuracy']:.4f} -> "
                 f"{a['accuracy']:.4f}, macro-F1 {b['macro_f1']:.4f} -> {a['macro_f1']:.4f} (applied whatever these "
                 "say: a recipe choice, not a per-run decision)")
    return line
