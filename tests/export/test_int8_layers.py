"""INT8 format and the FP32-layer choice: 7-bit weights, sensitivity search, round trip through export.json."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from waferflow.errors import ConfigError
from waferflow.export import export_onnx, sha256_file
from waferflow.export.quantize import calibration_batches, preprocess_for_quant, quantizable_nodes
from waferflow.models import read_spec


def _float_weight_nodes(path) -> set[str]:
    """Conv/Gemm nodes of a QDQ model whose weight is a float initializer (not dequantized INT8)."""
    g = onnx.load(str(path)).graph
    floats = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    return {n.name for n in g.node if n.op_type in ("Conv", "Gemm") and n.input[1] in floats}


def test_int8_weights_are_7_bit_and_the_format_is_recorded(tiny):
    q = tiny["info"]["int8"]
    assert q["reduce_range"] is True and q["format"].startswith("QDQ, S8S8")
    g = onnx.load(str(tiny["export_dir"] / "model.int8.onnx")).graph
    w8 = [numpy_helper.to_array(i) for i in g.initializer if i.data_type == onnx.TensorProto.INT8 and i.dims]
    assert w8 and max(int(np.abs(w.astype(np.int32)).max()) for w in w8) <= 64
    relu6 = sum(n.op_type == "Clip" for n in onnx.load(str(tiny["export_dir"] / "model.onnx")).graph.node)
    assert sum(n.op_type == "Clip" for n in g.node) == relu6  # activations are kept, not folded away


def test_fp32_layer_choice_round_trips_through_export_json(tiny, tmp_path):
    pre = preprocess_for_quant(tiny["export_dir"] / "model.onnx", tmp_path / "pre.onnx")
    convs = [n for n in quantizable_nodes(pre) if "Conv" in n][:2]
    kw = dict(calib_ds=tiny["train"], parity_ds=tiny["test"], calibration_maps=64)
    first = export_onnx(tiny["model_dir"], tmp_path / "a", fp32_layers=convs, **kw)
    recorded = json.loads((tmp_path / "a" / "export.json").read_text())["int8"]["fp32_layers"]
    assert recorded == {"mode": "given", "nodes": convs, "selection": None} == first["int8"]["fp32_layers"]
    assert _float_weight_nodes(tmp_path / "a" / "model.int8.onnx") == set(convs)

    again = export_onnx(tiny["model_dir"], tmp_path / "b", fp32_layers=recorded["nodes"], **kw)
    assert again["int8"]["fp32_layers"]["nodes"] == convs
    assert sha256_file(tmp_path / "b" / "model.int8.onnx") == sha256_file(tmp_path / "a" / "model.int8.onnx")


def test_auto_choice_records_measured_sensitivity(tiny, tmp_path):
    from waferflow.export.sensitivity import choose_fp32_nodes

    spec = read_spec(tiny["model_dir"])
    calib = list(calibration_batches(tiny["train"], spec, 64))
    held = list(calibration_batches(tiny["test"], spec, 120))
    fp32 = tiny["export_dir"] / "model.onnx"
    pre = preprocess_for_quant(fp32, tmp_path / "pre.onnx")
    # an unreachable target makes the search run every trial the FP32 budget allows
    nodes, rep = choose_fp32_nodes(pre, fp32, calib, held, target_agreement=1.01, max_fp32_params=1.0)
    sqnr = [v for _, v in rep["sqnr_db"]]
    assert len(sqnr) == len(quantizable_nodes(pre)) and sqnr == sorted(sqnr)  # worst layer first
    ranking = [n for n, _ in rep["sqnr_db"]]
    assert rep["trials"][0]["fp32_nodes"] == [] and len(rep["trials"]) > 2
    for t in rep["trials"]:
        assert t["fp32_nodes"] == ranking[:len(t["fp32_nodes"])] and 0 <= t["agreement"] <= 1
    best = max(rep["trials"], key=lambda t: (t["agreement"], -len(t["fp32_nodes"])))
    assert not rep["met"] and nodes == best["fp32_nodes"] and rep["held_out_maps"] == 120


def test_auto_choice_stops_at_the_target_and_respects_the_budget(tiny, tmp_path):
    from waferflow.export.sensitivity import choose_fp32_nodes

    spec = read_spec(tiny["model_dir"])
    calib = list(calibration_batches(tiny["train"], spec, 64))
    fp32 = tiny["export_dir"] / "model.onnx"
    pre = preprocess_for_quant(fp32, tmp_path / "pre.onnx")
    nodes, rep = choose_fp32_nodes(pre, fp32, calib, calib, target_agreement=0.0)
    assert nodes == [] and rep["met"] and len(rep["trials"]) == 1  # the all-INT8 model already meets 0.0
    params = quantizable_nodes(pre)
    _, rep = choose_fp32_nodes(pre, fp32, calib, calib, target_agreement=1.01, max_fp32_params=0.02)
    assert sum(params[n] for n, _ in rep["sqnr_db"]) <= 0.02 * sum(params.values())


def test_unknown_fp32_layer_is_a_clear_error_and_leaves_nothing(tiny, tmp_path):
    with pytest.raises(ConfigError, match=r"FP32 layers \['no_such_conv'\] are not Conv/Gemm/MatMul nodes"):
        export_onnx(tiny["model_dir"], tmp_path / "exp", calib_ds=tiny["train"], parity_ds=tiny["test"],
                    calibration_maps=64, fp32_layers=["no_such_conv"])
    with pytest.raises(ConfigError, match="fp32_layers must be 'auto', 'none'"):
        export_onnx(tiny["model_dir"], tmp_path / "exp", calib_ds=tiny["train"], parity_ds=tiny["test"],
                    calibration_maps=64, fp32_layers="most")
    assert not (tmp_path / "exp").exists() and not list(tmp_path.glob(".exp.*"))


def test_cli_export_fp32_layers_none(tiny, tmp_path):
    from waferflow.cli import main
    from waferflow.data.contract import save_dataset

    save_dataset(tiny["test"], tmp_path / "test.npz")
    save_dataset(tiny["train"], tmp_path / "train.npz")
    rc = main(["export", "--model", str(tiny["model_dir"]), "--data", str(tmp_path / "test.npz"), "--calib",
               str(tmp_path / "train.npz"), "--out", str(tmp_path / "exp"), "--fp32-layers", "none",
               "--calibration-maps", "64"])
    assert rc == 0
    info = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert info["int8"]["fp32_layers"] == {"mode": "none", "nodes": [], "selection": None}
    assert _float_weight_nodes(tmp_path / "exp" / "model.int8.onnx") == set()


def test_u8s8_format_is_recorded_and_an_unknown_format_is_refused(tiny, tmp_path):
    from waferflow.export.quantize import quantize_int8

    calib = list(calibration_batches(tiny["train"], read_spec(tiny["model_dir"]), 64))
    res = quantize_int8(tiny["export_dir"] / "model.onnx", tmp_path / "u8.onnx", calib, int8_format="u8s8")
    assert res["format"].startswith("QDQ, U8S8") and res["method"] == "static_qdq_per_channel"
    g = onnx.load(str(tmp_path / "u8.onnx")).graph
    assert any(i.data_type == onnx.TensorProto.UINT8 for i in g.initializer)  # uint8 activation zero points
    with pytest.raises(ConfigError, match=r"int8 format must be one of \['s8s8', 'u8s8'\]"):
        quantize_int8(tiny["export_dir"] / "model.onnx", tmp_path / "s16.onnx", calib, int8_format="s16")
    assert not (tmp_path / "s16.onnx").exists()


def test_auto_keeps_the_classifier_fp32_in_every_trial(tiny, tmp_path):
    from waferflow.export.quantize import output_layers

    clf = output_layers(preprocess_for_quant(tiny["export_dir"] / "model.onnx", tmp_path / "pre.onnx"))
    assert len(clf) == 1 and "Gemm" in clf[0]  # the classifier writes the logits
    layers = json.loads((tiny["export_dir"] / "export.json").read_text())["int8"]["fp32_layers"]
    assert layers["mode"] == "auto" and layers["selection"]["always_fp32"] == clf
    assert layers["nodes"][:1] == clf and all(t["fp32_nodes"][:1] == clf for t in layers["selection"]["trials"])
    g = onnx.load(str(tiny["export_dir"] / "model.int8.onnx")).graph
    floats = {i.name for i in g.initializer if i.data_type == onnx.TensorProto.FLOAT}
    assert all(n.input[1] in floats for n in g.node if n.name in clf)  # its weight stayed float


def test_auto_keeps_both_heads_of_an_ensemble_fp32(tmp_path):
    """An ensemble's logits come out of LogSoftmax -> ReduceLogSumExp after its members' classifiers: the classifier
    choice walks back to both heads instead of finding none."""
    import torch

    from waferflow.export.quantize import output_layers
    from waferflow.models import create_model
    from waferflow.models.ensemble import MeanProbabilityEnsemble
    from waferflow.models.onnx_trace import trace_to_onnx

    members = [create_model("tf_efficientnet_lite0", num_classes=3, pretrained="none", input_size=32)[0]
               for _ in range(2)]
    trace_to_onnx(MeanProbabilityEnsemble(members).eval(), torch.zeros(1, 3, 32, 32), tmp_path / "ens.onnx", 17)
    heads = output_layers(tmp_path / "ens.onnx")
    assert len(heads) == 2 and all("Gemm" in h for h in heads)
    trace_to_onnx(members[0].eval(), torch.zeros(1, 3, 32, 32), tmp_path / "one.onnx", 17)
    assert len(output_layers(tmp_path / "one.onnx")) == 1
