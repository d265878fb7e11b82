"""TTA as a deployable ONNX form: the graph equals tta_predictor around its source, the exporter writes and checks
it, and every reader of export dirs (predictor table, latency bench, evaluate CLI) treats it as a form."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from waferflow.errors import ConfigError, ModelFormatError
from waferflow.export.tta_onnx import wrap_tta
from waferflow.predictors import create_predictor, onnx_predictor, predict_dataset, tta_predictor, tta_views


@pytest.fixture(scope="module")
def tta_export(tiny, tmp_path_factory):
    """The tiny model exported again with ``tta=True`` (FP32 + INT8 + both TTA graphs)."""
    from waferflow.export import export_onnx

    out = tmp_path_factory.mktemp("tta") / "export"
    info = export_onnx(tiny["model_dir"], out, calib_ds=tiny["train"], parity_ds=tiny["test"], calibration_maps=64,
                       int8_format="s8s8", reduce_range=True, fp32_layers="none", tta=True)
    return out, info


@pytest.mark.parametrize("symmetries", [["hflip", "vflip", "rot90"], ["rot180", "hflip"], ["vflip"]])
def test_graph_equals_tta_predictor_around_its_source(tiny, tmp_path, symmetries):
    src = tiny["export_dir"] / "model.onnx"
    info = wrap_tta(src, tmp_path / "model.tta.onnx", symmetries)
    assert info["views"] == len(tta_views(symmetries))
    x = np.random.default_rng(0).normal(size=(7, 3, 32, 32)).astype(np.float32)
    got = onnx_predictor(tmp_path / "model.tta.onnx")(x)
    want = tta_predictor(onnx_predictor(src), symmetries)(x)
    assert got.shape == (7, 3)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # a single map (the latency gate's request) and a batch agree map for map
    np.testing.assert_allclose(onnx_predictor(tmp_path / "model.tta.onnx")(x[:1]), got[:1], atol=1e-5)


def test_the_table_feeds_a_tta_graph_a_bounded_number_of_maps_per_call(tiny, tmp_path, monkeypatch):
    """Each map is 8 images inside the graph: the ONNX predictor cuts a caller's batch into 256 // 8 maps a call,
    read from the graph's own ``tta_views``; a plain graph keeps 256."""
    import waferflow.predictors.runtime as runtime

    wrap_tta(tiny["export_dir"] / "model.onnx", tmp_path / "model.tta.onnx", ["hflip", "vflip", "rot90"])
    per_call = runtime.IMAGES_PER_CALL // 8
    x = np.random.default_rng(1).normal(size=(2 * per_call + 6, 3, 32, 32)).astype(np.float32)
    whole = runtime.onnx_session(tmp_path / "model.tta.onnx").run(["logits"], {"input": x})[0]
    sizes = []
    real = runtime.onnx_session

    class Spy:
        def __init__(self, sess):
            self.sess = sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, out, feed):
            sizes.append(len(feed["input"]))
            return self.sess.run(out, feed)

    monkeypatch.setattr(runtime, "onnx_session", lambda *a, **k: Spy(real(*a, **k)))
    got = create_predictor("onnx_fp32_tta", tmp_path)(x)
    assert sizes == [per_call, per_call, 6]
    np.testing.assert_allclose(got, whole, atol=1e-5)
    assert runtime.maps_per_call(real(tiny["export_dir"] / "model.onnx")) == runtime.IMAGES_PER_CALL


def test_graph_keeps_the_export_metadata_and_records_its_views(tiny, tmp_path):
    from waferflow.export.onnx_export import read_onnx_metadata

    wrap_tta(tiny["export_dir"] / "model.int8.onnx", tmp_path / "model.int8.tta.onnx", ["hflip", "vflip", "rot90"])
    meta = read_onnx_metadata(tmp_path / "model.int8.tta.onnx")
    src_meta = read_onnx_metadata(tiny["export_dir"] / "model.int8.onnx")
    assert meta["class_names"] == src_meta["class_names"] and meta["input_size"] == src_meta["input_size"]
    assert meta["tta_views"] == "8" and json.loads(meta["tta_symmetries"]) == ["hflip", "vflip", "rot90"]
    assert meta["tta_source"] == "model.int8.onnx"


