"""The exporter: model dir -> export dir (model.onnx, model.int8.onnx, export.json), all or nothing."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from waferflow import __version__
from waferflow.config import atomic_write_json
from waferflow.data.contract import WaferDataset
from waferflow.errors import DataError, ModelFormatError
from waferflow.evaluation import (
    check_classes,
    metrics_from_logits,
    onnx_predictor,
    predict_dataset,
    spec_field,
    torch_predictor,
)
from waferflow.export.onnx_export import (
    MIN_OPSET,
    check_parity,
    export_fp32,
    onnx_metadata,
    parity,
    sha256_file,
)
from waferflow.export.quantize import (
    calibration_batches,
    held_out_batches,
    preprocess_for_quant,
    prune_model,
    quantize_int8,
)

log = logging.getLogger(__name__)

FP32_NAME = "model.onnx"
INT8_NAME = "model.int8.onnx"
EXPORT_JSON = "export.json"


def _load_model_dir(model_dir: str | os.PathLike) -> tuple[Any, Any]:
    from waferflow.models import load_model_dir

    return load_model_dir(model_dir)


def _overall(ds: WaferDataset, logits: np.ndarray, spec: Any) -> dict | None:
    if not ds.labeled:
        return None
    return metrics_from_logits(ds.labels, logits, spec_field(spec, "class_names"))["overall"]


def _drop(ref: dict | None, got: dict | None) -> dict:
    if ref is None or got is None:
        return {"accuracy_drop": None, "macro_f1_drop": None}
    return {"accuracy_drop": ref["accuracy"] - got["accuracy"], "macro_f1_drop": ref["macro_f1"] - got["macro_f1"]}


def choose_int8_layers(fp32: Path, calib: list[np.ndarray], calib_ds: WaferDataset, spec: Any,
                       fp32_layers: str | Sequence[str], calibration_maps: int, calibration: str = "minmax",
                       reduce_range: bool = True, target_agreement: float = 0.995, held_out_maps: int = 512,
                       threads: int | None = None, seed: int = 0, int8_format: str = "s8s8") -> dict:
    """The FP32-layer choice recorded in ``export.json`` (``int8.fp32_layers``).

    ``fp32_layers``: ``auto`` (by measured sensitivity, :func:`waferflow.export.sensitivity.choose_fp32_nodes`,
    agreement measured on training maps the calibration did not use), ``none``, or node names (e.g. a previous
    export's ``int8.fp32_layers.nodes``).

    Returns:
        ``{"mode": "auto" | "none" | "given", "nodes": [...], "selection": report | None}``.

    Raises:
        ConfigError: an unknown mode or node name.
    """
    from waferflow.errors import ConfigError
    from waferflow.export.quantize import check_fp32_nodes
    from waferflow.export.sensitivity import choose_fp32_nodes

    if isinstance(fp32_layers, str) and fp32_layers not in ("auto", "none"):
        raise ConfigError(f"fp32_layers must be 'auto', 'none' or a list of node names, got {fp32_layers!r}")
    if fp32_layers == "none":
        return {"mode": "none", "nodes": [], "selection": None}
    with tempfile.TemporaryDirectory(prefix="wf-layers-") as td:
        pre = preprocess_for_quant(fp32, Path(td) / "pre.onnx")
        if fp32_layers != "auto":
            return {"mode": "given", "nodes": check_fp32_nodes(pre, list(fp32_layers)), "selection": None}
        held = list(held_out_batches(calib_ds, spec, calibration_maps, held_out_maps, seed=seed))
        nodes, report = choose_fp32_nodes(pre, fp32, calib, held or calib, calibration, reduce_range,
                                          target_agreement, threads=threads, int8_format=int8_format)
    report["agreement_maps"] = "held-out training maps" if held else "calibration maps (no other training maps)"
    return {"mode": "auto", "nodes": nodes, "selection": report}


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, calib_ds: WaferDataset | None = None,
                parity_ds: WaferDataset | None = None, int8: bool = True, calibration_maps: int = 256,
                prune: float | None = None, opset: int = MIN_OPSET, exporter: str = "torchscript",
                int8_method: str = "static", calibration: str = "minmax", fp32_layers: str | Sequence[str] = "auto",
                reduce_range: bool = True, int8_target_agreement: float = 0.995, int8_format: str = "s8s8",
                min_agreement: float = 0.999,
                max_rel_diff: float = 1e-3,
                max_abs_diff: float | None = None,
                batch_size: int = 256, threads: int | None = None, seed: int = 0) -> dict:
    """Export a model dir to ONNX FP32 (+ INT8), check parity on real maps, write ``export.json``.

    Everything is built in a temp folder beside ``out_dir`` and renamed into place only when every check
    passed, so a failure leaves no half-written export.

    Args:
        model_dir: a model directory (``models.save_model_dir``).
        out_dir: the export directory to create (replaced if it exists).
        calib_ds: maps from the training split for INT8 calibration (needed when ``int8``).
        parity_ds: real maps (the test split) for the parity check and the INT8 accuracy drop.
        int8: also write ``model.int8.onnx``.
        calibration_maps: number of calibration maps drawn (class-stratified) from ``calib_ds``.
        prune: optional magnitude-pruning amount in (0, 1) applied before export.
        opset: ONNX opset (>= 17).
        exporter: ``torchscript`` (default) or ``dynamo``.
        int8_method: ``static`` (QDQ per-channel; dynamic fallback recorded) or ``dynamic``.
        calibration: activation-range calibration of static INT8: ``minmax``, ``percentile`` or ``entropy``.
        fp32_layers: layers kept in FP32 in the INT8 model: ``auto`` (by measured sensitivity until top-1
            agreement with FP32 on held-out training maps reaches ``int8_target_agreement``), ``none``, or node
            names (a previous ``export.json``'s ``int8.fp32_layers.nodes``); see :func:`choose_int8_layers`.
        reduce_range: 7-bit INT8 weights, so x86 CPUs without VNNI compute the INT8 model exactly (default on).
        int8_format: ``s8s8`` (symmetric int8 activations, the accurate default) or ``u8s8`` (asymmetric uint8,
            faster on x86, less accurate on real maps); see :func:`waferflow.export.quantize.static_qdq`.
        min_agreement, max_rel_diff: parity tolerance (FP32 vs PyTorch): argmax agreement and
            max |logit diff| / max(1, max |logit|); ``max_abs_diff`` optionally bounds the absolute diff too;
            beyond them -> ModelFormatError.
        batch_size: maps per predictor call. threads: onnxruntime intra-op threads.
        seed: calibration sampling seed.

    Returns:
        The ``export.json`` dict.

    Raises:
        DataError: missing/unlabeled parity data, missing calibration data, class-name mismatch.
        ModelFormatError: parity beyond tolerance or an unreadable model dir.
    """
    t_start = time.perf_counter()
    model_dir = Path(model_dir)
    out_dir = Path(out_dir)
    if parity_ds is None or len(parity_ds) == 0:
        raise DataError("export needs real maps for the parity check: pass the test split (--data FILE.npz)")
    if int8 and (calib_ds is None or len(calib_ds) == 0):
        raise DataError("INT8 export needs calibration maps from the training split (--calib FILE.npz), "
                        "or disable INT8 (--no-int8)")
    if int8 and not parity_ds.labeled:
        raise DataError("the parity data has no labels; the INT8 accuracy drop needs labeled test maps")
    model, spec = _load_model_dir(model_dir)
    check_classes(parity_ds, spec)
    if calib_ds is not None:
        check_classes(calib_ds, spec)
    weights = model_dir / "weights.pt"
    src_sha = sha256_file(weights) if weights.is_file() else "unknown"

    ref_logits = predict_dataset(torch_predictor(model), parity_ds, spec, batch_size, desc="torch")
    torch_overall = _overall(parity_ds, ref_logits, spec)
    prune_info = None
    if prune:
        prune_info = prune_model(model, prune)
        pruned_logits = predict_dataset(torch_predictor(model), parity_ds, spec, batch_size, desc="torch pruned")
        pruned_overall = _overall(parity_ds, pruned_logits, spec)
        prune_info.update(_drop(torch_overall, pruned_overall), metrics=pruned_overall)
        ref_logits, torch_overall = pruned_logits, pruned_overall

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        fp32 = tmp / FP32_NAME
        export_fp32(model, spec, fp32, onnx_metadata(spec, str(weights.resolve()), src_sha), opset, exporter)
        fp32_logits = predict_dataset(onnx_predictor(fp32, threads), parity_ds, spec, batch_size, desc="onnx fp32")
        par = parity(ref_logits, fp32_logits)
        par["min_agreement"], par["max_rel_diff_tolerance"] = min_agreement, max_rel_diff
        par["max_abs_diff_tolerance"] = max_abs_diff
        check_parity(par, min_agreement, max_rel_diff, max_abs_diff)
        fp32_overall = _overall(parity_ds, fp32_logits, spec)
        files = {FP32_NAME: fp32}
        int8_info = None
        if int8:
            calib = list(calibration_batches(calib_ds, spec, calibration_maps, batch_size=32, seed=seed))
            layers = (choose_int8_layers(fp32, calib, calib_ds, spec, fp32_layers, calibration_maps, calibration,
                                         reduce_range, int8_target_agreement, threads=threads, seed=seed,
                                         int8_format=int8_format)
                      if int8_method == "static" else {"mode": "none", "nodes": [], "selection": None})
            q = quantize_int8(fp32, tmp / INT8_NAME, calib, method=int8_method, calibration=calibration,
                              reduce_range=reduce_range, fp32_nodes=layers["nodes"], int8_format=int8_format)
            layers["nodes"] = q.pop("fp32_nodes")  # what was applied ([] after a dynamic fallback)
            q["fp32_layers"] = layers
            int8_logits = predict_dataset(onnx_predictor(tmp / INT8_NAME, threads), parity_ds, spec, batch_size,
                                          desc="onnx int8")
            int8_overall = _overall(parity_ds, int8_logits, spec)
            int8_info = {
                **q,
                "calibration_maps": int(sum(len(b) for b in calib)),
                **_drop(fp32_overall, int8_overall),
                "argmax_agreement_vs_fp32": parity(fp32_logits, int8_logits)["argmax_agreement"],
                "metrics": int8_overall,
            }
            files[INT8_NAME] = tmp / INT8_NAME
        info = {
            "format_version": 1,
            "source": {"model_dir": str(model_dir.resolve()), "weights_sha256": src_sha,
                       "backbone": spec_field(spec, "backbone")},
            "onnx": {"opset": opset if exporter == "torchscript" else max(opset, 18), "exporter": exporter,
                     "input": "input", "output": "logits", "dynamic_axis": "batch",
                     "input_size": int(spec_field(spec, "input_size")), "in_chans": int(spec_field(spec, "in_chans"))},
            "parity": par,
            "parity_data": parity_ds.meta.get("source") if isinstance(parity_ds.meta, dict) else None,
            "metrics": {"torch": torch_overall, "onnx_fp32": fp32_overall},
            "int8": int8_info,
            "prune": prune_info,
            "sizes": {name: p.stat().st_size for name, p in files.items()},
            "sha256": {name: sha256_file(p) for name, p in files.items()},
            "waferflow_version": __version__,
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": None,
        }
        info["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(tmp / EXPORT_JSON, info)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def verify_export_dir(export_dir: str | os.PathLike) -> dict:
    """Read ``export.json`` and check each listed file's sha256 (catches truncation and corruption).

    Raises:
        ModelFormatError: missing export.json, missing file, or a sha256 mismatch.
    """
    import json

    d = Path(export_dir)
    meta = d / EXPORT_JSON
    if not meta.is_file():
        raise ModelFormatError(f"{d} has no {EXPORT_JSON}; it is not an export dir (run `waferflow export`)")
    try:
        info = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise ModelFormatError(f"{meta} is not valid JSON ({e}); re-run `waferflow export`") from None
    for name, digest in info.get("sha256", {}).items():
        p = d / name
        if not p.is_file():
            raise ModelFormatError(f"{p} listed in {EXPORT_JSON} is missing; re-run `waferflow export`")
        if sha256_file(p) != digest:
            raise ModelFormatError(f"{p} does not match the sha256 in {EXPORT_JSON} (truncated or modified); "
                                   "re-run `waferflow export`")
    return info
