"""INT8 settings by CPU: ``auto`` picks U8S8 with 8-bit weights only on x86 with VNNI, and a model with 8-bit
weights is refused where onnxruntime would compute it wrongly (x86 without VNNI), with the fix in the message."""

from __future__ import annotations

import json
import logging

import pytest

from waferflow.errors import ConfigError, ModelFormatError
from waferflow.predictors import int8_host
from waferflow.predictors.int8_host import REQUIRES_KEY, check_int8_host, cpu_flags, host_int8_choice

AVX2 = ["avx2"]
VNNI = ["avx2", "avx512bw", "avx512_vnni", "avx512f"]


def test_cpu_flags_reads_only_the_int8_flags():
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni sha_ni\n"
    assert cpu_flags(text) == ["avx2", "avx512_vnni", "avx512f"]
    assert cpu_flags("processor: 0\n") is None


@pytest.mark.parametrize("flags, machine, fmt, rr", [
    (VNNI, "x86_64", "u8s8", False),
    (["avx2", "avx_vnni"], "x86_64", "u8s8", False),
    (AVX2, "x86_64", "s8s8", True),
    ([], "aarch64", "s8s8", True),
    (VNNI, "aarch64", "s8s8", True),  # flags alone do not make an x86 CPU
])
def test_auto_follows_the_cpu(flags, machine, fmt, rr):
    c = host_int8_choice("auto", None, flags=flags, machine=machine)
    assert (c["format"], c["reduce_range"]) == (fmt, rr)
    assert c["rule"].startswith(f"auto -> {fmt}, {'7' if rr else '8'}-bit weights")


def test_explicit_settings_are_kept_and_unknown_formats_refused():
    assert host_int8_choice("s8s8", True, flags=VNNI, machine="x86_64")["format"] == "s8s8"
    assert host_int8_choice("u8s8", None, flags=AVX2, machine="x86_64")["reduce_range"] is True
    assert host_int8_choice("s8s8", False, flags=AVX2, machine="x86_64")["reduce_range"] is False
    with pytest.raises(ConfigError, match="int8 format must be one of"):
        host_int8_choice("int4", None, flags=VNNI, machine="x86_64")


def test_guard_refuses_8_bit_weights_on_x86_without_vnni_only():
    meta = {REQUIRES_KEY: "avx512_vnni|avx_vnni|amx_int8"}
    with pytest.raises(ModelFormatError, match=r"without VNNI.*--reduce-range"):
        check_int8_host("m.int8.onnx", meta, flags=AVX2, machine="x86_64")
    check_int8_host("m.int8.onnx", meta, flags=VNNI, machine="x86_64")
    check_int8_host("m.int8.onnx", meta, flags=[], machine="aarch64")
    check_int8_host("m.int8.onnx", {}, flags=AVX2, machine="x86_64")  # 7-bit weights: any CPU


def test_unreadable_flags_warn_and_do_not_refuse(monkeypatch, caplog):
    monkeypatch.setattr(int8_host, "cpu_flags", lambda cpuinfo=None: None)
    with caplog.at_level(logging.WARNING, logger="waferflow.predictors.int8_host"):
        check_int8_host("m.int8.onnx", {REQUIRES_KEY: "avx512_vnni"}, machine="x86_64")
    assert "cannot be read" in caplog.text


def test_8_bit_export_carries_the_requirement_and_is_refused_on_a_cpu_without_vnni(tiny, tmp_path, monkeypatch):
    """Round trip: export.json and the model's metadata say what the file needs; onnx_session enforces it."""
    from waferflow.export import export_onnx
    from waferflow.predictors import onnx_predictor, onnx_session

    monkeypatch.setattr(int8_host, "cpu_flags", lambda cpuinfo=None: VNNI)
    monkeypatch.setattr(int8_host.platform, "machine", lambda: "x86_64")
    info = export_onnx(tiny["model_dir"], tmp_path / "e", calib_ds=tiny["train"], parity_ds=tiny["test"],
                       calibration_maps=64, fp32_layers="none")  # auto on a VNNI host
    host = json.loads((tmp_path / "e" / "export.json").read_text())["int8"]["host"]
    assert info["int8"]["format"].startswith("QDQ, U8S8") and info["int8"]["reduce_range"] is False
    assert host["format"] == "u8s8" and host["requires_cpu_flags"] == "avx512_vnni|avx_vnni|amx_int8"
    int8 = tmp_path / "e" / "model.int8.onnx"
    assert onnx_session(int8).get_modelmeta().custom_metadata_map[REQUIRES_KEY] == host["requires_cpu_flags"]

    monkeypatch.setattr(int8_host, "cpu_flags", lambda cpuinfo=None: AVX2)
    with pytest.raises(ModelFormatError, match="without VNNI"):
        onnx_predictor(int8)
    onnx_predictor(tmp_path / "e" / "model.onnx")  # FP32 needs nothing
    assert REQUIRES_KEY not in onnx_session(tiny["export_dir"] / "model.int8.onnx").get_modelmeta(
    ).custom_metadata_map  # the 7-bit fixture
