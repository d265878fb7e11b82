"""Source-interpolation stage: average the weights of the model that goes on with the source model it was fine-tuned
from (WiSE-FT), then re-estimate its batch norm on the run's maps; the model's validation figures are then the
averaged model's."""

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
    max_maps: int = 20000,
) -> NamedTuple("SourceInterpolation", [("status", str)]):
    """Write ``trained`` averaged with ``<adapted>/<backbone>@source`` (``waferflow.train.wise.
    run_source_interpolation``), or unchanged when ``source_weight`` is 0 or the model did not start from the source.
    An averaged model is scored on validation before and after (before anything is written): its ``val_*`` metadata
    are the averaged model's, the report and ``val_before_source_interpolation`` hold both (test is not read).

    Args:
        trained: The model that goes on (the prior-correction stage's output).
        adapted: The adaptive-BN stage's start points (its ``<backbone>@source`` folder is the source model).
        train, unlabeled: Maps (not labels) that re-estimate batch norm; at most ``max_maps`` are sampled.
        val: The validation split.
        source_weight: The profile's ``source_weight`` (0 = off).
        seed: Seed of the map sample.
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.orchestration.runtime import dataset_file, rewritten_model_metadata, stage
    from waferflow.train.wise import describe, run_source_interpolation

    with stage("source_interpolation") as rec:
        maps = [dataset_file(train.path)] + [p for p in [dataset_file(unlabeled.path)] if p.exists()]
        found = run_source_interpolation(trained.path, adapted.path, maps, dataset_file(val.path), model.path,
                                         source_weight, max_maps=max_maps, seed=seed)
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "source_interpolation.json"), found)
        print(f"[waferflow] {describe(found)}")
        model.metadata.update(rewritten_model_metadata(trained.metadata, "source_interpolation", found, model.path))
        rec.update(status=found["status"], **({"validation": found["validation"]} if "validation" in found else {}))
    return namedtuple("SourceInterpolation", ["status"])(found["status"])
