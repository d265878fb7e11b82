"""TensorRT compile around the CUDA-only module: skip paths, the Q/DQ INT8 source, metadata."""

from __future__ import annotations

import json
import shutil
import sys
import types

import numpy as np
import pytest

from waferflow.errors import DataError
from waferflow.export import trt
from waferflow.models import read_spec


def test_skip_path_writes_no_engine(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "trt_skip", lambda: (trt.SKIP_NO_CUDA, "torch.cuda.is_available() is False"))
    out = tmp_path / "trt"
    res = trt.compile_trt(tiny["export_dir"], out, precision="both", calib_ds=tiny["train"])
    assert res["status"] == "skipped: no CUDA device"
    on_disk = json.loads((out / "tensorrt.json").read_text())
    assert on_disk["status"] == "skipped: no CUDA device"
    assert set(on_disk["engines"]) == {"fp16", "int8"}
    assert all(e["engine"] is None and e["status"] == "skipped: no CUDA device" for e in on_disk["engines"].values())
    assert [p.name for p in out.iterdir()] == ["tensorrt.json"], "no file may pretend to be an engine"


def test_cli_skip_path_exits_zero(tiny, tmp_path, monkeypatch):
    from waferflow.cli import main

    monkeypatch.setattr(trt, "trt_skip", lambda: (trt.SKIP_NO_CUDA, "no CUDA"))
    rc = main(["compile-trt", "--export", str(tiny["export_dir"]), "--out", str(tmp_path / "t"),
               "--precision", "fp16"])
    assert rc == 0
    assert not list((tmp_path / "t").glob("*.engine"))
    assert json.loads((tmp_path / "t" / "tensorrt.json").read_text())["status"] == "skipped: no CUDA device"


