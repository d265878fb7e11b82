"""Split stage: stratified (lot-aware when lots are known) train/val/test, optionally N labels per class."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def split_data(
    dataset: Input[Dataset],
    labels_per_class: int,
    seed: int,
    train: Output[Dataset],
    val: Output[Dataset],
    test: Output[Dataset],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
) -> NamedTuple("SplitInfo", [("n_train", int), ("n_val", int), ("n_test", int)]):
    """Split the labeled maps into train/val/test Dataset folders.

    Args:
        dataset: The data stage's labeled maps.
        labels_per_class: Keep only N training maps per class (0 = all).
        seed: Split seed.
        val_fraction: Share of the maps (of the lots, where lots exist) for validation.
        test_fraction: Share for the test split.
    """
    import os
    from collections import namedtuple

    from waferflow.data.contract import load_dataset, save_dataset
    from waferflow.data.split import split_dataset
    from waferflow.orchestration.runtime import dataset_file, stage, versions

    with stage("split", labels_per_class=labels_per_class, val_fraction=val_fraction,
               test_fraction=test_fraction) as rec:
        ds = load_dataset(dataset_file(dataset.path), require_labels=True)
        parts = split_dataset(ds, val=val_fraction, test=test_fraction, seed=seed,
                              labels_per_class=labels_per_class or None)
        sizes = {}
        for name, art in (("train", train), ("val", val), ("test", test)):
            part = getattr(parts, name) if hasattr(parts, name) else parts[name]
            os.makedirs(art.path, exist_ok=True)
            man = save_dataset(part, dataset_file(art.path), source=f"split:{name}:{dataset.metadata.get('data_hash', '')}")
            art.metadata.update(
                {"split": name, "n": len(part), "data_hash": man["content_sha256"],
                 "parent_data_hash": dataset.metadata.get("data_hash", ""), "seed": seed,
                 "labels_per_class": labels_per_class, "val_fraction": val_fraction,
                 "test_fraction": test_fraction, "versions": versions()}
            )
            sizes[name] = len(part)
        rec.update(sizes)
    return namedtuple("SplitInfo", ["n_train", "n_val", "n_test"])(sizes["train"], sizes["val"], sizes["test"])
