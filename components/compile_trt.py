"""TensorRT stage: compile the ONNX model to an engine on a GPU node; record the skip where there is no CUDA."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model, Output

from waferflow.components._images import GPU_IMAGE


@dsl.component(base_image=GPU_IMAGE, install_kfp_package=False)
def compile_tensorrt(
    onnx: Input[Model],
    model: Input[Model],
    calibration: Input[Dataset],
    test: Input[Dataset],
    precision: str,
    engine: Output[Model],
    report: Output[Artifact],
) -> NamedTuple("TrtResult", [("status", str)]):
    """Build TensorRT engines (FP16 from ``onnx/model.onnx``, INT8 from a Q/DQ model). Without a CUDA device (or
    the tensorrt package) the library records ``"skipped: ..."`` in ``report/trt.json`` and no engine is written:
    it never fakes one.

    Args:
        onnx: The export dir.
        model: The model folder (PyTorch baseline of the engine benchmark).
        calibration: Training maps, to quantize an INT8 model for TensorRT when the export's is not symmetric.
        test: Labeled maps for the engines' accuracy.
        precision: "fp16", "int8" or "both".
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.data.contract import load_dataset
    from waferflow.export.trt import compile_trt
    from waferflow.orchestration.runtime import dataset_file, stage, versions

    with stage("compile_trt", precision=precision) as rec:
        calib = load_dataset(dataset_file(calibration.path), require_labels=True)
        test_ds = load_dataset(dataset_file(test.path), require_labels=True)
        result = compile_trt(onnx.path, engine.path, precision=precision, calib_ds=calib, eval_ds=test_ds,
                             model_dir=model.path)
        os.makedirs(report.path, exist_ok=True)
        atomic_write_json(os.path.join(report.path, "trt.json"), result)
        status = str(result.get("status", "unknown"))
        print(f"[waferflow] TensorRT: {status}")
        rec.update(status=status)
        report.metadata.update({"status": status, "precision": precision, "versions": versions()})
        engine.metadata.update({"status": status, "precision": precision})
    return namedtuple("TrtResult", ["status"])(status)
