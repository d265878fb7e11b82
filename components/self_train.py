"""Self-training stage: the selected candidate pseudo-labels the unlabeled pool; a student trains on labels +
pseudo-labels; the one with the better validation macro-F1 goes on."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def self_train_model(
    teacher: Input[Model],
    train: Input[Dataset],
    val: Input[Dataset],
    unlabeled: Input[Dataset],
    settings: dict,
    train_config: dict,
    device: str,
    seed: int,
    model: Output[Model],
    report: Output[Artifact],
) -> NamedTuple("SelfTraining", [("chosen", str), ("kept", int)]):
    """Run ``settings["rounds"]`` rounds of self-training from ``teacher`` and write the model that goes on.

    Args:
        teacher: The candidate chosen on validation.
        train, val: Splits (validation decides between teacher and student; test is not read).
        unlabeled: The pool (the data stage samples it to the profile's ``pool_size``); its labels are never read.
        settings: ``waferflow.train.selftrain.SelfTrainConfig`` overrides (``rounds`` 0 = off).
        train_config: The run's TrainConfig overrides (the students' own ``train`` settings win).
        device, seed: As for the candidates.
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.orchestration.runtime import dataset_file, stage, versions
    from waferflow.orchestration.selftrain_step import describe, run_self_training

    with stage("self_train") as rec:
        teacher_val = {"accuracy": float(teacher.metadata.get("val_accuracy", 0.0)),
                       "macro_f1": float(teacher.metadata.get("val_macro_f1", 0.0))}
        found = run_self_training(teacher.path, teacher_val, dataset_file(train.path), dataset_file(val.path),
                                  dataset_file(unlabeled.path), settings, train_config, seed, device, model.path)
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "self_training.json"), found)
        line = describe(found)
        print(f"[waferflow] {line}")
        model.metadata.update(dict(teacher.metadata))
        if found["chosen"] == "student":
            model.metadata.update({"candidate": f"{teacher.metadata['candidate']}+selftrain",
                                   "val_accuracy": found["student_val"]["accuracy"],
                                   "val_macro_f1": found["student_val"]["macro_f1"]})
        model.metadata.update({"self_training": line, "versions": versions()})
        kept = sum(r["kept"] for r in found.get("per_round", [])[-1:])
        rec.update(status=found["status"], chosen=found["chosen"], kept=kept)
    return namedtuple("SelfTraining", ["chosen", "kept"])(found["chosen"], kept)
