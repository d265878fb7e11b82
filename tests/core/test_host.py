"""What a result was computed on (waferflow.host): recorded in model.json, run.json and the model card."""

import torch

from waferflow import host

X86 = """processor\t: 0
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8 sha_ni
"""
ARM = """processor\t: 0
Features\t: fp asimd evtstrm aes sve
CPU implementer\t: 0x41
"""


def test_cpu_flags_and_model_are_read_from_cpuinfo_on_x86_and_arm():
    assert host.cpu_flags(cpuinfo=X86) == ["amx_int8", "amx_tile", "avx2", "avx512_vnni", "avx512bw", "avx512f"]
    assert host.cpu_flags(cpuinfo=ARM) == ["asimd", "sve"]
    assert host.cpu_flags(("avx2",), cpuinfo=X86) == ["avx2"]
    assert host.cpu_flags(cpuinfo="processor\t: 0\n") is None
    assert host.cpu_model(X86) == "Intel(R) Xeon(R) Processor"


def test_unreadable_cpuinfo_says_unknown_instead_of_failing(monkeypatch):
    monkeypatch.setattr(host, "read_cpuinfo", lambda: None)
    monkeypatch.setattr(host.platform, "processor", lambda: "")
    assert host.cpu_flags() is None and host.cpu_model() == "unknown"
    d = host.describe_host()
    assert d["simd"] is None and d["cpu"] == "unknown" and d["torch_threads"] == torch.get_num_threads()
    assert "SIMD flags unknown" in host.host_line(d)


def test_describe_host_and_its_line():
    d = host.describe_host("cpu")
    assert set(d) == {"machine", "cpu", "simd", "cores", "torch_threads", "device"}
    line = host.host_line({"cpu": "X", "machine": "x86_64", "cores": 2, "simd": ["avx2"], "torch_threads": 2,
                           "gpu": "NVIDIA H100"})
    assert line == "X (x86_64, 2 cores; avx2), 2 torch threads, on NVIDIA H100"