def test_one_view_or_a_foreign_model_is_refused_and_writes_nothing(tiny, tmp_path):
    with pytest.raises(ConfigError, match="one view"):
        wrap_tta(tiny["export_dir"] / "model.onnx", tmp_path / "a.onnx", [])
    import onnx
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8, 8])])
    onnx.save(helper.make_model(g), str(tmp_path / "foreign.onnx"))
    with pytest.raises(ModelFormatError, match=r"\[batch, classes\]"):
        wrap_tta(tmp_path / "foreign.onnx", tmp_path / "b.onnx", ["hflip"])
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_export_writes_checks_and_lists_both_tta_forms(tiny, tta_export):
    from waferflow.export.exporter import verify_export_dir

    out, info = tta_export
    assert {"model.tta.onnx", "model.int8.tta.onnx"} <= set(info["sha256"])
    verify_export_dir(out)  # the TTA graphs are covered by export.json's hashes
    assert info["tta"]["symmetries"] == ["hflip", "vflip", "rot90", "rot180"]
    for form in ("onnx_fp32_tta", "onnx_int8_tta"):
        rec = info["tta"]["forms"][form]
        assert rec["views"] == 8 and rec["parity_vs_predictor"]["argmax_agreement"] == 1.0
        assert info["metrics"][form]["n"] == len(tiny["test"])
    # the table loads them like any form, and they score like TTA around the plain form
    from waferflow.models import read_spec

    spec = read_spec(tiny["model_dir"])
    got = predict_dataset(create_predictor("onnx_fp32_tta", out), tiny["test"], spec)
    want = predict_dataset(create_predictor("onnx_fp32", out, tta=["hflip", "vflip", "rot90", "rot180"]),
                           tiny["test"], spec)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_export_refuses_tta_for_a_model_without_symmetries_and_leaves_nothing(tiny, tmp_path):
    from waferflow.export import export_onnx
    from waferflow.models import load_model_dir, save_model_dir

    model, spec = load_model_dir(tiny["model_dir"])
    spec = dataclasses.replace(spec, extra={**(spec.extra or {}), "train": {"symmetries": []}})
    md = save_model_dir(model, spec, tmp_path / "model")
    with pytest.raises(ConfigError, match="one view"):
        export_onnx(md, tmp_path / "export", parity_ds=tiny["test"], int8=False, tta=True)
    assert not (tmp_path / "export").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export")]  # no half-written temp dir


def test_latency_bench_times_the_tta_forms_as_one_request(tiny, tta_export):
    from waferflow.export import bench_latency

    out, _ = tta_export
    lat = bench_latency(tiny["model_dir"], out, threads=1, warmup=2, iters=10, batch=8,
                        forms=["onnx_fp32", "onnx_fp32_tta"])
    fp32, tta = lat["forms"]["onnx_fp32"], lat["forms"]["onnx_fp32_tta"]
    assert tta["p50_ms"] > fp32["p50_ms"]  # eight views per map
    assert tta["size_bytes"] > fp32["size_bytes"] * 0.99


