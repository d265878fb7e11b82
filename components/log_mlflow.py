"""MLflow stage: log the selected candidate as a nested run (``waferflow.orchestration.mlflow_steps.log_selected``)."""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def log_to_mlflow(
    parent_run_id: str,
    model: Input[Model],
    onnx: Input[Model],
    test_metrics: Input[Artifact],
    int8_metrics: Input[Artifact],
    latency: Input[Artifact],
    trt: Input[Artifact],
    candidates: Input[Artifact],
    test: Input[Dataset],
    train: Input[Dataset],
    val: Input[Dataset],
    tracking_uri: str,
    data: Input[Dataset],
    unlabeled: Input[Dataset],
    gates: dict,
) -> str:
    """Log the selected candidate (params, history, test metrics FP32/INT8, latency, the model folder, the ONNX
    models, the TensorRT record and every candidate's validation metrics) as a nested run, with the drift
    reference built from its training data (``drift_reference/``: the version's run carries it, so drift is
    always judged against the champion's own reference; its PCA is fitted on the train split and its rows are the
    val and test maps, which the model was not fitted on). The data manifest names every split (train, val, test,
    and the unlabeled maps when there are any) with its hash, and each is logged as an input dataset of the run.
    The raw-map pyfunc wraps the ONNX form the gates deploy (``gates``, GateConfig overrides); returns the run
    id."""
    import os

    from waferflow.orchestration.mlflow_steps import data_manifest, log_selected
    from waferflow.orchestration.runtime import dataset_file, stage, tracking_uri as resolve_uri

    with stage("log_mlflow", candidate=model.metadata.get("candidate")) as rec:
        manifest = data_manifest(data.path, {"train": train.path, "val": val.path, "test": test.path,
                                             "unlabeled": unlabeled.path})
        run_id = log_selected(
            resolve_uri(tracking_uri), parent_run_id, model.path, export_dir=onnx.path,
            metrics={"test": os.path.join(test_metrics.path, "metrics.json"),
                     "int8": os.path.join(int8_metrics.path, "metrics.json"),
                     "latency": os.path.join(latency.path, "latency.json")},
            artifacts={"candidates": os.path.join(candidates.path, "candidates.json"),
                       "tensorrt": os.path.join(trt.path, "trt.json")},
            manifest=manifest, run_name=model.metadata.get("candidate"), gates=gates,
            train_file=dataset_file(train.path), holdout_files=[dataset_file(val.path), dataset_file(test.path)],
        )
        rec.update(run_id=run_id, drift_reference="drift_reference/")
    return run_id
