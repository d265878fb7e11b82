"""The exporter: model dir -> export dir (model.onnx, model.int8.onnx, the TTA graphs on request, export.json), all or
nothing."""

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
from waferflow.errors import ConfigError, DataError, ModelFormatError
from waferflow.evaluation import check_classes, metrics_from_logits
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
from waferflow.forms import EXPORT_FORMS, TTA_OF
from waferflow.predictors import (
    FP32_NAME,
    INT8_NAME,
    WEIGHTS_NAME,
    create_predictor,
    onnx_predictor,
    predict_dataset,
    rotation_pad,
    spec_field,
    torch_predictor,
    tta_predictor,
)
from waferflow.predictors.int8_host import host_int8_choice, requires_for
from waferflow.predictors.rotation import effective_rotations

log = logging.getLogger(__name__)

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

    ``fp32_layers``: ``auto`` (the classifier, :func:`waferflow.export.quantize.output_layers`, then the layers
    chosen by measured sensitivity, :func:`waferflow.export.sensitivity.choose_fp32_nodes`, agreement measured on
    training maps the calibration did not use), ``none``, or node names (e.g. a previous
    export's ``int8.fp32_layers.nodes``).

    Returns:
        ``{"mode": "auto" | "none" | "given", "nodes": [...], "selection": report | None}``.

    Raises:
        ConfigError: an unknown mode or node name.
    """
    from waferflow.errors import ConfigError
    from waferflow.export.quantize import check_fp32_nodes, output_layers
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
                                          target_agreement, threads=threads, int8_format=int8_format,
                                          keep=output_layers(pre))
    report["agreement_maps"] = "held-out training maps" if held else "calibration maps (no other training maps)"
    return {"mode": "auto", "nodes": nodes, "selection": report}


def _load_for_export(model_dir: Path, calib_ds: WaferDataset | None, parity_ds: WaferDataset | None, int8: bool
                     ) -> tuple[Any, Any, Path, str]:
    """``(model, spec, weights file, its sha256)`` after checking the data the export needs."""
    if parity_ds is None or len(parity_ds) == 0:
        raise DataError("export needs real maps for the parity check: pass the test split (--data FILE.npz)")
    if int8 and (calib_ds is None or len(calib_ds) == 0):
        raise DataError("INT8 export needs calibration maps from the training split (--calib FILE.npz), "
                        "or disable INT8 (--no-int8)")
    if int8 and not parity_ds.labeled:
        raise DataError("the parity data has no labels; the INT8 accuracy drop needs labeled test maps")
    model, spec = _load_model_dir(model_dir)
    for ds in (parity_ds, calib_ds):
        if ds is not None:
            check_classes(ds, spec)
    weights = model_dir / WEIGHTS_NAME
    return model, spec, weights, sha256_file(weights) if weights.is_file() else "unknown"


def _torch_reference(model: Any, spec: Any, parity_ds: WaferDataset, prune: float | None, batch_size: int
                     ) -> tuple[np.ndarray, dict | None, dict | None]:
    """``(reference logits, their overall metrics, prune report)``: PyTorch on the parity maps, pruned first
    when ``prune`` is set (then the pruned model is the reference)."""
    ref_logits = predict_dataset(torch_predictor(model), parity_ds, spec, batch_size, desc="torch")
    torch_overall = _overall(parity_ds, ref_logits, spec)
    prune_info = None
    if prune:
        prune_info = prune_model(model, prune)
        pruned_logits = predict_dataset(torch_predictor(model), parity_ds, spec, batch_size, desc="torch pruned")
        pruned_overall = _overall(parity_ds, pruned_logits, spec)
        prune_info.update(_drop(torch_overall, pruned_overall), metrics=pruned_overall)
        ref_logits, torch_overall = pruned_logits, pruned_overall
    return ref_logits, torch_overall, prune_info


def _write_fp32(tmp: Path, model: Any, spec: Any, metadata: dict, opset: int, exporter: str,
                parity_ds: WaferDataset, ref_logits: np.ndarray, tolerance: dict, batch_size: int,
                threads: int | None) -> tuple[Path, np.ndarray, dict]:
    """Write ``tmp/model.onnx`` and check its parity with ``ref_logits``: ``(path, FP32 logits, parity report)``.

    ``tolerance``: ``min_agreement``, ``max_rel_diff``, ``max_abs_diff`` (see :func:`export_onnx`).
    """
    fp32 = tmp / FP32_NAME
    export_fp32(model, spec, fp32, metadata, opset, exporter)
    fp32_logits = predict_dataset(onnx_predictor(fp32, threads), parity_ds, spec, batch_size, desc="onnx fp32")
    par = parity(ref_logits, fp32_logits)
    par["min_agreement"], par["max_rel_diff_tolerance"] = tolerance["min_agreement"], tolerance["max_rel_diff"]
    par["max_abs_diff_tolerance"] = tolerance["max_abs_diff"]
    check_parity(par, tolerance["min_agreement"], tolerance["max_rel_diff"], tolerance["max_abs_diff"])
    return fp32, fp32_logits, par


def _write_int8(tmp: Path, fp32: Path, fp32_logits: np.ndarray, fp32_overall: dict | None, calib_ds: WaferDataset,
                parity_ds: WaferDataset, spec: Any, calibration_maps: int, int8_method: str = "static",
                calibration: str = "minmax", fp32_layers: str | Sequence[str] = "auto",
                reduce_range: bool | None = None, int8_target_agreement: float = 0.995, int8_format: str = "auto",
                batch_size: int = 256, threads: int | None = None, seed: int = 0) -> dict:
    """Quantize ``fp32`` to ``tmp/model.int8.onnx`` and measure it on the parity maps: ``export.json``'s ``int8``.

    ``int8_method``: ``static`` (QDQ per-channel; dynamic fallback recorded) or ``dynamic``. ``calibration``:
    activation-range calibration of static INT8 (``minmax``, ``percentile``, ``entropy``). ``fp32_layers``:
    layers kept in FP32: ``auto`` (the classifier, then more by measured sensitivity until top-1 agreement with
    FP32 on held-out training maps reaches ``int8_target_agreement``), ``none``, or node names (see :func:`choose_int8_layers`).
    ``int8_format`` (``auto``, ``s8s8``, ``u8s8``) and ``reduce_range`` (None = auto; True = 7-bit weights, exact
    on every CPU) are resolved for this host by :func:`waferflow.predictors.int8_host.host_int8_choice`: ``auto``
    is U8S8 with 8-bit weights on an x86 CPU with VNNI, S8S8 with 7-bit weights elsewhere. The choice and its rule
    go in ``int8.host``; a model with 8-bit weights carries ``int8_requires_cpu`` in its metadata.
    """
    host = host_int8_choice(int8_format, reduce_range)
    int8_format, reduce_range = host["format"], host["reduce_range"]
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
    return {
        **q,
        "host": {**host, "requires_cpu_flags": requires_for(reduce_range)},
        "calibration_maps": int(sum(len(b) for b in calib)),
        **_drop(fp32_overall, int8_overall),
        "argmax_agreement_vs_fp32": parity(fp32_logits, int8_logits)["argmax_agreement"],
        "metrics": int8_overall,
    }


def _write_tta(tmp: Path, files: dict[str, Path], spec: Any, parity_ds: WaferDataset, tolerance: dict,
               batch_size: int, threads: int | None, rotations: Sequence[float] = ()) -> tuple[dict, dict]:
    """Wrap every written ONNX form in a TTA graph (``waferflow.export.tta_onnx``) over the symmetries the model
    was trained with (and the extra ``rotations``), and check each against ``tta_predictor`` around its source on
    the parity maps.

    Returns ``(export.json's "tta", {form: overall metrics})``; adds the files to ``files``.

    Raises:
        ConfigError: the model records no symmetries (one view: nothing to average).
        ModelFormatError: a TTA graph does not match the predictor it stands for.
    """
    from waferflow.export.tta_onnx import wrap_tta
    from waferflow.train.augment import model_symmetries

    symmetries = model_symmetries(spec)
    rotations, off = effective_rotations("tta_rotations", rotations, symmetries)
    pad = rotation_pad(spec) if rotations else None
    forms, metrics = {}, {}
    for base, tta_form in TTA_OF.items():
        src = tmp / EXPORT_FORMS[base]
        if not src.is_file():
            continue
        dst = tmp / EXPORT_FORMS[tta_form]
        info = wrap_tta(src, dst, symmetries, rotations, pad)
        logits = predict_dataset(create_predictor(tta_form, dst, threads=threads), parity_ds, spec, batch_size,
                                 desc=tta_form)
        ref = predict_dataset(tta_predictor(onnx_predictor(src, threads), symmetries, rotations, pad), parity_ds,
                              spec, batch_size, desc=f"{base}+tta reference")
        par = parity(ref, logits)
        check_parity(par, tolerance["min_agreement"], tolerance["max_rel_diff"], None, what=f"{tta_form} graph")
        forms[tta_form] = {**info, "parity_vs_predictor": par}
        metrics[tta_form] = _overall(parity_ds, logits, spec)
        files[dst.name] = dst
    return {"symmetries": list(symmetries), "rotations": [float(r) for r in rotations], **off, "forms": forms}, metrics


def _export_info(model_dir: Path, src_sha: str, spec: Any, opset: int, exporter: str, par: dict,
                 parity_ds: WaferDataset, metrics: dict, int8_info: dict | None, prune_info: dict | None,
                 files: dict[str, Path], tta_info: dict | None = None) -> dict:
    """The ``export.json`` dict (``seconds`` filled in by the caller)."""
    return {
        "format_version": 1,
        "source": {"model_dir": str(model_dir.resolve()), "weights_sha256": src_sha,
                   "backbone": spec_field(spec, "backbone")},
        "onnx": {"opset": opset if exporter == "torchscript" else max(opset, 18), "exporter": exporter,
                 "input": "input", "output": "logits", "dynamic_axis": "batch",
                 "input_size": int(spec_field(spec, "input_size")), "in_chans": int(spec_field(spec, "in_chans"))},
        "parity": par,
        "parity_data": parity_ds.meta.get("source") if isinstance(parity_ds.meta, dict) else None,
        "metrics": metrics,
        "int8": int8_info,
        "prune": prune_info,
        "tta": tta_info,
        "sizes": {name: p.stat().st_size for name, p in files.items()},
        "sha256": {name: sha256_file(p) for name, p in files.items()},
        "waferflow_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": None,
    }


def _publish(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def export_onnx(model_dir: str | os.PathLike, out_dir: str | os.PathLike, calib_ds: WaferDataset | None = None,
                parity_ds: WaferDataset | None = None, int8: bool = True, calibration_maps: int = 256,
                prune: float | None = None, opset: int = MIN_OPSET, exporter: str = "torchscript",
                int8_method: str = "static", calibration: str = "minmax", fp32_layers: str | Sequence[str] = "auto",
                reduce_range: bool | None = None, int8_target_agreement: float = 0.995, int8_format: str = "auto",
                min_agreement: float = 0.999, max_rel_diff: float = 1e-3, max_abs_diff: float | None = None,
                batch_size: int = 256, threads: int | None = None, seed: int = 0, tta: bool = False,
                tta_rotations: Sequence[float] = ()) -> dict:
    """Export a model dir to ONNX FP32 (+ INT8, + TTA graphs), check parity on real maps, write ``export.json``.

    Everything is built in a temp folder beside ``out_dir`` and renamed into place only when every check
    passed, so a failure leaves no half-written export.

    Args:
        model_dir: a model directory (``models.save_model_dir``). out_dir: the export directory to create
            (replaced if it exists).
        calib_ds: maps from the training split for INT8 calibration (needed when ``int8``).
        parity_ds: real maps (the test split) for the parity check and the INT8 accuracy drop.
        int8: also write ``model.int8.onnx``; ``calibration_maps`` are drawn (class-stratified) from ``calib_ds``.
        prune: optional magnitude-pruning amount in (0, 1) applied before export.
        opset: ONNX opset (>= 17). exporter: ``torchscript`` (default) or ``dynamo``.
        int8_method, calibration, fp32_layers, reduce_range, int8_target_agreement, int8_format: the INT8
            settings, see :func:`_write_int8`.
        min_agreement, max_rel_diff: parity tolerance (FP32 vs PyTorch): argmax agreement and
            max |logit diff| / max(1, max |logit|); ``max_abs_diff`` optionally bounds the absolute diff too;
            beyond them -> ModelFormatError.
        batch_size: maps per predictor call. threads: onnxruntime intra-op threads. seed: calibration sampling.
        tta: also write ``model.tta.onnx`` (and ``model.int8.tta.onnx`` with INT8): test-time augmentation over
            the model's training symmetries inside the graph, checked against ``tta_predictor`` (forms
            ``onnx_fp32_tta`` / ``onnx_int8_tta``). ``tta_rotations``: with ``tta``, also average those views of each
            map turned by each of these angles (degrees), as training's free rotation turns maps.

    Returns the ``export.json`` dict. Raises DataError (missing/unlabeled parity data, missing calibration data,
    class-name mismatch) or ModelFormatError (parity beyond tolerance, an unreadable model dir).
    """
    t_start = time.perf_counter()
    if tta_rotations and not tta:
        raise ConfigError(f"tta_rotations {list(tta_rotations)} turn the TTA graph's maps, but tta is off: set "
                          "export.tta=true (--tta) or drop tta_rotations")
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    model, spec, weights, src_sha = _load_for_export(model_dir, calib_ds, parity_ds, int8)
    ref_logits, torch_overall, prune_info = _torch_reference(model, spec, parity_ds, prune, batch_size)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        fp32, fp32_logits, par = _write_fp32(
            tmp, model, spec, onnx_metadata(spec, str(weights.resolve()), src_sha), opset, exporter, parity_ds,
            ref_logits, {"min_agreement": min_agreement, "max_rel_diff": max_rel_diff, "max_abs_diff": max_abs_diff},
            batch_size, threads)
        fp32_overall = _overall(parity_ds, fp32_logits, spec)
        files, int8_info = {FP32_NAME: fp32}, None
        if int8:
            int8_info = _write_int8(tmp, fp32, fp32_logits, fp32_overall, calib_ds, parity_ds, spec, calibration_maps,
                                    int8_method, calibration, fp32_layers, reduce_range, int8_target_agreement,
                                    int8_format, batch_size, threads, seed)
            files[INT8_NAME] = tmp / INT8_NAME
        metrics = {"torch": torch_overall, "onnx_fp32": fp32_overall}
        tta_info = None
        if tta:
            tta_info, tta_metrics = _write_tta(tmp, files, spec, parity_ds, {"min_agreement": min_agreement,
                                                                              "max_rel_diff": max_rel_diff},
                                               batch_size, threads, tta_rotations)
            metrics.update(tta_metrics)
        info = _export_info(model_dir, src_sha, spec, opset, exporter, par, parity_ds, metrics, int8_info,
                            prune_info, files, tta_info)
        info["seconds"] = round(time.perf_counter() - t_start, 2)
        atomic_write_json(tmp / EXPORT_JSON, info)
        _publish(tmp, out_dir)
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
