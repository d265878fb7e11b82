"""MLflow stage: move ``champion`` to the gated version, under the registry's lock."""

from kfp import dsl
from kfp.dsl import Artifact, Input

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def promote_model(verdicts: Input[Artifact], registered_model_name: str, tracking_uri: str) -> str:
    """Move ``champion`` to the gated version (runs only under ``dsl.If(passed)``; the registry re-checks
    under its lock and records the decision in the audit trail). Returns the champion version after it."""
    from waferflow.gates import GateReport
    from waferflow.orchestration.mlflow_steps import read_json
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.tracking import promote_if_passing

    data = read_json(verdicts.path, "gates.json")
    with stage("promote", version=data["version"]) as rec:
        res = promote_if_passing(resolve_uri(tracking_uri), data["version"], GateReport.from_dict(data),
                                 name=registered_model_name)
        print(f"[waferflow] promotion of v{res.version}: {'promoted' if res.promoted else 'refused'} ({res.reason}); "
              f"champion {res.old_champion} -> {res.new_champion}")
        rec.update(promoted=res.promoted, champion=res.new_champion)
    return str(res.new_champion)
