"""ModelSpec, the one ``preprocess`` function, and the model directory format.

A trained model is a folder (see docs/ARCHITECTURE.md): ``model.json`` (a
:class:`ModelSpec` plus provenance), ``weights.pt`` (a plain state_dict read with
``torch.load(weights_only=True)``), ``config.yaml``, ``history.json`` and
``checkpoints/``.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from waferflow import __version__
from waferflow.config import atomic_write_bytes, atomic_write_json, dump_config
from waferflow.data.contract import resize_nearest
from waferflow.errors import DataError, ModelFormatError

MODEL_JSON = "model.json"
WEIGHTS_PT = "weights.pt"


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model and feed it maps.

    ``extra`` holds keys of ``model.json`` that are not fields (e.g. weight lineage);
    they survive a ``from_dict``/``to_dict`` round trip.
    """

    backbone: str
    num_classes: int
    class_names: tuple[str, ...]
    input_size: int
    in_chans: int = 3
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    taxonomy: str | None = None
    rotation_invariant: bool = False
    weights_source: str = "random"
    strategy: str | None = None
    data_hash: str | None = None
    weights_sha256: str | None = None
    waferflow_version: str = __version__
    created_utc: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        object.__setattr__(self, "mean", tuple(float(x) for x in self.mean))
        object.__setattr__(self, "std", tuple(float(x) for x in self.std))
        if len(self.class_names) != self.num_classes:
            raise ModelFormatError(
                f"model spec: {len(self.class_names)} class names but num_classes={self.num_classes}"
            )
        if self.in_chans not in (1, 3):
            raise ModelFormatError(f"model spec: in_chans must be 1 or 3, got {self.in_chans}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ModelFormatError(
                f"model spec: mean/std need {self.in_chans} values (one per input channel); "
                f"got mean={list(self.mean)} std={list(self.std)}"
            )
        if int(self.input_size) < 8:
            raise ModelFormatError(f"model spec: input_size {self.input_size} is too small (>= 8 px)")

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        d["class_names"] = list(self.class_names)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d.update(self.extra)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ModelSpec":
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("backbone", "num_classes", "class_names", "input_size") if k not in d]
        if missing:
            raise ModelFormatError(f"model.json lacks required key(s) {missing}")
        known = {k: v for k, v in d.items() if k in names}
        extra = {k: v for k, v in d.items() if k not in names}
        try:
            return cls(**known, extra=extra)
        except TypeError as e:
            raise ModelFormatError(f"model.json is inconsistent: {e}") from None


