"""Adaptive batch-norm stage: re-estimate each backbone's BN statistics on target-domain maps."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def adapt_batchnorm(
    train: Input[Dataset],
    unlabeled: Input[Dataset],
    backbones: list,
    input_size: int,
    pretrained: str,
    seed: int,
    sources: dict,
    adapted: Output[Model],
    max_maps: int = 20000,
):
    """Write one model folder per backbone (``<adapted>/<backbone>/``) with BN statistics re-estimated on the
    target maps (training maps plus any unlabeled ones; labels are not used). Train tasks start from these.

    Args:
        train: Training split (its maps, not labels, are used).
        unlabeled: Unlabeled target maps from the data stage (may hold none).
        backbones: timm backbone names.
        input_size: Model input size (0 = the backbone's pretrained size).
        pretrained: Pretrained weights source (see ``waferflow.models.create_model``).
        seed: Seed for the map sample and for the new classifier head's initial weights (fine-tuning candidates
            start from it, so it must not change between runs).
        max_maps: At most this many maps are sampled (never stacked whole) from a larger train + unlabeled pool.
        sources: backbone -> source model URI (the source stage's output); each also gets a BN-adapted start point
            ``<adapted>/<backbone>@source/`` that the source candidates fine-tune from.
    """
    import os

    import torch

    from waferflow.data.contract import load_dataset
    from waferflow.models import create_model, save_model_dir
    from waferflow.orchestration.runtime import dataset_file, stage, versions
    from waferflow.train.adapt import adapt_bn, sample_maps

    with stage("adapt_bn", backbones=",".join(backbones)) as rec:
        train_ds = load_dataset(dataset_file(train.path), require_labels=True)
        extra_path = dataset_file(unlabeled.path)
        target = [train_ds]
        if extra_path.exists():
            target.append(load_dataset(extra_path))
        os.makedirs(adapted.path, exist_ok=True)
        info = {}
        starts = [(b, b, pretrained) for b in backbones] + [(b, f"{b}@source", sources[b]) for b in backbones
                                                            if sources.get(b)]
        uri = os.environ.get("MLFLOW_TRACKING_URI") or None
        for b, folder, weights in starts:
            with torch.random.fork_rng():  # the new classifier head starts the same on every run
                torch.manual_seed(seed)
                model, spec = create_model(
                    b, num_classes=train_ds.num_classes, pretrained=weights, input_size=input_size or None,
                    class_names=list(train_ds.class_names), taxonomy=train_ds.meta.get("taxonomy"),
                    tracking_uri=uri,
                )
            maps = sample_maps(target, spec.input_size, max_maps, seed)
            report = adapt_bn(model, spec, maps)
            save_model_dir(model, spec, os.path.join(adapted.path, folder))
            info[folder] = {"weights_source": spec.weights_source, "n_maps": report["n_maps"],
                            "n_layers": report["n_layers"],
                            "mean_abs_shift_running_mean": report.get("mean_abs_shift_running_mean")}
            print(f"[waferflow] adapt_bn {folder}: weights {spec.weights_source}, {report['n_layers']} BN layers "
                  f"re-estimated on {report['n_maps']} maps")
        rec.update(backbones=list(backbones))
        adapted.metadata.update(
            {"backbones": list(backbones), "pretrained": pretrained, "sources": dict(sources), "adapt": info,
             "data_hash": train.metadata.get("data_hash", ""), "versions": versions()}
        )