def test_evaluate_cli_runs_a_tta_form_and_refuses_double_tta(tiny, tta_export, tmp_path, capsys):
    from waferflow.cli import main
    from waferflow.data.contract import save_dataset

    out, info = tta_export
    data = tmp_path / "test.npz"
    save_dataset(tiny["test"], data)
    args = ["evaluate", "--model", str(tiny["model_dir"]), "--data", str(data), "--export", str(out),
            "--gradcam-per-class", "0"]
    assert main([*args, "--form", "onnx_fp32_tta", "--out", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["form"] == "onnx_fp32_tta"
    assert m["overall"]["accuracy"] == pytest.approx(info["metrics"]["onnx_fp32_tta"]["accuracy"])
    assert main([*args, "--form", "onnx_fp32_tta", "--tta", "--out", str(tmp_path / "e2")]) != 0
    assert "already averages its views inside the ONNX graph; drop --tta" in capsys.readouterr().err
    assert not (tmp_path / "e2").exists()


def test_the_gates_step_predicts_the_test_maps_in_the_deployed_form(tiny, tta_export, capsys):
    """gate_and_register's prediction: the deployed form from the export dir; a form this step does not have
    (not exported, or a TensorRT engine on a CPU step) is run as torch, and it says so."""
    from waferflow.orchestration.mlflow_steps import predict_test

    out, info = tta_export
    logits, m, form = predict_test(tiny["model_dir"], out, "onnx_fp32_tta", tiny["test"])
    assert form == "onnx_fp32_tta" and m["form"] == form and logits.shape == (len(tiny["test"]), 3)
    assert m["overall"]["accuracy"] == pytest.approx(info["metrics"]["onnx_fp32_tta"]["accuracy"])
    _, m_int8, form = predict_test(tiny["model_dir"], out, "onnx_int8", tiny["test"])
    assert form == "onnx_int8" and m_int8["overall"]["n"] == len(tiny["test"])
    for missing, export_dir in (("onnx_fp32_tta", tiny["export_dir"]), ("tensorrt_fp16", out)):
        _, _, form = predict_test(tiny["model_dir"], export_dir, missing, tiny["test"])
        assert form == "torch"
        assert f"{missing} is not available to this step" in capsys.readouterr().out


def test_the_raw_map_pyfunc_serves_a_tta_graph_in_bounded_calls(tiny, tta_export):
    from types import SimpleNamespace

    from waferflow.models import preprocess, read_spec
    from waferflow.tracking.pyfunc import ONNX_ARTIFACT, SPEC_ARTIFACT, WaferMapClassifier

    out, _ = tta_export
    clf = WaferMapClassifier()
    clf.load_context(SimpleNamespace(artifacts={ONNX_ARTIFACT: str(out / "model.tta.onnx"),
                                                SPEC_ARTIFACT: str(tiny["model_dir"] / "model.json")}))
    assert clf.chunk == 32  # 256 images a call: 32 maps x 8 views
    maps = tiny["test"].maps[:40]
    names = clf.predict(None, [m.tolist() for m in maps])
    spec = read_spec(tiny["model_dir"])
    want = onnx_predictor(out / "model.tta.onnx")(preprocess(maps, spec)).argmax(1)
    assert names == [spec.class_names[k] for k in want]


def _training_warp(maps: np.ndarray, degrees: float) -> np.ndarray:
    """Augmenter._warp's free rotation by a fixed angle (scale 1): the reference the TTA turn must equal."""
    import math

    import torch
    import torch.nn.functional as F

    a = math.radians(degrees)
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]]).expand(len(maps), 2, 3)
    grid = F.affine_grid(theta, (len(maps), 1, *maps.shape[1:]), align_corners=False)
    x = torch.from_numpy(maps)[:, None].float()
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)[:, 0].round().to(
        torch.uint8).numpy()


@pytest.mark.parametrize("degrees", [45.0, -22.5, 90.0, 137.0])
def test_a_tta_turn_of_preprocessed_input_is_the_training_turn_of_the_map(tiny, degrees):
    from waferflow.models import preprocess, read_spec
    from waferflow.predictors import rotation_pad
    from waferflow.predictors.rotation import rotate_input

    spec = read_spec(tiny["model_dir"])
    maps = tiny["test"].maps[:12]
    got = rotate_input(preprocess(maps, spec), degrees, rotation_pad(spec))
    np.testing.assert_array_equal(got, preprocess(_training_warp(maps, degrees), spec))


def test_graph_with_rotations_equals_tta_predictor_and_records_them(tiny, tmp_path):
    from waferflow.export.onnx_export import read_onnx_metadata
    from waferflow.models import preprocess, read_spec
    from waferflow.predictors import rotation_pad

    spec = read_spec(tiny["model_dir"])
    src, syms, pad = tiny["export_dir"] / "model.onnx", ["hflip", "vflip", "rot90"], rotation_pad(spec)
    info = wrap_tta(src, tmp_path / "model.tta.onnx", syms, [45, -22.5], pad)
    assert info["views"] == 24 and info["rotations"] == [45.0, -22.5]
    meta = read_onnx_metadata(tmp_path / "model.tta.onnx")
    assert meta["tta_views"] == "24" and json.loads(meta["tta_rotations"]) == [45.0, -22.5]
    x = preprocess(tiny["test"].maps[:9], spec)
    want = tta_predictor(onnx_predictor(src), syms, [45, -22.5], pad)
    assert len(want.views) == 24
    got = onnx_predictor(tmp_path / "model.tta.onnx")(x)
    np.testing.assert_allclose(got, want(x), atol=1e-5)
    # the turned views count: not the same as the eight views alone
    assert not np.allclose(got, tta_predictor(onnx_predictor(src), syms)(x), atol=1e-5)


