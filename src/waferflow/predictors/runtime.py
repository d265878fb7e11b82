"""The in-process predictors: PyTorch, ONNX Runtime (a file, or a live model traced in memory), and test-time
augmentation around any predictor."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from waferflow.errors import ConfigError, ModelFormatError
from waferflow.predictors.batches import Predictor, softmax, spec_field
from waferflow.predictors.int8_host import check_int8_host

# label-preserving transforms a taxonomy may allow (train.config parses them, TTA and augmentation use them)
SYMMETRIES = ("hflip", "vflip", "rot90", "rot180")


def torch_predictor(model: Any, device: str = "cpu") -> Predictor:
    """A predictor around a torch module (eval mode, inference_mode, float32 logits back on the CPU).

    Raises:
        ConfigError: ``device`` asks for CUDA and no CUDA device is present (never falls back to CPU).
    """
    import torch

    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but torch sees no CUDA device; use device='cpu'")
    # channels-last: oneDNN runs the conv backbones about 2x faster this way on the CPU
    model = model.to(dev, memory_format=torch.channels_last).eval()

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            xt = torch.from_numpy(x).to(dev)
            if xt.ndim == 4:
                xt = xt.contiguous(memory_format=torch.channels_last)
            return model(xt).float().cpu().numpy()

    return predict


def tta_views(symmetries: Sequence[str]) -> list[tuple[int, bool, bool]]:
    """Distinct label-preserving views ``(rot90 k, hflip, vflip)`` that ``symmetries`` allow (identity first).

    ``rot90`` gives 4 rotations, ``rot180`` 2; with ``hflip``/``vflip`` the group is closed and duplicates
    (e.g. vflip = rot180 + hflip) are dropped, so the dihedral group gives 8 views, not 16.
    """
    bad = [s for s in symmetries if s not in SYMMETRIES]
    if bad:
        raise ConfigError(f"unknown symmetries {bad}; use {list(SYMMETRIES)}")
    rots = (0, 1, 2, 3) if "rot90" in symmetries else (0, 2) if "rot180" in symmetries else (0,)
    probe = np.arange(16).reshape(4, 4)
    seen, views = set(), []
    for k in rots:
        for h in ((False, True) if "hflip" in symmetries else (False,)):
            for v in ((False, True) if "vflip" in symmetries else (False,)):
                key = _view(probe, (k, h, v)).tobytes()
                if key not in seen:
                    seen.add(key)
                    views.append((k, h, v))
    return views


def _view(x: np.ndarray, view: tuple[int, bool, bool]) -> np.ndarray:
    k, h, v = view
    x = np.rot90(x, k, axes=(-2, -1)) if k else x
    x = x[..., ::-1] if h else x
    x = x[..., ::-1, :] if v else x
    return np.ascontiguousarray(x)


def tta_predictor(predict: Predictor, symmetries: Sequence[str], rotations: Sequence[float] = (),
                  pad: Sequence[float] | None = None) -> Predictor:
    """Test-time augmentation around any predictor: the mean softmax over ``tta_views(symmetries)``.

    Returns log(mean probability) as logits, so argmax and softmax of the result are the averaged ones.
    Only the transforms the taxonomy allows are used (seed20's vertical vs horizontal scratch forbid rot90).
    ``rotations`` (degrees) add the same views of each map turned by each angle, as training's free rotation turns
    maps (``waferflow.predictors.rotation``); ``pad`` is then the preprocessed off-wafer value of each channel
    (``rotation_pad(spec)``). ``predict_tta.views`` lists ``(angle, view)``.
    """
    from waferflow.predictors.rotation import check_rotations, rotate_input

    angles = (0.0, *check_rotations(rotations, symmetries))
    if len(angles) > 1 and pad is None:
        raise ConfigError("tta_predictor: rotations need pad, the preprocessed off-wafer value per channel")
    views = tta_views(symmetries)

    def predict_tta(x: np.ndarray) -> np.ndarray:
        acc = None
        for angle in angles:
            turned = x if angle == 0 else rotate_input(x, angle, pad)
            for view in views:
                p = softmax(np.asarray(predict(_view(turned, view)), dtype=np.float64))
                acc = p if acc is None else acc + p
        return np.log(np.maximum(acc / (len(views) * len(angles)), 1e-12)).astype(np.float32)

    predict_tta.views = [(a, v) for a in angles for v in views]  # type: ignore[attr-defined]
    return predict_tta


def rotation_pad(spec: Any) -> list[float]:
    """The preprocessed value of an off-wafer pixel (0) in each input channel of the model ``spec`` describes."""
    from waferflow.models import preprocess

    return [float(v) for v in preprocess(np.zeros((1, 1, 1), np.uint8), spec)[0, :, 0, 0]]


def _session_options(threads: int | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads is not None:
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
    return so


def onnx_session(path: str | os.PathLike, threads: int | None = None, device: str = "cpu") -> Any:
    """An onnxruntime InferenceSession with a clear error for a missing, corrupt or truncated file.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: onnxruntime's default).
        device: ``cpu`` (CPUExecutionProvider) or ``cuda`` (CUDAExecutionProvider; an error when absent).

    Raises:
        ModelFormatError: the file is missing, empty, or onnxruntime cannot load it; or it is an INT8 model with
            8-bit weights on an x86 CPU without VNNI (``check_int8_host``).
        ConfigError: CUDA was asked for and onnxruntime has no CUDA provider.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"ONNX model {p} does not exist; run `waferflow export` first")
    if p.stat().st_size == 0:
        raise ModelFormatError(f"ONNX model {p} is empty (0 bytes); re-run `waferflow export`")
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ConfigError("device='cuda' was asked for but onnxruntime has no CUDAExecutionProvider; "
                              "install onnxruntime-gpu on a CUDA machine or use device='cpu'")
        providers = ["CUDAExecutionProvider"]
    elif device == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    try:
        sess = ort.InferenceSession(str(p), sess_options=_session_options(threads), providers=providers)
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/InvalidGraph types
        raise ModelFormatError(
            f"ONNX model {p} is corrupt or truncated and cannot be loaded ({type(e).__name__}: "
            f"{str(e).strip()[:300]}); re-run `waferflow export` to rebuild it"
        ) from None
    if device == "cpu":
        check_int8_host(p, sess.get_modelmeta().custom_metadata_map)
    return sess


