"""Source-interpolation stage: combine the model that goes on with the synthetic source model, by its weights
(``source_weight``: WiSE-FT, batch norm then re-estimated on the run's maps) or by its outputs
(``source_ensemble_below``: one mean-probability ensemble when labels are few); the model's validation figures are
then the combined model's."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def interpolate_source(
    trained: Input[Model],
    adapted: Input[Model],
    train: Input[Dataset],
    unlabeled: Input[Dataset],
    val: Input[Dataset],
    source_weight: float,
    seed: int,
    model: Output[Model],
    report: Output[Artifact],
    source_ensemble_below: int = 0,
    tracking_uri: str = "",
    max_maps: int = 20000,
) -> NamedTuple("SourceInterpolation", [("status", str)]):
    """Write ``trained`` averaged with ``<adapted>/<backbone>@source`` (``waferflow.train.wise``), or ensembled with
    the source model that start point was loaded from (``waferflow.train.source_ensemble``), or unchanged when both
    settings are 0 or there is nothing to combine with (``waferflow.train.source_ensemble.run_source_stage``). A new
    model is scored on validation before and after (before anything is written): its ``val_*`` metadata are the new
    model's, the report and ``val_before_source_interpolation`` hold both (test is not read).

    Args:
        trained: The model that goes on (the prior-correction stage's output).
        adapted: The adaptive-BN stage's start points (its ``<backbone>@source`` folder is the source model).
        train, unlabeled: Maps (not labels) that re-estimate batch norm; at most ``max_maps`` are sampled.
        val: The validation split.
        source_weight: The profile's ``source_weight`` (0 = off).
        seed: Seed of the map sample.
        source_ensemble_below: The profile's ``source_ensemble_below`` (0 = off).
        tracking_uri: Where the source model is registered ("" = ``$MLFLOW_TRACKING_URI``; read only by an ensemble).
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.orchestration.runtime import dataset_file, rewritten_model_metadata, stage
    from waferflow.train.source_ensemble import describe, run_source_stage

    with stage("source_interpolation") as rec:
        maps = [dataset_file(train.path)] + [p for p in [dataset_file(unlabeled.path)] if p.exists()]
        found = run_source_stage(trained.path, adapted.path, maps, dataset_file(val.path), model.path, source_weight,
                                 source_ensemble_below, max_maps=max_maps, seed=seed,
                                 tracking_uri=tracking_uri or None)  # None: $MLFLOW_TRACKING_URI, when needed
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "source_interpolation.json"), found)
        print(f"[waferflow] {describe(found)}")
        model.metadata.update(rewritten_model_metadata(trained.metadata, "source_interpolation", found, model.path))
        rec.update(status=found["status"], **({"validation": found["validation"]} if "validation" in found else {}))
    return namedtuple("SourceInterpolation", ["status"])(found["status"])
