"""Exit handler: close the pipeline's MLflow parent run, FINISHED or FAILED with the error."""

from kfp import dsl
from kfp.dsl import PipelineTaskFinalStatus

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def finish_run(status: PipelineTaskFinalStatus, pipeline_run: str, experiment: str, tracking_uri: str):
    """Exit handler: close this pipeline run's MLflow parent run (found by its ``kfp_run`` tag: an exit task
    may not consume other tasks' outputs); when the pipeline failed, record it FAILED with the error and the
    failing task (a FAILED run is created when the failure came before the parent run existed)."""
    from waferflow.orchestration.mlflow_steps import close_pipeline_run
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri

    with stage("finish_run", state=status.state):
        close_pipeline_run(resolve_uri(tracking_uri), experiment, pipeline_run, status.state,
                           error=status.error_message, task=status.pipeline_task_name)