@pytest.mark.parametrize("rotations, match", [([0], "non-zero"), ([45, 45], "distinct"), ([200], r"\(-180, 180\]"),
                                              ([float("nan")], "non-zero"), (["x"], "angles in degrees")])
def test_bad_tta_rotations_are_refused_and_write_nothing(tiny, tmp_path, rotations, match):
    with pytest.raises(ConfigError, match=match):
        wrap_tta(tiny["export_dir"] / "model.onnx", tmp_path / "a.onnx", ["hflip", "rot90"], rotations, [0.0] * 3)
    with pytest.raises(ConfigError, match="rot90"):  # only where any rotation keeps every label
        wrap_tta(tiny["export_dir"] / "model.onnx", tmp_path / "a.onnx", ["hflip", "vflip"], [45], [0.0] * 3)
    with pytest.raises(ConfigError, match="pad"):
        tta_predictor(onnx_predictor(tiny["export_dir"] / "model.onnx"), ["rot90"], [45])
    assert not (tmp_path / "a.onnx").exists()


def test_export_with_tta_rotations_checks_the_graph_and_records_it(tiny, tmp_path):
    from waferflow.export import export_onnx

    with pytest.raises(ConfigError, match="tta is off"):
        export_onnx(tiny["model_dir"], tmp_path / "off", parity_ds=tiny["test"], int8=False, tta_rotations=[45])
    assert not list(tmp_path.iterdir())
    info = export_onnx(tiny["model_dir"], tmp_path / "export", parity_ds=tiny["test"], int8=False, tta=True,
                       tta_rotations=[45])
    assert info["tta"]["rotations"] == [45.0]
    rec = info["tta"]["forms"]["onnx_fp32_tta"]
    assert rec["views"] == 16 and rec["rotations"] == [45.0] and rec["parity_vs_predictor"]["argmax_agreement"] == 1.0
    # the evaluate CLI's own TTA with the same turns scores what the deployed graph scores
    from waferflow.cli import main
    from waferflow.data.contract import save_dataset

    save_dataset(tiny["test"], tmp_path / "test.npz")
    args = ["evaluate", "--model", str(tiny["model_dir"]), "--data", str(tmp_path / "test.npz"), "--export",
            str(tmp_path / "export"), "--gradcam-per-class", "0"]
    assert main([*args, "--form", "onnx_fp32", "--tta", "--tta-rotations", "45", "--out", str(tmp_path / "e")]) == 0
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["form"] == "onnx_fp32+tta16"
    assert m["overall"]["accuracy"] == pytest.approx(info["metrics"]["onnx_fp32_tta"]["accuracy"])
    assert main([*args, "--form", "onnx_fp32", "--tta-rotations", "45", "--out", str(tmp_path / "e2")]) != 0
    assert not (tmp_path / "e2").exists()


def test_export_turns_no_map_for_a_model_whose_labels_a_rotation_could_change_and_says_so(tiny, tmp_path, caplog):
    """As train.rotation: where rot90 is not among the model's symmetries (e.g. seed20's vertical and horizontal
    scratch), the profile's tta_rotations are off, logged and recorded, and the 8-view graph is written."""
    from waferflow.export import export_onnx
    from waferflow.models import load_model_dir, save_model_dir

    model, spec = load_model_dir(tiny["model_dir"])
    spec = dataclasses.replace(spec, extra={**(spec.extra or {}), "train": {"symmetries": ["hflip", "vflip"]}})
    md = save_model_dir(model, spec, tmp_path / "model")
    with caplog.at_level("WARNING"):
        info = export_onnx(md, tmp_path / "export", parity_ds=tiny["test"], int8=False, tta=True,
                           tta_rotations=[45])
    assert info["tta"]["rotations"] == [] and "are off" in info["tta"]["rotations_off"]
    assert info["tta"]["forms"]["onnx_fp32_tta"]["views"] == 4
    assert "tta_rotations [45] are off" in caplog.text
