"""MLflow stage: judge every gate and register the candidate
(``waferflow.orchestration.mlflow_steps.gate_and_register``)."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def register_model(
    run_id: str,
    parent_run_id: str,
    test: Input[Dataset],
    test_metrics: Input[Artifact],
    int8_metrics: Input[Artifact],
    latency: Input[Artifact],
    gates: dict,
    registered_model_name: str,
    tracking_uri: str,
    verdicts: Output[Artifact],
    model: Input[Model],
    onnx: Input[Model],
) -> NamedTuple("Registered", [("version", str), ("passed", bool), ("summary", str)]):
    """Check every gate, then register the logged candidate as a new model version whose tags and model card carry
    every verdict, its interval and a one-line reason; ``challenger`` moves to it. The gates read the deployment
    form: the candidate predicts the test maps in it (from ``onnx``). When there is a champion, it predicts the same
    maps in the form it deploys, and "not worse" is a paired test on those maps (McNemar, paired bootstrap).
    ``passed`` drives the ``dsl.If`` around promotion.

    Args:
        run_id: The candidate run (log_to_mlflow).
        gates: GateConfig overrides, e.g. ``{"min_accuracy": 0.95}``.
        model: The candidate's model folder (its spec and the torch form).
        onnx: The candidate's export dir (the ONNX forms, TTA graphs included).
    """
    import os
    from collections import namedtuple

    from waferflow.orchestration.mlflow_steps import gate_and_register
    from waferflow.orchestration.runtime import dataset_file, stage, tracking_uri as resolve_uri, versions

    with stage("register", model_name=registered_model_name) as rec:
        report, version = gate_and_register(
            resolve_uri(tracking_uri), run_id, parent_run_id=parent_run_id, model_dir=model.path,
            test_file=dataset_file(test.path), test_data_hash=test.metadata.get("data_hash"),
            metrics={"test": os.path.join(test_metrics.path, "metrics.json"),
                     "int8": os.path.join(int8_metrics.path, "metrics.json"),
                     "latency": os.path.join(latency.path, "latency.json")},
            gates=gates, name=registered_model_name, verdicts_dir=verdicts.path, export_dir=onnx.path,
        )
        failed = [r.name for r in report.violations]
        verdicts.metadata.update({"passed": report.passed, "failed": failed, "reason": report.reason,
                                  "version": version, "champion_compared": report.champion_version,
                                  "versions": versions()})
        rec.update(version=version, passed=report.passed, failed=failed)
    return namedtuple("Registered", ["version", "passed", "summary"])(version, bool(report.passed), report.reason)
