"""ONNX export with metadata and a parity check against PyTorch on real maps.

Exporter choice: the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``). With torch 2.14 it
exports a Lite0 in ~5 s against ~30 s for the torch.export-based exporter, writes one self-contained file
(the dynamo exporter writes external data by default), and its graphs go through onnxruntime's
``quant_pre_process``/``quantize_static`` cleanly. The dynamo exporter is available as ``exporter="dynamo"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from waferflow import __version__
from waferflow.errors import ConfigError, ModelFormatError
from waferflow.models.onnx_trace import MIN_OPSET, trace_to_onnx
from waferflow.predictors import spec_field

log = logging.getLogger(__name__)



def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def onnx_metadata(spec: Any, source_checkpoint: str, source_sha256: str) -> dict[str, str]:
    """The metadata_props stored in every exported model (values are strings; lists are JSON)."""
    return {
        "class_names": json.dumps(list(spec_field(spec, "class_names"))),
        "input_size": str(int(spec_field(spec, "input_size"))),
        "in_chans": str(int(spec_field(spec, "in_chans"))),
        "mean": json.dumps([float(v) for v in spec_field(spec, "mean")]),
        "std": json.dumps([float(v) for v in spec_field(spec, "std")]),
        "backbone": str(spec_field(spec, "backbone")),
        "value_coding": "0 off-wafer, 1 pass, 2 fail; x = value/2, replicated to in_chans, (x-mean)/std",
        "resize": "nearest",
        "source_checkpoint": str(source_checkpoint),
        "source_sha256": str(source_sha256),
        "waferflow_version": __version__,
    }


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata_props of an exported model, with JSON values decoded.

    Raises:
        ModelFormatError: the file cannot be parsed or lacks waferflow metadata.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"ONNX model {p} does not exist; run `waferflow export` first")
    try:
        m = onnx.load(str(p), load_external_data=False)
    except Exception as e:
        raise ModelFormatError(f"ONNX model {p} cannot be parsed ({type(e).__name__}: {e}); "
                               "re-run `waferflow export`") from None
    props = {p_.key: p_.value for p_ in m.metadata_props}
    missing = [k for k in ("class_names", "input_size", "in_chans", "mean", "std") if k not in props]
    if missing:
        raise ModelFormatError(f"ONNX model {p} lacks waferflow metadata {missing}; export it with `waferflow export`")
    out: dict[str, Any] = dict(props)
    for k in ("class_names", "mean", "std"):
        out[k] = json.loads(props[k])
    out["input_size"] = int(props["input_size"])
    out["in_chans"] = int(props["in_chans"])
    return out


def onnx_spec(meta: dict[str, Any]) -> Any:
    """The :class:`~waferflow.models.ModelSpec` an exported model's metadata describes (its own preprocessing)."""
    from waferflow.models import ModelSpec

    return ModelSpec.from_dict({"backbone": "unknown", **meta, "num_classes": len(meta["class_names"])})


def export_fp32(model: Any, spec: Any, path: str | os.PathLike, metadata: dict[str, str],
                opset: int = MIN_OPSET, exporter: str = "torchscript") -> Path:
    """Export a torch module to ONNX (dynamic batch axis ``batch``) and store ``metadata`` in it.

    Raises:
        ConfigError: opset < 17 or an unknown exporter.
        ModelFormatError: the exported graph fails ``onnx.checker``.
    """
    import onnx
    import torch

    if opset < MIN_OPSET:
        raise ConfigError(f"opset must be >= {MIN_OPSET}, got {opset}")
    s = int(spec_field(spec, "input_size"))
    c = int(spec_field(spec, "in_chans"))
    model = model.cpu().float().eval()
    dummy = torch.zeros(2, c, s, s)
    path = Path(path)
    trace_to_onnx(model, dummy, path, opset, exporter)
    m = onnx.load(str(path))
    # make the batch dim name deterministic whichever exporter ran
    for vi in list(m.graph.input) + list(m.graph.output):
        d0 = vi.type.tensor_type.shape.dim[0]
        d0.dim_param = "batch"
    del m.metadata_props[:]
    onnx.helper.set_model_props(m, metadata)
    try:
        onnx.checker.check_model(m, full_check=True)
    except Exception as e:
        raise ModelFormatError(f"exported ONNX graph is invalid: {e}") from None
    onnx.save(m, str(path))
    return path


def parity(ref_logits: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """``{"max_abs_diff", "argmax_agreement", "n"}`` between two logit arrays of one dataset."""
    ref = np.asarray(ref_logits, dtype=np.float64)
    got = np.asarray(logits, dtype=np.float64)
    if ref.shape != got.shape:
        raise ModelFormatError(f"parity: shapes differ, {ref.shape} vs {got.shape}")
    return {
        "max_abs_diff": float(np.abs(ref - got).max()),
        # the diff relative to the logit scale: FP32 kernels (fused conv+BN, other summation orders) differ by
        # a few ulps per op, so the absolute diff grows with the logits' magnitude
        "max_rel_diff": float(np.abs(ref - got).max() / max(1.0, float(np.abs(ref).max()))),
        "max_abs_logit": float(np.abs(ref).max()),
        "argmax_agreement": float((ref.argmax(1) == got.argmax(1)).mean()),
        "n": int(ref.shape[0]),
    }


def check_parity(p: dict, min_agreement: float = 0.999, max_rel_diff: float = 1e-3,
                 max_abs_diff: float | None = None, what: str = "ONNX FP32") -> None:
    """Raise ModelFormatError when a parity result is beyond tolerance.

    ``max_rel_diff`` bounds ``max |diff| / max(1, max |logit|)``: 1e-3 is far above FP32 rounding (1e-6..1e-4)
    and far below what a wrong op, a train-mode layer or a wrong input layout produces. ``max_abs_diff``
    optionally bounds the absolute diff as well.
    """
    abs_bad = max_abs_diff is not None and p["max_abs_diff"] > max_abs_diff
    if p["argmax_agreement"] < min_agreement or p["max_rel_diff"] > max_rel_diff or abs_bad:
        raise ModelFormatError(
            f"{what} does not match PyTorch: argmax agreement {p['argmax_agreement']:.4%} (need >= "
            f"{min_agreement:.2%}), max |logit diff| {p['max_abs_diff']:.3g} = {p['max_rel_diff']:.3g} of the "
            f"logit scale (need <= {max_rel_diff:g}"
            + (f" and <= {max_abs_diff:g} absolute" if max_abs_diff is not None else "")
            + f") on {p['n']} maps; the export is not faithful; check for "
            "unsupported ops or train-mode layers"
        )
