"""Which layers stay FP32 in the INT8 model, chosen by their measured sensitivity.

Each Conv/Gemm output's signal-to-quantization-noise ratio (SQNR, dB) in the all-INT8 model is measured with
``onnxruntime.quantization.qdq_loss_debug`` on calibration maps. The worst layers are then kept in FP32, a few
more per trial, until the INT8 model's top-1 agreement with the FP32 model on held-out training maps (maps not used
for calibration; no labels needed) reaches the target, within a budget of FP32 weights (so the file stays small).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from waferflow.config import progress_enabled
from waferflow.export.quantize import _reader, quantizable_nodes, static_qdq

TRIAL_SIZES = (1, 2, 3, 4, 6, 8, 12, 16)


def _top1(path: Path, maps: Sequence[np.ndarray], threads: int | None) -> np.ndarray:
    from waferflow.predictors import onnx_predictor

    predict = onnx_predictor(path, threads)
    return np.concatenate([predict(x).argmax(1) for x in maps])


def layer_sqnr(pre_path: Path, int8_path: Path, batches: Sequence[np.ndarray], workdir: Path,
               input_name: str = "input") -> dict[str, float]:
    """``{node name: SQNR dB of its output}`` for the quantized Conv/Gemm nodes of an all-INT8 QDQ model."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations, compute_activation_error, create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    aug_f, aug_q = workdir / "aug_f.onnx", workdir / "aug_q.onnx"
    modify_model_output_intermediate_tensors(str(pre_path), str(aug_f))
    modify_model_output_intermediate_tensors(str(int8_path), str(aug_q))
    err = compute_activation_error(create_activation_matching(
        collect_activations(str(aug_q), _reader(list(batches), input_name)),
        collect_activations(str(aug_f), _reader(list(batches), input_name))))
    nodes = quantizable_nodes(pre_path)
    producer = {o: n.name for n in onnx.load(str(pre_path)).graph.node if n.name in nodes for o in n.output}
    return {producer[t]: float(v["qdq_err"]) for t, v in err.items() if t in producer}


def choose_fp32_nodes(pre_path: str | os.PathLike, fp32_path: str | os.PathLike, calib: list[np.ndarray],
                      held_out: list[np.ndarray], calibration: str = "minmax", reduce_range: bool = True,
                      target_agreement: float = 0.995, max_fp32_params: float = 0.05,
                      threads: int | None = None, int8_format: str = "s8s8", keep: Sequence[str] = ()
                      ) -> tuple[list[str], dict]:
    """Keep the least-SQNR layers in FP32 until agreement with FP32 on ``held_out`` reaches the target.

    Args:
        pre_path: the ``quant_pre_process``-ed model (node names refer to it).
        fp32_path: the FP32 model (the reference of the agreement).
        calib: calibration batches; held_out: other training maps (preprocessed batches) for the agreement.
        calibration, reduce_range, int8_format: as in :func:`waferflow.export.quantize.static_qdq`.
        target_agreement: stop at the first trial whose top-1 agreement with FP32 reaches this.
        max_fp32_params: FP32 weights allowed, as a fraction of all Conv/Gemm weights (larger layers are skipped).
        threads: onnxruntime intra-op threads.
        keep: nodes kept FP32 in every trial (e.g. the classifier, ``quantize.output_layers``); they count
            against the budget and lead the result.

    Returns:
        ``(nodes, report)``: the chosen node names and ``{"method", "target_agreement", "held_out_maps",
        "sqnr_db" (the ranking, worst first), "trials": [{"fp32_nodes", "agreement"}], "met"}``. When no trial
        meets the target, the trial with the highest agreement wins (fewest nodes on a tie) and ``met`` is False.
    """
    from tqdm import tqdm

    pre_path, fp32_path = Path(pre_path), Path(fp32_path)
    params = quantizable_nodes(pre_path)
    budget = max_fp32_params * sum(params.values())
    keep = list(keep)
    ref = _top1(fp32_path, held_out, threads)
    with tempfile.TemporaryDirectory(prefix="wf-sensitivity-") as td:
        work = Path(td)
        static_qdq(pre_path, work / "all.onnx", calib, calibration, reduce_range, keep, int8_format=int8_format)
        trials = [{"fp32_nodes": keep,
                   "agreement": float((_top1(work / "all.onnx", held_out, threads) == ref).mean())}]
        sqnr = layer_sqnr(pre_path, work / "all.onnx", calib[:2], work) if trials[0]["agreement"] < target_agreement \
            else {}
        ranking, used = [], sum(params[n] for n in keep)
        for name, _ in sorted(sqnr.items(), key=lambda kv: kv[1]):
            if name not in keep and used + params[name] <= budget:
                ranking.append(name)
                used += params[name]
        sizes = [k for k in TRIAL_SIZES if k <= len(ranking)]
        for k in tqdm(sizes, desc="int8 fp32-layer search", disable=not progress_enabled()):
            static_qdq(pre_path, work / f"k{k}.onnx", calib, calibration, reduce_range, keep + ranking[:k],
                       int8_format=int8_format)
            agree = float((_top1(work / f"k{k}.onnx", held_out, threads) == ref).mean())
            trials.append({"fp32_nodes": keep + ranking[:k], "agreement": agree})
            if trials[-1]["agreement"] >= target_agreement:
                break
    met = [t for t in trials if t["agreement"] >= target_agreement]
    best = met[0] if met else max(trials, key=lambda t: (t["agreement"], -len(t["fp32_nodes"])))
    report = {"method": "sqnr_greedy", "always_fp32": keep, "target_agreement": target_agreement, "met": bool(met),
              "held_out_maps": int(sum(len(b) for b in held_out)), "max_fp32_params": max_fp32_params,
              "sqnr_db": [[n, round(sqnr[n], 2)] for n in ranking], "trials": trials}
    return list(best["fp32_nodes"]), report
