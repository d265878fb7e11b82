"""Wafer-map data layer: the data contract, synthetic generation, ingest and split."""

from waferflow.data.contract import (
    WaferDataset,
    dataset_hash,
    load_dataset,
    resize_nearest,
    save_dataset,
    validate_maps,
)

__all__ = ["WaferDataset", "dataset_hash", "load_dataset", "resize_nearest", "save_dataset", "validate_maps"]
