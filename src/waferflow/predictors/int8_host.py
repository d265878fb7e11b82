"""Which INT8 weights a CPU computes exactly, the INT8 format to export for it, and the guard that refuses an INT8
model on a CPU that would compute it wrongly.

onnxruntime's x86 INT8 kernels multiply uint8 activations by int8 weights (S8 activations are shifted to U8).
Without VNNI (AVX2 / AVX512BW ``vpmaddubsw``) the products are summed in pairs into int16, which saturates with
full-range 8-bit weights: a real-map champion lost 59.6 points that way. 7-bit weights (``reduce_range``) stay
exact there. With VNNI (``vpdpbusd``: AVX512-VNNI, AVX-VNNI, AMX) the sums are int32, so 8-bit weights are exact;
on such a CPU U8S8 with 8-bit weights was both the most accurate INT8 form measured and about 2x faster than ONNX
FP32 (docs/DEPLOYMENT.md, "INT8 format by CPU").
"""

from __future__ import annotations

import logging
import platform
from pathlib import Path

from waferflow import host
from waferflow.errors import ConfigError, ModelFormatError

log = logging.getLogger(__name__)

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
INT8_FLAGS = ("avx2", "avx512f", "avx512bw", *VNNI_FLAGS)
REQUIRES_KEY = "int8_requires_cpu"  # ONNX metadata key of an INT8 model with 8-bit weights
INT8_FORMAT_CHOICES = ("auto", "s8s8", "u8s8")


def cpu_flags(cpuinfo: str | None = None) -> list[str] | None:
    """The INT8-relevant SIMD flags of this CPU (from ``/proc/cpuinfo``), or None when they cannot be read."""
    return host.cpu_flags(INT8_FLAGS, cpuinfo)


def is_x86(machine: str | None = None) -> bool:
    return (machine if machine is not None else platform.machine()).lower() in ("x86_64", "amd64", "i386", "i686")


def host_int8_choice(int8_format: str = "auto", reduce_range: bool | None = None,
                     flags: list[str] | None = None, machine: str | None = None) -> dict:
    """Resolve ``auto`` INT8 settings for this host: ``{"format", "reduce_range", "rule", "cpu_flags"}``.

    ``auto`` format: U8S8 with 8-bit weights on an x86 CPU with VNNI (exact, fastest); S8S8 with 7-bit weights
    everywhere else (exact without VNNI; the measured choice on ARM is still to be made, so the safe one is taken).
    ``reduce_range=None``: 7-bit weights unless the CPU has VNNI. Explicit values are kept as given.
    """
    if int8_format not in INT8_FORMAT_CHOICES:
        raise ConfigError(f"int8 format must be one of {list(INT8_FORMAT_CHOICES)}, got {int8_format!r}")
    flags = cpu_flags() if flags is None else flags
    vnni = is_x86(machine) and bool(set(flags or []) & set(VNNI_FLAGS))
    fmt = int8_format if int8_format != "auto" else ("u8s8" if vnni else "s8s8")
    rr = (not vnni) if reduce_range is None else bool(reduce_range)
    why = "this CPU has VNNI (int32 sums): 8-bit weights are exact" if vnni else (
        "this CPU has no VNNI (int16 pair sums saturate with 8-bit weights)" if is_x86(machine)
        else "not an x86 CPU: the conservative S8S8 7-bit form")
    return {"format": fmt, "reduce_range": rr, "rule": f"{int8_format} -> {fmt}, "
            f"{'7' if rr else '8'}-bit weights: {why}", "cpu_flags": flags}


def requires_for(reduce_range: bool) -> str:
    """The ``int8_requires_cpu`` metadata value of an INT8 model ("" when any CPU computes it exactly)."""
    return "" if reduce_range else "|".join(VNNI_FLAGS)


def check_int8_host(path: str | Path, metadata: dict, flags: list[str] | None = None,
                    machine: str | None = None) -> None:
    """Refuse an INT8 model with 8-bit weights on an x86 CPU without VNNI, where onnxruntime computes it wrongly.

    Raises:
        ModelFormatError: the model says it needs one of ``VNNI_FLAGS`` and this x86 CPU has none of them.
    """
    need = [f for f in (metadata.get(REQUIRES_KEY) or "").split("|") if f]
    if not need or not is_x86(machine):
        return
    have = cpu_flags() if flags is None else flags
    if have is None:
        log.warning("%s needs a CPU with one of %s; this CPU's flags cannot be read, so it is not checked", path, need)
        return
    if not set(need) & set(have):
        raise ModelFormatError(
            f"INT8 model {path} has 8-bit weights, which onnxruntime computes wrongly on an x86 CPU without VNNI "
            f"(needs one of {need}; this CPU has {have or 'none of the INT8 flags'}): its int16 sums saturate. "
            "Re-export for this CPU with `waferflow export ... --reduce-range` (7-bit weights, exact everywhere), "
            "or serve the FP32 model.onnx")
