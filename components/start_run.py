"""MLflow stage: open the pipeline's parent run (its config as params and an artifact, the data manifest's hash
as the ``data_hash`` tag)."""

from kfp import dsl
from kfp.dsl import Dataset, Input

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def start_run(
    experiment: str,
    pipeline_run: str,
    data: Input[Dataset],
    candidates: list,
    train_config: dict,
    epochs: dict,
    gates: dict,
    data_source: str,
    n_maps: int,
    map_size: int,
    taxonomy: str,
    seed: int,
    input_size: int,
    pretrained: str,
    device: str,
    tracking_uri: str,
    unlabeled_source: str = "",
) -> str:
    """Create the MLflow parent run of this pipeline run; returns its id.

    Args:
        experiment: MLflow experiment.
        pipeline_run: The KFP run name (tag and run name).
        data: The data stage's dataset (its manifest is logged; its hash becomes the ``data_hash`` tag).
        candidates, train_config, epochs, gates: Pipeline arguments, logged as params + config artifact.
        data_source ... device, unlabeled_source: The remaining pipeline arguments (logged as params).
        tracking_uri: "" = ``$MLFLOW_TRACKING_URI`` (a Secret on the cluster; ``waferflow run`` sets it locally).
    """
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.tracking import start_pipeline_run

    with stage("start_run") as rec:
        import os

        config = {"candidates": list(candidates), "train": dict(train_config), "epochs": dict(epochs),
                  "gates": dict(gates), "data_source": data_source, "unlabeled_source": unlabeled_source,
                  "n_maps": n_maps, "map_size": map_size, "taxonomy": taxonomy, "seed": seed,
                  "input_size": input_size, "pretrained": pretrained, "device": device}
        rid = start_pipeline_run(resolve_uri(tracking_uri), experiment=experiment, run_name=pipeline_run,
                                 config=config, data_manifest=os.path.join(data.path, "data.json"),
                                 tags={"kfp_run": pipeline_run})
        rec.update(run_id=rid)
    return rid
