"""Source-model stage: ImageNet -> synthetic maps of the data's taxonomy, registered once and reused by URI."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Output

from waferflow.components._images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def source_model(
    dataset: Input[Dataset],
    settings: dict,
    backbones: list,
    input_size: int,
    pretrained: str,
    device: str,
    tracking_uri: str,
    report: Output[Artifact],
) -> NamedTuple("Sources", [("sources", dict), ("note", str)]):
    """Find (or pretrain and register) one source model per backbone; returns ``{backbone: models:/...}``.

    Args:
        dataset: The labeled data (its class names choose the synthetic taxonomy).
        settings: ``waferflow.train.source.SourceConfig`` overrides; empty = off.
        backbones, input_size, pretrained, device: As for the candidates.
        tracking_uri: "" = ``$MLFLOW_TRACKING_URI``.
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.orchestration.runtime import stage, tracking_uri as resolve_uri
    from waferflow.orchestration.source_step import resolve_sources

    with stage("source_model") as rec:
        uri = resolve_uri(tracking_uri) if settings else ""  # an off stage needs no MLflow
        found = resolve_sources(dataset.metadata["class_names"], backbones, settings, input_size, pretrained,
                                device, uri)
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "source.json"), found)
        print(f"[waferflow] source model: {found['note']}")
        rec.update(note=found["note"], reused=found["reused"], pretrained_now=found["pretrained_now"])
    return namedtuple("Sources", ["sources", "note"])(found["sources"], found["note"])