def preprocess(maps_uint8: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Turn wafer maps into model input.

    Nearest resize to ``spec.input_size``, value/2 -> {0, .5, 1}, replicate to
    ``spec.in_chans`` channels, then ``(x - mean) / std``. Every model form uses
    this one function so they all see identical inputs.

    Args:
        maps_uint8: uint8 [N, h, w] with values 0/1/2 (or one [h, w] map).
        spec: The model's spec.

    Returns:
        float32 [N, C, S, S].

    Raises:
        DataError: on a wrong shape or values outside 0/1/2.
    """
    m = np.asarray(maps_uint8)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise DataError(f"preprocess needs maps [N, H, W]; got shape {m.shape}")
    if m.size and (m.dtype.kind not in "ui" or int(m.max()) > 2 or int(m.min()) < 0):
        raise DataError("preprocess: maps must be integers 0/1/2 (0 off-wafer, 1 pass, 2 fail)")
    s = int(spec.input_size)
    x = resize_nearest(m, s).astype(np.float32) * 0.5
    mean = np.asarray(spec.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(spec.std, dtype=np.float32)[None, :, None, None]
    x = np.repeat(x[:, None], spec.in_chans, axis=1)
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def preprocess_tensor(x_uint8, spec: ModelSpec):
    """Torch twin of :func:`preprocess` for maps already at ``input_size`` ([B, S, S] uint8 tensor)."""
    import torch

    x = x_uint8.to(torch.float32).mul_(0.5).unsqueeze(1)
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.expand(-1, spec.in_chans, -1, -1) - mean) / std


def state_dict_bytes(model) -> bytes:
    """A model's state_dict serialized with torch.save (plain tensors only)."""
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def copy_model_extras(model_dir, out_dir) -> Path:
    """Copy what travels with a model that a stage rewrites (history, config, plots) into ``out_dir``: not its
    ``checkpoints/`` (they hold the old weights, and nothing resumes from a rewritten model), ``weights.pt`` or
    ``model.json``. Then :func:`save_model_dir` writes the new model, ``model.json`` last, so a failure between the
    two leaves no loadable half model."""
    import shutil

    shutil.copytree(model_dir, out_dir, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("checkpoints", MODEL_JSON, WEIGHTS_PT))
    return Path(out_dir)


def save_model_dir(model, spec: ModelSpec, out_dir, history=None, config=None) -> Path:
    """Write ``model.json``, ``weights.pt`` and optionally ``history.json``/``config.yaml``.

    Each file is written atomically; ``weights_sha256`` and ``created_utc`` are filled in.

    Returns:
        The model directory.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    blob = state_dict_bytes(model)
    spec = spec.replace(
        weights_sha256=hashlib.sha256(blob).hexdigest(),
        created_utc=spec.created_utc or _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        waferflow_version=__version__,
    )
    atomic_write_bytes(out / WEIGHTS_PT, blob)
    if history is not None:
        atomic_write_json(out / "history.json", list(history))
    if config is not None:
        dump_config(config, out / "config.yaml")
    # model.json last: its presence marks a complete model dir
    atomic_write_json(out / MODEL_JSON, spec.to_dict())
    return out


def read_spec(path) -> ModelSpec:
    """Read ``model.json`` of a model dir (or the file itself)."""
    p = Path(path)
    f = p / MODEL_JSON if p.is_dir() else p
    if not f.is_file():
        raise ModelFormatError(f"{f} not found: {p} is not a waferflow model dir (it needs model.json and weights.pt)")
    try:
        d = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{f} is not valid JSON ({e}); re-export the model dir") from None
    if not isinstance(d, dict):
        raise ModelFormatError(f"{f} must hold a JSON object")
    return ModelSpec.from_dict(d)


def load_state_dict_file(path) -> dict:
    """``torch.load(weights_only=True)`` of a state_dict file, with clear errors.

    Accepts a plain state_dict or a checkpoint dict holding one under ``model``/``state_dict``.
    """
    import torch

    p = Path(path)
    if not p.is_file():
        raise ModelFormatError(f"weights file {p} does not exist")
    if p.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:  # pragma: no cover
            raise ModelFormatError(f"{p} is a .safetensors file but the safetensors package is not installed") from None
        try:
            return dict(load_file(str(p), device="cpu"))
        except Exception as e:
            raise ModelFormatError(f"weights file {p} is corrupt or not safetensors: {e}") from None
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelFormatError(
            f"weights file {p} cannot be read as a plain state_dict ({type(e).__name__}: {str(e)[:200]}); "
            "it is corrupt, truncated, or holds pickled objects other than tensors"
        ) from None
    if isinstance(sd, dict):
        for key in ("model", "state_dict"):
            if key in sd and isinstance(sd[key], dict):
                sd = sd[key]
                break
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ModelFormatError(f"weights file {p} does not hold a state_dict (a mapping of names to tensors)")
    return sd


def _build(spec: ModelSpec):
    """An untrained module of the spec's architecture: one timm backbone, or an ensemble of ``members`` of it."""
    import timm

    def one():
        return timm.create_model(spec.backbone, pretrained=False, num_classes=spec.num_classes, in_chans=spec.in_chans)

    from waferflow.models.ensemble import ENSEMBLE_KEY, MeanProbabilityEnsemble, is_ensemble

    if not is_ensemble(spec):
        return one()
    record = spec.extra[ENSEMBLE_KEY]

    n = record.get("members") if isinstance(record, dict) else None
    if not isinstance(n, int) or n < 2:
        raise ModelFormatError(f"model.json's ensemble record {record!r} needs an integer members >= 2")
    return MeanProbabilityEnsemble([one() for _ in range(n)])


def load_model_dir(path, device: str = "cpu"):
    """Rebuild a model from its dir (a timm backbone, or a mean-probability ensemble when ``model.json`` holds an
    ``ensemble`` record: :mod:`waferflow.models.ensemble`).

    Returns:
        ``(model in eval mode, ModelSpec)``.

    Raises:
        ModelFormatError: model.json or weights.pt missing, corrupt, or not matching the spec.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelFormatError(f"model dir {p} does not exist; pass the folder written by `waferflow train`")
    spec = read_spec(p)
    sd = load_state_dict_file(p / WEIGHTS_PT)
    if spec.weights_sha256:
        digest = hashlib.sha256((p / WEIGHTS_PT).read_bytes()).hexdigest()
        if digest != spec.weights_sha256:
            raise ModelFormatError(
                f"{p / WEIGHTS_PT} sha256 {digest[:12]}... does not match model.json weights_sha256 "
                f"{spec.weights_sha256[:12]}...: the weights were changed or corrupted"
            )
    try:
        model = _build(spec)
    except ModelFormatError:
        raise
    except Exception as e:
        raise ModelFormatError(f"model.json names backbone {spec.backbone!r} that timm cannot build: {e}") from None
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise ModelFormatError(f"{p / WEIGHTS_PT} does not fit {spec.backbone} ({str(e)[:300]})") from None
    return model.to(device).eval(), spec
