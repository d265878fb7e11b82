"""The table of model forms: one row per form, naming its file in its artifact dir and its loader.

The names (forms and files) are in ``waferflow.forms``, which imports nothing, for the CLI parser.

======================  ==================  ===========================  ==================================
form                    file                artifact dir                 loader
======================  ==================  ===========================  ==================================
``torch``               ``weights.pt``      model dir (``train``)        ``torch_predictor`` (eval, CPU/CUDA)
``onnx_fp32``           ``model.onnx``      export dir (``export``)      ``onnx_predictor`` (onnxruntime)
``onnx_int8``           ``model.int8.onnx`` export dir (``export``)      ``onnx_predictor`` (onnxruntime)
``onnx_fp32_tta``       ``model.tta.onnx``  export dir (``export --tta``) ``onnx_predictor`` (views in the graph)
``onnx_int8_tta``       ``model.int8.tta.onnx`` export dir (``--tta``)   ``onnx_predictor`` (views in the graph)
``tensorrt_fp16``       ``model.fp16.engine`` compile-trt dir            ``tensorrt_predictor`` (CUDA only)
``tensorrt_int8``       ``model.int8.engine`` compile-trt dir            ``tensorrt_predictor`` (CUDA only)
``tta`` (wrapper)       --                  any of the above             ``tta_predictor`` (``tta=symmetries``)
======================  ==================  ===========================  ==================================

``create_predictor(form, artifact, **opts)`` is the one place a form name becomes a predictor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from waferflow.errors import ModelFormatError
from waferflow.forms import (
    ENGINE_PRECISIONS,
    FP32_NAME,
    INT8_NAME,
    TTA_FP32_NAME,
    TTA_INT8_NAME,
    WEIGHTS_NAME,
    engine_name,
)
from waferflow.predictors.batches import Predictor


def _load_torch(path: Path, threads: int | None = None, device: str = "cpu", model: Any = None) -> Predictor:
    from waferflow.predictors.runtime import torch_predictor

    if threads:
        import torch

        torch.set_num_threads(threads)
    if model is None:
        from waferflow.models import load_model_dir

        model = load_model_dir(path.parent)[0]
    return torch_predictor(model, device)


def _load_onnx(path: Path, threads: int | None = None, device: str = "cpu", model: Any = None) -> Predictor:
    from waferflow.predictors.runtime import onnx_predictor

    return onnx_predictor(path, threads=threads, device=device)


def _load_tensorrt(path: Path, threads: int | None = None, device: str = "cpu", model: Any = None) -> Predictor:
    from waferflow.predictors.tensorrt import tensorrt_predictor

    return tensorrt_predictor(path)


@dataclass(frozen=True)
class Form:
    """One row of the table: a model form, its file inside its artifact dir, and how to load it."""

    name: str
    file: str | None  # None: a wrapper around another form (tta)
    artifact: str  # what the artifact dir is, for messages and the CLI
    loader: Callable[..., Predictor] | None


FORMS: dict[str, Form] = {f.name: f for f in (
    Form("torch", WEIGHTS_NAME, "model dir (`waferflow train`)", _load_torch),
    Form("onnx_fp32", FP32_NAME, "export dir (`waferflow export`)", _load_onnx),
    Form("onnx_int8", INT8_NAME, "export dir (`waferflow export`)", _load_onnx),
    Form("onnx_fp32_tta", TTA_FP32_NAME, "export dir (`waferflow export --tta`)", _load_onnx),
    Form("onnx_int8_tta", TTA_INT8_NAME, "export dir (`waferflow export --tta`, with INT8)", _load_onnx),
    *(Form(f"tensorrt_{p}", engine_name(p), "compile-trt dir (`waferflow compile-trt`)", _load_tensorrt)
      for p in ENGINE_PRECISIONS),
    Form("tta", None, "any form's artifact; pass tta=symmetries with that form", None),
)}
BASE_FORMS: tuple[str, ...] = tuple(name for name, f in FORMS.items() if f.file is not None)


def get_form(form: str) -> Form:
    """The table row of a base form.

    Raises:
        ModelFormatError: an unknown form, or the ``tta`` wrapper (it needs a base form).
    """
    if form not in FORMS:
        raise ModelFormatError(f"unknown model form {form!r}; known forms: {', '.join(BASE_FORMS)} (+ tta)")
    row = FORMS[form]
    if row.file is None:
        raise ModelFormatError(f"{form!r} is a wrapper, not a model form: pick one of {', '.join(BASE_FORMS)} "
                               f"and pass tta=SYMMETRIES")
    return row


def form_file(form: str, artifact: str | os.PathLike) -> Path:
    """The file of ``form`` inside the artifact dir ``artifact`` (a path to the file itself is accepted too).

    Raises:
        ModelFormatError: an unknown form, or the file is missing.
    """
    row = get_form(form)
    p = Path(artifact)
    path = p if p.name == row.file else p / row.file
    if not path.is_file():
        raise ModelFormatError(f"{form} needs {path}, which does not exist; {path.parent} should be a "
                               f"{row.artifact}")
    return path


def create_predictor(form: str, artifact: Any, *, threads: int | None = None, device: str = "cpu",
                     tta: Sequence[str] | None = None, tta_rotations: Sequence[float] = (),
                     tta_pad: Sequence[float] | None = None) -> Predictor:
    """A predictor for ``form`` loaded from its artifact dir (see the module's table).

    Args:
        form: a base form of ``FORMS`` (``torch``, ``onnx_fp32``, ``onnx_int8``, ``onnx_fp32_tta``,
            ``onnx_int8_tta``, ``tensorrt_fp16``, ``tensorrt_int8``).
        artifact: the form's artifact dir (or its file); for ``torch`` also an already loaded ``nn.Module``.
        threads: torch threads (``torch``; set process-wide) or onnxruntime intra-op threads (``onnx_*``).
        device: ``cpu`` or ``cuda`` (``torch`` and ``onnx_*``; TensorRT is always CUDA).
        tta: symmetries; when given, the predictor is wrapped in ``tta_predictor`` (1 view = no change).
        tta_rotations, tta_pad: with ``tta``, the extra angles of ``tta_predictor`` and the preprocessed
            off-wafer value per channel (``rotation_pad(spec)``).

    Raises:
        ModelFormatError: an unknown form, a missing file (named), or a file that cannot be loaded.
        ConfigError: a device that is absent (never falls back).
    """
    row = get_form(form)
    model = None
    if form == "torch" and hasattr(artifact, "forward"):
        model, path = artifact, None
    else:
        path = form_file(form, artifact)
    predict = row.loader(path, threads=threads, device=device, model=model)
    if tta is not None:
        from waferflow.predictors.runtime import tta_predictor

        predict = tta_predictor(predict, tta, tta_rotations, tta_pad)
    return predict
