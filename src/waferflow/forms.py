"""The names of the model forms and of their files: no imports, so the CLI parser, ``predictors`` and ``export``
can all read them (the loaders are in ``waferflow.predictors.table``)."""

FP32_NAME = "model.onnx"  # in an export dir
INT8_NAME = "model.int8.onnx"  # in an export dir
TTA_FP32_NAME = "model.tta.onnx"  # in an export dir: model.onnx with test-time augmentation inside the graph
TTA_INT8_NAME = "model.int8.tta.onnx"  # in an export dir: the same around model.int8.onnx
WEIGHTS_NAME = "weights.pt"  # in a model dir (the same name as ``waferflow.models.spec.WEIGHTS_PT``)
ENGINE_PRECISIONS = ("fp16", "int8")


def engine_name(precision: str) -> str:
    """File name of the TensorRT engine for a precision (``model.fp16.engine``), in a compile-trt dir."""
    return f"model.{precision}.engine"


#: every base form, in table order (``tta`` is a wrapper around any of them, not a form; ``onnx_*_tta`` are ONNX
#: graphs that hold the views and the mean softmax themselves, so they deploy as one file)
FORM_NAMES: tuple[str, ...] = ("torch", "onnx_fp32", "onnx_int8", "onnx_fp32_tta", "onnx_int8_tta",
                               *(f"tensorrt_{p}" for p in ENGINE_PRECISIONS))
#: the forms whose file lives in an export dir (``waferflow export``), with their base ONNX form
EXPORT_FORMS: dict[str, str] = {"onnx_fp32": FP32_NAME, "onnx_int8": INT8_NAME, "onnx_fp32_tta": TTA_FP32_NAME,
                                "onnx_int8_tta": TTA_INT8_NAME}
TTA_OF: dict[str, str] = {"onnx_fp32": "onnx_fp32_tta", "onnx_int8": "onnx_int8_tta"}
