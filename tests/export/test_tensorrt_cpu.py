"""TensorRT compile around the CUDA-only module: skip path, calibration batching, cache reuse, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest

from waferflow.errors import DataError
from waferflow.export import trt
from waferflow.models import preprocess, read_spec


def test_skip_path_writes_no_engine(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(trt, "cuda_status", lambda: (False, "torch.cuda.is_available() is False"))
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

    monkeypatch.setattr(trt, "cuda_status", lambda: (False, "no CUDA"))
    rc = main(["compile-trt", "--export", str(tiny["export_dir"]), "--out", str(tmp_path / "t"),
               "--precision", "fp16"])
    assert rc == 0
    assert not list((tmp_path / "t").glob("*.engine"))
    assert json.loads((tmp_path / "t" / "tensorrt.json").read_text())["status"] == "skipped: no CUDA device"


def test_real_environment_without_cuda_skips(tiny, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the real no-CUDA path; a CUDA machine runs scripts/gpu_check.py instead")
    ok, why = trt.cuda_status()
    assert not ok and why
    res = trt.compile_trt(tiny["export_dir"], tmp_path / "t")
    assert res["status"] == trt.SKIP_NO_CUDA and not list((tmp_path / "t").glob("*.engine"))


def test_bad_export_dir_fails_even_when_skipping(tmp_path):
    from waferflow.errors import ModelFormatError

    with pytest.raises(ModelFormatError):
        trt.compile_trt(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_calibration_batches(tiny):
    spec = read_spec(tiny["model_dir"])
    ds = tiny["train"]
    b = trt.CalibrationBatches(ds, spec, n_maps=70, batch_size=32)
    batches = list(b)
    assert len(b) == 2 and len(batches) == 2
    assert all(x.shape == (32, 3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous for x in batches)
    # the batches are exactly models.preprocess of the chosen maps, in order
    np.testing.assert_array_equal(np.concatenate(batches), preprocess(ds.maps[b.indices[:64]], spec))
    # every class is represented in the calibration draw
    assert set(ds.labels[b.indices]) == {0, 1, 2}
    with pytest.raises(DataError, match="full batch"):
        trt.CalibrationBatches(ds, spec, n_maps=10, batch_size=32)


def test_engine_spec_from_onnx_metadata_drives_calibration_like_the_model_spec(tiny):
    """The CUDA path calibrates and evaluates engines with the spec read back from the ONNX file's metadata."""
    from waferflow.export.onnx_export import onnx_spec, read_onnx_metadata

    spec = onnx_spec(read_onnx_metadata(tiny["export_dir"] / "model.onnx"))
    ref = read_spec(tiny["model_dir"])
    assert list(spec.class_names) == list(ref.class_names) and spec.input_size == ref.input_size
    a = np.concatenate(list(trt.CalibrationBatches(tiny["train"], spec, n_maps=64, batch_size=32)))
    b = np.concatenate(list(trt.CalibrationBatches(tiny["train"], ref, n_maps=64, batch_size=32)))
    np.testing.assert_array_equal(a, b)


def test_calibration_cache_reuse(tmp_path):
    c = trt.CalibrationCache(tmp_path / "calibration.cache")
    assert c.read_calibration_cache() is None  # no file: TensorRT must calibrate
    c.write_calibration_cache(memoryview(b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"))
    again = trt.CalibrationCache(tmp_path / "calibration.cache")
    assert again.read_calibration_cache() == b"TRT-8601-EntropyCalibration2\ninput: 3c010a14\n"
    (tmp_path / "calibration.cache").write_bytes(b"")
    assert again.read_calibration_cache() is None and not again.has_cache()  # an empty cache is not reused


def test_int8_without_calibration_data_or_cache_is_an_error(tiny, tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setattr(trt, "cuda_status", lambda: (True, "ok"))
    fake = types.ModuleType("waferflow.export.tensorrt_build")
    fake.build_engine = lambda *a, **k: pytest.fail("must not build without calibration data")
    monkeypatch.setitem(sys.modules, "waferflow.export.tensorrt_build", fake)
    with pytest.raises(DataError, match="calibration"):
        trt.compile_trt(tiny["export_dir"], tmp_path / "t", precision="int8", calib_ds=None, bench=False)
    # an empty cache left by a crashed build is no cache: still an error, not an uncalibrated build
    (tmp_path / "t").mkdir(exist_ok=True)
    (tmp_path / "t" / trt.cache_name()).write_bytes(b"")
    with pytest.raises(DataError, match="calibration"):
        trt.compile_trt(tiny["export_dir"], tmp_path / "t", precision="int8", calib_ds=None, bench=False)


def test_metadata_layout(tiny):
    meta = trt.trt_metadata(tiny["export_dir"], "fp16", (1, 32, 256),
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

    monkeypatch.setattr(trt_predictor, "cuda_status", lambda: (False, "torch.cuda.is_available() is False"))
    with pytest.raises(ConfigError, match="CUDA"):
        trt_predictor.tensorrt_predictor(tmp_path / "model.fp16.engine")
