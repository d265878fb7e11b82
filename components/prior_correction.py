"""Prior-correction stage: undo, in the head of the model that goes on, the class prior its class weights trained
in, so every exported form scores maps under the data's own class prior; the model's validation figures are then
the corrected model's."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def correct_prior(
    trained: Input[Model],
    val: Input[Dataset],
    undo_class_weights: bool,
    model: Output[Model],
    report: Output[Artifact],
) -> NamedTuple("PriorCorrection", [("status", str)]):
    """Write ``trained`` as ``model`` with its recorded logit shift (``model.json`` ``train.logit_shift``) taken out of the
    classifier's bias (``waferflow.train.prior.run_prior_correction``), or unchanged when ``undo_class_weights`` is off.
    A corrected model is scored on validation (``validation_before_after``, before anything is written): its ``val_*``
    metadata are the corrected model's, the report and ``val_before_prior_correction`` hold both (test is not read).

    Args:
        trained: The model that goes on (the self-training stage's output).
        val: The validation split.
        undo_class_weights: The profile's ``undo_class_weights``.
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.orchestration.runtime import dataset_file, rewritten_model_metadata, stage
    from waferflow.train.prior import describe, run_prior_correction

    with stage("prior_correction") as rec:
        found = run_prior_correction(trained.path, dataset_file(val.path), model.path, undo_class_weights)
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "prior_correction.json"), found)
        print(f"[waferflow] {describe(found)}")
        model.metadata.update(rewritten_model_metadata(trained.metadata, "prior_correction", found, model.path))
        rec.update(status=found["status"], **({"validation": found["validation"]} if "validation" in found else {}))
    return namedtuple("PriorCorrection", ["status"])(found["status"])