def test_real_environment_without_cuda_skips(tiny, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the real no-CUDA path; a CUDA machine runs scripts/gpu_check.py instead")
    status, why = trt.trt_skip()
    assert status == trt.SKIP_NO_CUDA and why
    res = trt.compile_trt(tiny["export_dir"], tmp_path / "t")
    assert res["status"] == trt.SKIP_NO_CUDA and not list((tmp_path / "t").glob("*.engine"))


def test_bad_export_dir_fails_even_when_skipping(tmp_path):
    from waferflow.errors import ModelFormatError

    with pytest.raises(ModelFormatError):
        trt.compile_trt(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cuda_without_tensorrt_says_so_not_no_cuda(tiny, tmp_path, monkeypatch):
    """A GPU machine without the tensorrt package is not reported as a machine without a GPU."""
    import importlib.util

    import torch

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    status, why = trt.trt_skip()
    assert status == trt.SKIP_NO_TENSORRT and "CUDA device is present" in why
    res = trt.compile_trt(tiny["export_dir"], tmp_path / "t", precision="both")
    assert res["status"] == "skipped: tensorrt not installed"
    assert not list((tmp_path / "t").glob("*.engine"))


def _fake_builder(monkeypatch, calls: list) -> None:
    """TensorRT present (as far as compile_trt can tell) with a builder that records what it was given."""
    def build_engine(onnx_path, engine_path, precision, profile):
        calls.append((precision, onnx_path.name))
        return {"build_seconds": 0.0, "size_bytes": 0, "tensorrt_version": "fake", "device": "none"}

    monkeypatch.setattr(trt, "trt_skip", lambda: None)
    fake = types.ModuleType("waferflow.export.tensorrt_build")
    fake.build_engine = build_engine
    monkeypatch.setitem(sys.modules, "waferflow.export.tensorrt_build", fake)


def _with_int8(tiny, dst, **kw):
    """A copy of the tiny export whose model.int8.onnx is quantized with ``kw`` (quantize_int8's settings)."""
    from waferflow.export import quantize_int8
    from waferflow.export.quantize import calibration_batches

    shutil.copytree(tiny["export_dir"], dst)
    calib = list(calibration_batches(tiny["train"], read_spec(tiny["model_dir"]), 64, batch_size=32))
    quantize_int8(dst / "model.onnx", dst / "model.int8.onnx", calib, **kw)
    _relist(dst)
    return dst


def _relist(export) -> None:
    """Record the export dir's model.int8.onnx in its export.json (as a re-export would)."""
    from waferflow.export import sha256_file

    info = json.loads((export / "export.json").read_text())
    info["sha256"]["model.int8.onnx"] = sha256_file(export / "model.int8.onnx")
    (export / "export.json").write_text(json.dumps(info))


def test_symmetric_int8_export_keeps_its_quantization_for_tensorrt(tiny, tmp_path, monkeypatch):
    """The export's s8s8 Q/DQ model is what the INT8 engine is built from: onnxruntime's INT32 bias
    dequantizations folded into FP32 biases, every activation and weight Q/DQ as the export set it; FP16 comes
    from model.onnx."""
    import onnx
    from onnx import numpy_helper

    from waferflow.predictors import onnx_predictor, predict_dataset

    given = tiny["export_dir"] / "model.int8.onnx"
    assert "INT32" in trt.tensorrt_qdq_problem(given)  # onnxruntime's quantized biases, as written
    calls: list = []
    _fake_builder(monkeypatch, calls)
    out = tmp_path / "t"
    res = trt.compile_trt(tiny["export_dir"], out, precision="both", calib_ds=None, bench=False)
    made = out / trt.TRT_INT8_NAME
    assert calls == [("fp16", "model.onnx"), ("int8", trt.TRT_INT8_NAME)]
    assert res["engines"]["int8"]["source_onnx"] == str(made.resolve()) and "folded" in res["engines"]["int8"]["qdq"]
    assert trt.tensorrt_qdq_problem(made) is None

    def qdq_scales(path):
        m = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        return sorted((n.op_type, n.input[0], inits[n.input[1]].tobytes()) for n in m.graph.node
                      if n.op_type in ("QuantizeLinear", "DequantizeLinear") and inits.get(n.input[0]) is None
                      or (n.op_type == "DequantizeLinear" and inits[n.input[0]].dtype.name == "int8"))

    assert qdq_scales(made) == qdq_scales(given)  # same activation and weight quantization
    spec = read_spec(tiny["model_dir"])
    a = predict_dataset(onnx_predictor(given), tiny["test"], spec, 64)
    b = predict_dataset(onnx_predictor(made), tiny["test"], spec, 64)
    assert (a.argmax(1) == b.argmax(1)).mean() >= 0.97

    # a Q/DQ model TensorRT takes as it is is used in place; the file made for an earlier export goes
    export = tmp_path / "export"
    shutil.copytree(tiny["export_dir"], export)
    shutil.copy(made, export / "model.int8.onnx")
    _relist(export)
    calls.clear()
    res = trt.compile_trt(export, out, precision="int8", calib_ds=None, bench=False)
    assert calls == [("int8", "model.int8.onnx")] and res["engines"]["int8"]["qdq"].startswith("export:")
    assert not made.exists(), "the earlier requantized model must go"


@pytest.mark.parametrize("kw, problem", [
    (dict(int8_format="u8s8", reduce_range=False), "UINT8"),
    (dict(method="dynamic"), "dynamic"),
])
def test_other_int8_exports_are_requantized_for_tensorrt(tiny, tmp_path, monkeypatch, kw, problem):
    """An export with asymmetric UINT8 activations (the VNNI-CPU choice) or a dynamic fallback is not Q/DQ
    TensorRT takes: the INT8 engine is built from model.onnx quantized symmetric, and it classifies like FP32."""
    from waferflow.evaluation import evaluate
    from waferflow.predictors import onnx_predictor

    import onnx

    export = _with_int8(tiny, tmp_path / "export", **kw)
    m = onnx.load(str(export / "model.int8.onnx"))
    trt.fold_int32_biases(m)
    assert problem in trt.tensorrt_qdq_problem(m)
    calls: list = []
    _fake_builder(monkeypatch, calls)
    res = trt.compile_trt(export, tmp_path / "t", precision="int8", calib_ds=tiny["train"], calibration_maps=64,
                          bench=False)
    made = tmp_path / "t" / trt.TRT_INT8_NAME
    assert calls == [("int8", trt.TRT_INT8_NAME)] and made.is_file()
    assert trt.tensorrt_qdq_problem(made) is None
    assert res["engines"]["int8"]["qdq"].startswith("requantized for TensorRT") and problem in \
        res["engines"]["int8"]["qdq"]
    spec = read_spec(tiny["model_dir"])
    fp32 = evaluate(onnx_predictor(export / "model.onnx"), tiny["test"], spec)["overall"]["accuracy"]
    qdq = evaluate(onnx_predictor(made), tiny["test"], spec)["overall"]["accuracy"]
    assert abs(qdq - fp32) <= 0.05
    assert [p.name for p in (tmp_path / "t").iterdir() if p.name.startswith(".")] == [], "no temp dir left"


def test_unusable_int8_without_calibration_maps_is_an_error(tiny, tmp_path, monkeypatch):
    export = _with_int8(tiny, tmp_path / "export", int8_format="u8s8", reduce_range=False)
    calls: list = []
    _fake_builder(monkeypatch, calls)
    with pytest.raises(DataError, match="--calib"):
        trt.compile_trt(export, tmp_path / "t", precision="int8", calib_ds=None, bench=False)
    assert calls == [] and not (tmp_path / "t" / trt.TRT_INT8_NAME).exists()
    # both precisions: the INT8 source is settled before the FP16 engine is built, so nothing is built at all
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / "model.fp16.engine").write_bytes(b"an earlier run's")
    with pytest.raises(DataError, match="--calib"):
        trt.compile_trt(export, tmp_path / "t", precision="both", calib_ds=None, bench=False)
    assert calls == [] and not (tmp_path / "t" / "model.fp16.engine").exists(), "no engine of an earlier run stays"


def test_an_int8_model_that_is_not_the_exports_is_refused(tiny, tmp_path, monkeypatch):
    from waferflow.errors import ModelFormatError

    export = tmp_path / "export"
    shutil.copytree(tiny["export_dir"], export)
    (export / "model.int8.onnx").write_bytes((export / "model.int8.onnx").read_bytes()[:-10])
    calls: list = []
    _fake_builder(monkeypatch, calls)
    with pytest.raises(ModelFormatError, match="sha256"):
        trt.compile_trt(export, tmp_path / "t", precision="int8", calib_ds=tiny["train"], bench=False)
    assert calls == []


def test_qdq_check_names_what_rules_a_model_out(tiny, tmp_path):
    import onnx

    m = onnx.load(str(tiny["export_dir"] / "model.int8.onnx"))
    assert trt.fold_int32_biases(m) > 0 and trt.tensorrt_qdq_problem(m) is None
    inits = {t.name: t for t in m.graph.initializer}
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear")
    zp = inits[q.input[2]]
    zp.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(zp).shape, 3, np.int8), zp.name))
    assert "non-zero zero point" in trt.tensorrt_qdq_problem(m)
    assert "no QuantizeLinear" in trt.tensorrt_qdq_problem(tiny["export_dir"] / "model.onnx")


