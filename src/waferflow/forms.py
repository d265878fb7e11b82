"""The names of the model forms and of their files: no imports, so the CLI parser, ``predictors`` and ``export``
can all read them (the loaders are in ``waferflow.predictors.table``)."""

FP32_NAME = "model.onnx"  # in an export dir
INT8_NAME = "model.int8.onnx"  # in an export dir
WEIGHTS_NAME = "weights.pt"  # in a model dir (the same name as ``waferflow.models.spec.WEIGHTS_PT``)
ENGINE_PRECISIONS = ("fp16", "int8")


def engine_name(precision: str) -> str:
    """File name of the TensorRT engine for a precision (``model.fp16.engine``), in a compile-trt dir."""
    return f"model.{precision}.engine"


#: every base form, in table order (``tta`` is a wrapper around any of them, not a form)
FORM_NAMES: tuple[str, ...] = ("torch", "onnx_fp32", "onnx_int8", *(f"tensorrt_{p}" for p in ENGINE_PRECISIONS))
