"""The machine a result was computed on, recorded beside the result.

Training here is seeded and repeats digit for digit on one machine, but not across CPUs: PyTorch's CPU kernels
(oneDNN, MKL) take another SIMD path on AVX2, AVX-512 or AMX and sum in another order, so the first steps differ
in the last bits and a run ends in another model. The same 623-label real-data run gave 0.924 / macro-F1 0.806 on
val_data on an AMD AVX2 host and 0.909 / 0.777 on an Intel AVX-512 host (docs/MEASUREMENTS.md, "The same run on
another CPU"). So every trained ``model.json`` (``train.host``), the run record (``run.json``) and the model card
name the CPU.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Sequence

# the SIMD extensions that decide which kernels PyTorch and onnxruntime run (x86 and Arm)
SIMD_FLAGS = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
              "amx_bf16", "asimd", "sve")


def read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return None


def cpu_flags(names: Sequence[str] = SIMD_FLAGS, cpuinfo: str | None = None) -> list[str] | None:
    """Which of ``names`` this CPU has (from ``/proc/cpuinfo``'s ``flags`` or ``Features``), sorted; None when
    they cannot be read."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    if text is None:
        return None
    line = next((ln for ln in text.splitlines() if ln.split(":", 1)[0].strip() in ("flags", "Features")), None)
    if line is None:
        return None
    return sorted(f for f in line.split(":", 1)[1].split() if f in names)


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows, else ``"unknown"``."""
    text = read_cpuinfo() if cpuinfo is None else cpuinfo
    for ln in (text or "").splitlines():
        key, _, value = ln.partition(":")
        if key.strip() in ("model name", "Model", "Hardware") and value.strip():
            return value.strip()
    return platform.processor() or "unknown"


def describe_host(device: str = "cpu") -> dict:
    """``{"machine", "cpu", "simd", "cores", "torch_threads", "device"[, "gpu"]}``: what a result was computed on."""
    import torch

    info = read_cpuinfo() or ""  # read once; "" (unreadable) gives no flags and the platform's CPU name
    out = {"machine": platform.machine(), "cpu": cpu_model(info), "simd": cpu_flags(cpuinfo=info),
           "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def host_line(host: dict) -> str:
    """One line for people: ``Intel(R) Xeon(R) Processor (x86_64, 2 cores; avx2 avx512f ...), 2 torch threads``."""
    simd = " ".join(host.get("simd") or []) or "SIMD flags unknown"
    line = (f"{host.get('cpu', 'unknown')} ({host.get('machine', '?')}, {host.get('cores', '?')} cores; {simd}), "
            f"{host.get('torch_threads', '?')} torch threads")
    return line + (f", on {host['gpu']}" if host.get("gpu") else "")