def _qdq_graph(q_zero_point: bool, dq_zero_point: bool):
    """x -> QuantizeLinear -> DequantizeLinear -> Conv(DQ(int8 weight), DQ(int32 bias)); the weight's and the
    bias's DequantizeLinear share one scale tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "zp8"),
             numpy_helper.from_array(np.ones((2, 1, 1, 1), np.int8), "w_q"),
             numpy_helper.from_array(np.array([0.5, 0.5], np.float32), "ws"),
             numpy_helper.from_array(np.array([10, -20], np.int32), "b_q")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"] + (["zp8"] if q_zero_point else []), ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s"] + (["zp8"] if q_zero_point else []), ["xd"], name="dq"),
             helper.make_node("DequantizeLinear", ["w_q", "ws"] + (["zp8"] if dq_zero_point else []), ["w"],
                              axis=0, name="dqw"),
             helper.make_node("DequantizeLinear", ["b_q", "ws"], ["b"], axis=0, name="dqb"),
             helper.make_node("Conv", ["xd", "w", "b"], ["y"], name="conv")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    return onnx.helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_folding_keeps_shared_tensors_and_the_check_reads_zero_points_right():
    from onnx import numpy_helper

    m = _qdq_graph(q_zero_point=True, dq_zero_point=False)
    assert "INT32" in trt.tensorrt_qdq_problem(m)
    assert trt.fold_int32_biases(m) == 1
    names = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_allclose(names["b"], [5.0, -10.0])  # (x - 0) * scale, per axis
    assert "ws" in names and "b_q" not in names, "the shared scale stays, the folded INT32 tensor goes"
    # INT8 weights dequantized with no zero point are symmetric INT8: accepted
    assert trt.tensorrt_qdq_problem(m) is None
    # a QuantizeLinear with no zero point quantizes to UINT8: refused, and the message says so
    m = _qdq_graph(q_zero_point=False, dq_zero_point=True)
    trt.fold_int32_biases(m)
    assert "no zero point" in trt.tensorrt_qdq_problem(m)


def test_metadata_layout(tiny):
    meta = trt.trt_metadata(tiny["export_dir"] / "model.onnx", "fp16", (1, 32, 256),
                            {"class_names": ["a"], "input_size": 32, "in_chans": 3, "mean": [0.5] * 3,
                             "std": [0.5] * 3}, "model.fp16.engine", "built", {"build_seconds": 1.0})
    assert meta["profile"] == {"min": [1], "opt": [32], "max": [256], "axis": "batch"}
    for k in ("status", "precision", "engine", "source_onnx", "input", "output", "class_names", "input_size",
              "in_chans", "mean", "std", "waferflow_version", "created_utc", "build_seconds"):
        assert k in meta
    assert trt.parse_precisions("both") == ("fp16", "int8")
    from waferflow.errors import ConfigError

    with pytest.raises(ConfigError):
        trt.parse_precisions("fp8")


def test_tensorrt_predictor_refuses_without_cuda(tmp_path, monkeypatch):
    from waferflow.errors import ConfigError
    from waferflow.predictors import tensorrt as trt_predictor

    monkeypatch.setattr(trt_predictor, "trt_skip", lambda: (trt_predictor.SKIP_NO_CUDA, "torch.cuda.is_available() is False"))
    with pytest.raises(ConfigError, match="CUDA"):
        trt_predictor.tensorrt_predictor(tmp_path / "model.fp16.engine")
