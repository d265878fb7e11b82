"""Predictors: every model form as a callable float32 [B, C, S, S] -> logits [B, K], and the batched loop.

``table`` is the table of forms (file in its artifact dir + loader) behind ``create_predictor``; ``runtime``
holds the in-process predictors (PyTorch, ONNX Runtime, TTA); ``tensorrt`` the CUDA-only engine predictor
(its runner is imported lazily); ``batches`` the one batched-inference loop and the penultimate features.
Depends on ``data`` and ``models`` only; ``evaluation``, ``export`` and ``train`` build on it.
"""

from waferflow.predictors.batches import (
    Predictor,
    batches_for,
    features_and_logits,
    penultimate_features,
    predict_batches,
    predict_dataset,
    softmax,
    spec_field,
)
from waferflow.predictors.runtime import (
    SYMMETRIES,
    onnx_predictor,
    onnx_session,
    onnxruntime_model_predictor,
    rotation_pad,
    torch_predictor,
    tta_predictor,
    tta_views,
)
from waferflow.forms import ENGINE_PRECISIONS, FP32_NAME, INT8_NAME, WEIGHTS_NAME, engine_name
from waferflow.predictors.table import BASE_FORMS, FORMS, Form, create_predictor, form_file, get_form
from waferflow.predictors.tensorrt import (
    SKIP_NO_CUDA,
    SKIP_NO_TENSORRT,
    tensorrt_predictor,
    trt_skip,
)

__all__ = [
    "BASE_FORMS", "ENGINE_PRECISIONS", "FORMS", "FP32_NAME", "INT8_NAME", "SKIP_NO_CUDA", "SKIP_NO_TENSORRT",
    "SYMMETRIES", "WEIGHTS_NAME", "Form",
    "Predictor", "batches_for", "create_predictor", "engine_name", "features_and_logits",
    "form_file", "get_form", "onnx_predictor", "onnx_session", "onnxruntime_model_predictor", "penultimate_features", "predict_batches",
    "predict_dataset", "rotation_pad", "softmax", "spec_field", "tensorrt_predictor", "torch_predictor", "tta_predictor",
    "tta_views", "trt_skip",
]
