"""ONNX export: parity, metadata, INT8 through the shared evaluator, atomic failure, clear input errors."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from waferflow.errors import DataError, ModelFormatError
from waferflow.evaluation import evaluate
from waferflow.predictors import onnx_predictor, predict_dataset, torch_predictor
from waferflow.export import export_onnx, read_onnx_metadata, sha256_file, verify_export_dir
from waferflow.models import load_model_dir


def test_parity_and_metadata(tiny):
    info, d = tiny["info"], tiny["export_dir"]
    assert info["parity"]["n"] == len(tiny["test"])
    assert info["parity"]["argmax_agreement"] >= 0.999
    assert info["parity"]["max_abs_diff"] <= 1e-3 and info["parity"]["max_rel_diff"] <= 1e-3
    on_disk = json.loads((d / "export.json").read_text())
    assert on_disk["parity"] == info["parity"]
    m = onnx.load(str(d / "model.onnx"))
    assert m.opset_import[0].version >= 17
    assert m.graph.input[0].name == "input" and m.graph.output[0].name == "logits"
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = read_onnx_metadata(d / "model.onnx")
    assert meta["class_names"] == ["Center", "Edge-Ring", "none"]
    assert (meta["input_size"], meta["in_chans"], meta["mean"], meta["std"]) == (32, 3, [0.5] * 3, [0.5] * 3)
    assert meta["source_sha256"] == sha256_file(tiny["model_dir"] / "weights.pt")
    assert read_onnx_metadata(d / "model.int8.onnx")["class_names"] == meta["class_names"]
    assert verify_export_dir(d)["sha256"]["model.onnx"] == sha256_file(d / "model.onnx")


def test_dynamic_batch_matches_torch(tiny):
    model, spec = load_model_dir(tiny["model_dir"])
    ds = tiny["test"].subset(np.arange(7))
    for bs in (1, 7):  # batch 1 and an odd batch through the same file
        ref = predict_dataset(torch_predictor(model), ds, spec, batch_size=bs)
        got = predict_dataset(onnx_predictor(tiny["export_dir"] / "model.onnx"), ds, spec, batch_size=bs)
        np.testing.assert_allclose(got, ref, atol=1e-4)


def test_int8_accuracy_through_shared_evaluator(tiny):
    model, spec = load_model_dir(tiny["model_dir"])
    test = tiny["test"]
    m_torch = evaluate(torch_predictor(model), test, spec, form="torch")
    m_fp32 = evaluate(onnx_predictor(tiny["export_dir"] / "model.onnx"), test, spec, form="onnx_fp32")
    m_int8 = evaluate(onnx_predictor(tiny["export_dir"] / "model.int8.onnx"), test, spec, form="onnx_int8")
    assert m_torch["overall"]["accuracy"] >= 0.8, "the tiny model should have learned the 3 easy classes"
    assert m_fp32["overall"]["accuracy"] == m_torch["overall"]["accuracy"]
    assert m_fp32["overall"]["accuracy"] - m_int8["overall"]["accuracy"] <= 0.05
    q = tiny["info"]["int8"]
    assert q["method"] == "static_qdq_per_channel" and q["fallback_reason"] is None
    assert q["calibration_maps"] == 64
    assert q["accuracy_drop"] == pytest.approx(m_fp32["overall"]["accuracy"] - m_int8["overall"]["accuracy"])
    assert q["macro_f1_drop"] == pytest.approx(m_fp32["overall"]["macro_f1"] - m_int8["overall"]["macro_f1"])
    onnx_types = {n.op_type for n in onnx.load(str(tiny["export_dir"] / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= onnx_types
    sizes = tiny["info"]["sizes"]
    assert sizes["model.int8.onnx"] < sizes["model.onnx"]


def test_parity_failure_is_loud_and_leaves_nothing(tiny, monkeypatch, tmp_path):
    import waferflow.export.exporter as ex

    real = ex.onnx_predictor

    def broken(path, threads=None):  # an "exporter bug": logits come back class-rotated
        p = real(path, threads)
        return lambda x: np.roll(p(x), 1, axis=1)

    monkeypatch.setattr(ex, "onnx_predictor", broken)
    out = tmp_path / "exp"
    with pytest.raises(ModelFormatError, match="does not match PyTorch"):
        export_onnx(tiny["model_dir"], out, parity_ds=tiny["test"].subset(np.arange(30)), int8=False)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "no temp folder may be left behind"


def test_export_input_errors(tiny, tmp_path):
    from waferflow.data.contract import WaferDataset

    with pytest.raises(DataError, match="parity"):
        export_onnx(tiny["model_dir"], tmp_path / "a", parity_ds=None, int8=False)
    with pytest.raises(DataError, match="calibration"):
        export_onnx(tiny["model_dir"], tmp_path / "b", parity_ds=tiny["test"], calib_ds=None, int8=True)
    t = tiny["test"]
    other = WaferDataset(class_names=("a", "b", "c"), labels=t.labels, maps=t.maps)
    with pytest.raises(DataError, match="differ from the model"):
        export_onnx(tiny["model_dir"], tmp_path / "c", parity_ds=other, int8=False)
    with pytest.raises(ModelFormatError):
        export_onnx(tmp_path / "no-such-model", tmp_path / "d", parity_ds=t, int8=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "missing"])
def test_corrupt_and_truncated_onnx_give_clear_errors(tiny, tmp_path, damage):
    src = (tiny["export_dir"] / "model.int8.onnx").read_bytes()
    p = tmp_path / "model.onnx"
    if damage == "garbage":
        p.write_bytes(b"this is not a protobuf \x00\xff" * 100)
    elif damage == "truncated":
        p.write_bytes(src[: len(src) // 2])
    elif damage == "empty":
        p.write_bytes(b"")
    with pytest.raises(ModelFormatError, match="waferflow export"):
        onnx_predictor(p)


def test_verify_export_dir_detects_truncation(tiny, tmp_path):
    import shutil

    d = tmp_path / "export"
    shutil.copytree(tiny["export_dir"], d)
    verify_export_dir(d)
    data = (d / "model.onnx").read_bytes()
    (d / "model.onnx").write_bytes(data[:-100])
    with pytest.raises(ModelFormatError, match="sha256"):
        verify_export_dir(d)
    (d / "export.json").unlink()
    with pytest.raises(ModelFormatError, match="export.json"):
        verify_export_dir(d)


def test_static_same_padding_drops_the_runtime_shape_ops_and_keeps_the_outputs(tmp_path):
    import warnings

    import torch
    from timm.layers.conv2d_same import Conv2dSame

    from waferflow.models.onnx_trace import static_same_padding

    torch.manual_seed(0)
    m = torch.nn.Sequential(Conv2dSame(3, 4, 3, stride=2), torch.nn.ReLU(), Conv2dSame(4, 2, 5, stride=2)).eval()
    x = torch.randn(2, 3, 31, 31)

    def export(path):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(m, (x,), str(path), dynamo=False, input_names=["input"], output_names=["y"],
                              dynamic_axes={"input": {0: "batch"}, "y": {0: "batch"}})
        return {n.op_type for n in onnx.load(str(path)).graph.node}

    with torch.no_grad():
        ref = m(x)
        with static_same_padding(m, x) as n:
            got = m(x)
            ops = export(tmp_path / "static.onnx")
        assert n == 2 and torch.equal(got, ref)
        assert "forward" not in vars(m[0]) and "Shape" in export(tmp_path / "dynamic.onnx")  # restored after
    assert "Shape" not in ops and "Pad" in ops
    y = onnx_predictor(tmp_path / "static.onnx")(x[:1].numpy())
    np.testing.assert_allclose(y, ref[:1].numpy(), atol=1e-5)
