"""Drift stage: start the training pipeline from a drift decision's retrain plan
(``waferflow.orchestration.retrain.start_retrain``): ``kfp.Client`` on a cluster (``host`` given; in-cluster
service-account credentials), or the kfp.local launcher (``host`` empty)."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def start_training(
    decision: Input[Artifact],
    host: str,
    namespace: str,
    profile: str,
    overrides: list,
    cluster: dict,
    workdir: str,
) -> str:
    """Start the training pipeline with the decision's retrain plan; return the run id (or local run dir).

    Args:
        decision: The ``check_drift`` decision folder (``decision.json`` with ``retrain_plan``).
        host: KFP host ("" = run it here through kfp.local).
        namespace: Kubeflow namespace ("" = default).
        profile: Training profile name.
        overrides: Profile overrides (``["key=value", ...]``).
        cluster: The drift monitor's own cluster options (image registry, Secret, GPU pool, namespace, service
            account): the training run it starts is compiled with them.
        workdir: kfp.local workdir (local only).
    """
    from waferflow.orchestration.retrain import start_retrain

    return start_retrain(decision.path, host=host, namespace=namespace, profile=profile, overrides=list(overrides),
                         cluster=dict(cluster), workdir=workdir)