#: images per onnxruntime call: a predictor cuts larger inputs, so a TTA graph (V images per map) gets
#: IMAGES_PER_CALL // V maps a call (256 maps of a WM-811K graph would be 2,048 images, several GiB of activations)
IMAGES_PER_CALL = 256


def maps_per_call(sess: Any) -> int:
    """Maps per call into ``sess`` that keep it near ``IMAGES_PER_CALL`` images (``tta_views`` in its metadata)."""
    views = int(sess.get_modelmeta().custom_metadata_map.get("tta_views") or 1)
    return max(1, IMAGES_PER_CALL // max(views, 1))


def onnx_predictor(path: str | os.PathLike, threads: int | None = None, device: str = "cpu") -> Predictor:
    """A predictor around an ONNX model (input ``input``, output ``logits``); see ``onnx_session``. Inputs larger
    than ``maps_per_call`` run in slices of that size."""
    sess = onnx_session(path, threads=threads, device=device)
    in_name = sess.get_inputs()[0].name
    out_name = sess.get_outputs()[0].name
    n = maps_per_call(sess)

    def predict(x: np.ndarray) -> np.ndarray:
        if len(x) <= n:
            return sess.run([out_name], {in_name: x})[0]
        return np.concatenate([sess.run([out_name], {in_name: x[i:i + n]})[0] for i in range(0, len(x), n)])

    return predict


#: maps of the first batch that :func:`onnxruntime_model_predictor` also runs in PyTorch, and the largest logit
#: difference it accepts relative to the logit scale (the export stage's own FP32 parity tolerance)
PARITY_MAPS, PARITY_MAX_REL_DIFF = 32, 1e-3


def onnxruntime_model_predictor(model: Any, spec: Any, threads: int | None = None) -> Predictor:
    """A live torch model run by onnxruntime on the CPU, traced in memory (nothing is written).

    For bulk CPU inference inside a stage (self-training's pseudo-labels): onnxruntime folds batch norm into the
    convolutions and pseudo-labelled 6,225 maps at 80 px with 8-view TTA 2.45x faster than eager PyTorch on two cores
    (``benchmarks/bench_pseudo_label.py``). The graph is the one the export stage writes (``models.onnx_trace``).
    The first call also runs its first ``PARITY_MAPS`` maps in PyTorch and refuses logits that differ by more than
    ``PARITY_MAX_REL_DIFF`` of the logit scale, so a model that traces wrongly stops the stage instead of labelling.

    Raises:
        ModelFormatError: the traced graph cannot be loaded, or its first batch differs from PyTorch.
    """
    import onnxruntime as ort
    import torch

    from waferflow.models.onnx_trace import INPUT_NAME, MIN_OPSET, OUTPUT_NAME, trace_to_onnx

    size, chans = int(spec_field(spec, "input_size")), int(spec_field(spec, "in_chans"))
    model = model.cpu().float().eval()
    buf = io.BytesIO()
    trace_to_onnx(model, torch.zeros(2, chans, size, size), buf, MIN_OPSET)
    try:
        sess = ort.InferenceSession(buf.getvalue(), sess_options=_session_options(threads),
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own exception types
        raise ModelFormatError(f"{spec_field(spec, 'backbone')}: onnxruntime cannot load the traced graph "
                               f"({type(e).__name__}: {str(e).strip()[:300]}); run it in PyTorch instead") from None
    reference, checked = torch_predictor(model), False

    def predict(x: np.ndarray) -> np.ndarray:
        nonlocal checked
        out = sess.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
        if not checked:
            ref = reference(x[:PARITY_MAPS])
            rel = float(np.abs(out[:PARITY_MAPS] - ref).max() / max(1.0, float(np.abs(ref).max())))
            if not rel <= PARITY_MAX_REL_DIFF:
                raise ModelFormatError(
                    f"{spec_field(spec, 'backbone')}: onnxruntime's logits differ from PyTorch's by {rel:.2e} of "
                    f"the logit scale (at most {PARITY_MAX_REL_DIFF:g}); the model does not trace faithfully, so "
                    "run it in PyTorch instead (self-training: --set self_training.cpu_engine=torch)")
            checked = True
        return out

    return predict
