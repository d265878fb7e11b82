"""The drift-monitor pipeline (wiring only): check new maps; on drift, start the training pipeline.

check-drift (evidently HTML report + Metrics + decision) -> dsl.If(drift_detected == True) -> start-training.
Scheduled as a recurring run (``waferflow schedule``); its service account needs the RBAC in ``manifests/`` to
create training runs. Both tasks read MLflow and S3 credentials from the pipeline Secret. ``current`` (required) and
``train_data`` are ``s3://BUCKET/KEY``, ``runs:/RUN_ID/PATH`` or a path under the PVC of ``cluster.data_pvc``; on
drift, ``start-training`` uploads the retrain's inputs to the drift run in MLflow and hands the training run their
``runs:/`` URIs, which its pods can read.
"""

from kfp import dsl

from waferflow.components.drift_check import check_drift
from waferflow.components.start_training import start_training
from waferflow.config import to_dict
from waferflow.drift.config import DriftConfig
from waferflow.pipelines._cluster import place
from waferflow.profiles import ClusterOptions

PIPELINE_NAME = "waferflow-drift-monitor"


def build_pipeline(cluster: ClusterOptions | None = None):
    """Build the drift-monitor pipeline (call it under kfp.local, or compile it).

    Args:
        cluster: Cluster options (Secret name and keys); defaults to :class:`ClusterOptions`.
    """
    c = cluster or ClusterOptions()
    d = DriftConfig()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="waferflow: evidently drift check of new wafer maps against the champion; retrain on drift.",
    )
    def drift_monitor(
        current: str,
        model: str = "",
        share_threshold: float = d.share_threshold,
        feature_threshold: float = d.feature_threshold,
        embedding_threshold: float = d.embedding_threshold,
        prediction_threshold: float = d.prediction_threshold,
        train_data: str = "",
        tracking_uri: str = "",
        registered_model_name: str = "wafer-defect-classifier",
        training_host: str = "",
        namespace: str = "",
        training_profile: str = "local",
        training_overrides: list = [],
        workdir: str = "waferflow_runs",
    ):
        check = check_drift(
            current=current, model=model, share_threshold=share_threshold, feature_threshold=feature_threshold,
            embedding_threshold=embedding_threshold, prediction_threshold=prediction_threshold,
            train_data=train_data, tracking_uri=tracking_uri, registered_model_name=registered_model_name,
        ).set_display_name("drift-check")
        place(check, c)
        with dsl.If(check.outputs["drift_detected"] == True, name="drift-detected"):  # noqa: E712
            train = start_training(
                decision=check.outputs["decision"], host=training_host, namespace=namespace,
                profile=training_profile, overrides=training_overrides, cluster=to_dict(c), workdir=workdir,
            ).set_display_name("start-training")
            place(train, c)

    return drift_monitor


drift_monitor = build_pipeline()
