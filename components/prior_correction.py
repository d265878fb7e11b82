"""Prior-correction stage: undo, in the head of the model that goes on, the class prior its class weights trained
in, so every exported form scores maps under the data's own class prior."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def correct_prior(
    trained: Input[Model],
    undo_class_weights: bool,
    model: Output[Model],
    report: Output[Artifact],
) -> NamedTuple("PriorCorrection", [("status", str)]):
    """Write ``trained`` as ``model`` with its recorded logit shift (``model.json`` ``train.logit_shift``) taken out of the
    classifier's bias (``waferflow.train.prior.undo_class_prior``), or unchanged when ``undo_class_weights`` is off.

    Args:
        trained: The model that goes on (the self-training stage's output).
        undo_class_weights: The profile's ``undo_class_weights``.
    """
    import os
    import shutil
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.models.spec import read_spec
    from waferflow.orchestration.runtime import stage, versions
    from waferflow.train.prior import undo_class_prior

    with stage("prior_correction") as rec:
        if undo_class_weights:
            found = undo_class_prior(trained.path, model.path)
        else:
            shutil.copytree(trained.path, model.path, dirs_exist_ok=True)
            found = {"status": "off: undo_class_weights is false"}
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "prior_correction.json"), found)
        print(f"[waferflow] prior correction: {found['status']} {found.get('shift', '')}")
        model.metadata.update({**dict(trained.metadata), "prior_correction": found["status"], "versions": versions(),
                               "weights_sha256": read_spec(model.path).weights_sha256})
        rec.update(status=found["status"])
    return namedtuple("PriorCorrection", ["status"])(found["status"])
