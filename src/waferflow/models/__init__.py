"""Backbones, pretrained weight sources, preprocessing and model dirs.

Public API: :class:`ModelSpec`, :func:`create_model`, :func:`save_model_dir`,
:func:`load_model_dir`, :func:`preprocess` (see docs/ARCHITECTURE.md).
"""

from waferflow.models.backbones import BACKBONES, create_model, data_config
from waferflow.models.spec import (
    ModelSpec,
    load_model_dir,
    load_state_dict_file,
    preprocess,
    preprocess_tensor,
    read_spec,
    save_model_dir,
)
from waferflow.models.weights import OFFLINE_PACKAGES, offline_state_dict

__all__ = [
    "BACKBONES",
    "OFFLINE_PACKAGES",
    "ModelSpec",
    "create_model",
    "data_config",
    "load_model_dir",
    "load_state_dict_file",
    "offline_state_dict",
    "preprocess",
    "preprocess_tensor",
    "read_spec",
    "save_model_dir",
]
