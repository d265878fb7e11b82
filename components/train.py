"""Train stage: one candidate (strategy x backbone). Runs on the GPU image/node pool on a cluster."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from waferflow.components._images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def train_candidate(
    train: Input[Dataset],
    val: Input[Dataset],
    adapted: Input[Model],
    candidate: dict,
    train_config: dict,
    epochs: dict,
    input_size: int,
    device: str,
    seed: int,
    model: Output[Model],
) -> NamedTuple("TrainResult", [("val_accuracy", float), ("val_macro_f1", float), ("name", str)]):
    """Fine-tune one candidate from its BN-adapted backbone and write a model folder.

    Args:
        train, val: Splits.
        adapted: Per-backbone BN-adapted starting points (``<adapted>/<backbone>/``).
        candidate: ``{"strategy": ..., "backbone": ..., "init": "imagenet" | "source"}`` (init defaults to
            imagenet; a source candidate without a source model starts from ImageNet and says so).
        train_config: TrainConfig overrides for every candidate.
        epochs: strategy -> epochs override (missing = the strategy's default).
        input_size: Model input size (0 = pretrained size).
        device: "cpu" or "cuda" (no silent fallback: cuda without a GPU fails).
        seed: Training seed.
    """
    import json
    import os
    from collections import namedtuple

    from waferflow.config import load_config
    from waferflow.data.contract import load_dataset
    from waferflow.orchestration.runtime import dataset_file, stage, versions
    from waferflow.train import TrainConfig
    from waferflow.train.loop import train as train_model
    from waferflow.selection import candidate_name
    from waferflow.train.strategies import STRATEGIES

    strategy, backbone = candidate["strategy"], candidate["backbone"]
    init = candidate.get("init", "imagenet")
    name = candidate_name(strategy, backbone, init)
    with stage("train", candidate=name) as rec:
        overrides = dict(train_config)
        overrides.update(strategy=strategy, backbone=backbone, seed=seed, device=device)
        if input_size:
            overrides["input_size"] = input_size
        if strategy in epochs:
            overrides["epochs"] = int(epochs[strategy])
        cfg = load_config(TrainConfig, overrides=overrides)
        train_ds = load_dataset(dataset_file(train.path), require_labels=True)
        val_ds = load_dataset(dataset_file(val.path), require_labels=True)
        # Transfer strategies start from this backbone's BN-adapted weights (ImageNet, or the synthetic source model
        # when the source stage made one); scratch is random init by definition.
        start, note = None, ""
        if STRATEGIES[strategy].init != "random":
            start = os.path.join(adapted.path, backbone)
            if init == "source":
                if os.path.isdir(start + "@source"):
                    start += "@source"
                else:
                    note = "no source model for this data (see the source-model stage): started from ImageNet"
                    print(f"[waferflow] {name}: {note}")
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        result = train_model(cfg, train_ds, val_ds, model.path, weights=start, tracking_uri=uri)
        with open(os.path.join(model.path, "model.json")) as f:
            spec = json.load(f)
        acc, f1 = float(result.best_val["accuracy"]), float(result.best_val["macro_f1"])
        rec.update(val_accuracy=acc, val_macro_f1=f1, epochs=len(result.history), train_seconds=result.train_seconds)
        model.metadata.update(
            {"candidate": name, "strategy": strategy, "backbone": backbone, "init": init, "init_note": note,
             "val_accuracy": acc, "val_macro_f1": f1, "best_epoch": result.best_epoch, "epochs_run": len(result.history),
             "trainable_params": result.trainable_params, "total_params": result.total_params,
             "train_seconds": result.train_seconds, "throughput_maps_per_s": result.throughput_maps_per_s,
             "weights_source": spec.get("weights_source"),
             "weights_lineage": list(spec.get("weights_lineage") or []),
             "data_hash": train.metadata.get("data_hash", ""),
             "weights_sha256": spec.get("weights_sha256"), "versions": versions()}
        )
    return namedtuple("TrainResult", ["val_accuracy", "val_macro_f1", "name"])(acc, f1, name)
