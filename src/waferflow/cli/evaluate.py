"""``waferflow evaluate``: one evaluator for every model form, plus its pictures."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from waferflow.forms import FORM_NAMES as FORMS
from waferflow.forms import FP32_NAME, INT8_NAME


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``evaluate`` to the ``waferflow`` parser."""
    p = sub.add_parser(
        "evaluate", help="evaluate a model (any form) on labeled maps",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the shared evaluator over a labeled dataset and write DIR/metrics.json (overall accuracy,\n"
                    "balanced accuracy, macro-F1, ECE; per-class precision/recall/F1/support; confusion matrix),\n"
                    "DIR/confusion.png, DIR/curves.png (when the model dir has history.json) and DIR/gradcam.png\n"
                    "(PyTorch form). --form picks the model form; ONNX/TensorRT forms need --export / --trt.",
        epilog="examples:\n  waferflow evaluate --model runs/m1 --data data/split/test.npz --out runs/m1/eval\n"
               "  waferflow evaluate --model models:/wafer-defect-classifier@champion --data maps.npz --out eval",
    )
    p.add_argument("--model", required=True,
                   help="model dir (model.json + weights.pt), or a registered version: models:/NAME@ALIAS or "
                        "models:/NAME/VERSION (downloaded with its ONNX forms; the form defaults to the one it deploys)")
    p.add_argument("--data", required=True, help="labeled dataset .npz with the model's class names")
    p.add_argument("--out", required=True, help="output dir for metrics.json and the PNGs")
    p.add_argument("--form", choices=FORMS, default=None,
                   help="model form to evaluate (default: torch for a model dir, the version's deployment form for "
                        "models:/...)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI for models:/... (default: $MLFLOW_TRACKING_URI, else the store of "
                        "`waferflow run`: sqlite:///./waferflow_runs/mlflow.db)")
    p.add_argument("--export", help=f"export dir ({FP32_NAME} / {INT8_NAME} / the TTA graphs) for the onnx_* forms")
    p.add_argument("--trt", help="compile-trt output dir for the tensorrt_* forms")
    p.add_argument("--batch-size", type=int, default=256, help="maps per predictor call (default 256)")
    p.add_argument("--threads", type=int, default=None, help="torch / onnxruntime threads (default: library default)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: mean softmax over the flips/rotations the model was trained with "
                        "(8 dihedral views for WM-811K classes, 4 for seed20); any form, 1 view = no change")
    p.add_argument("--tta-rotations", type=float, nargs="+", default=(), metavar="DEG",
                   help="with --tta: also those views of each map turned by each angle (degrees), as the deployed "
                        "TTA graph of a model exported with tta_rotations does")
    p.add_argument("--gradcam-per-class", type=int, default=3,
                   help="maps per class in gradcam.png (default 3; 0 = no Grad-CAM)")
    p.set_defaults(func=run_evaluate)


def parse_models_uri(uri: str) -> tuple[str, str]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> ``(NAME, ALIAS or VERSION)``."""
    from waferflow.errors import ConfigError

    rest = uri[len("models:/"):]
    name, sep, ref = rest.rpartition("@") if "@" in rest else rest.rpartition("/")
    if not (sep and name and ref) or "/" in name or (sep == "/" and not ref.isdigit()):
        raise ConfigError(f"--model {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    return name, ref


def _registered(args: argparse.Namespace, tmp: str) -> None:
    """Download the registered version ``args.model`` names into ``tmp``; point ``args.model`` / ``args.export``
    at it and default ``args.form`` to the form the version deploys."""
    from waferflow.cli.registry import RUN_WORKDIR
    from waferflow.errors import RegistryError
    from waferflow.tracking import get_version, resolve_tracking_uri

    name, ref = parse_models_uri(args.model)
    workdir = RUN_WORKDIR if os.path.exists(os.path.join(RUN_WORKDIR, "mlflow.db")) else None
    uri = resolve_tracking_uri(args.tracking_uri, workdir)
    if uri.startswith("sqlite:///") and not os.path.exists(uri[len("sqlite:///"):]):
        raise RegistryError(f"no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI")
    info = get_version(uri, tmp, ref, name=name)
    if info is None:
        raise RegistryError(f"{args.model}: no registered model {name!r} with {ref!r} in {uri} "
                            "(see `waferflow registry list`)")
    args.form = args.form or info.tags.get("deployment_form") or "torch"
    print(f"[waferflow] {args.model} is version {info.version} (run {info.run_id}); evaluating form {args.form}")
    args.model_uri, args.model_version = args.model, info.version
    args.model, args.export = str(info.model_dir), args.export or str(info.export_dir)


def run_evaluate(args: argparse.Namespace) -> int:
    """Handler of ``waferflow evaluate``."""
    import tempfile

    if str(args.model).startswith("models:/"):
        with tempfile.TemporaryDirectory(prefix="waferflow-eval-") as tmp:
            _registered(args, tmp)
            return _evaluate(args)
    args.form = args.form or "torch"
    return _evaluate(args)


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from waferflow.config import atomic_write_json
    from waferflow.data.contract import load_dataset
    from waferflow.errors import ConfigError
    from waferflow.evaluation import evaluate
    from waferflow.export.exporter import verify_export_dir
    from waferflow.predictors import create_predictor
    from waferflow.models import load_model_dir, read_spec
    from waferflow.plots import gradcam_overlays, plot_confusion, plot_history

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    ds = load_dataset(args.data, require_labels=True)
    if args.form == "torch":
        model, spec = load_model_dir(args.model)
    else:  # another form needs only the spec (classes, preprocessing), not the torch module
        model, spec = None, read_spec(args.model)
    artifact = model
    if args.form.startswith("onnx"):
        if not args.export:
            raise ConfigError(f"--form {args.form} needs --export DIR (the output of `waferflow export`)")
        verify_export_dir(args.export)
        artifact = args.export
    elif args.form.startswith("tensorrt"):
        if not args.trt:
            raise ConfigError(f"--form {args.form} needs --trt DIR (the output of `waferflow compile-trt`)")
        artifact = args.trt
    tta = None
    if args.tta_rotations and not args.tta:
        raise ConfigError("--tta-rotations turn the maps of --tta; add --tta")
    if args.tta and args.form.endswith("_tta"):
        raise ConfigError(f"--form {args.form} already averages its views inside the ONNX graph; drop --tta")
    if args.tta:
        from waferflow.train.augment import model_symmetries

        tta = model_symmetries(spec, ds.meta.get("taxonomy"))
    pad = None
    if args.tta_rotations:
        from waferflow.predictors import rotation_pad

        pad = rotation_pad(spec)
    predict = create_predictor(args.form, artifact, threads=args.threads, tta=tta, tta_rotations=args.tta_rotations,
                               tta_pad=pad)
    form = f"{args.form}+tta{len(predict.views)}" if args.tta else args.form
    metrics = evaluate(predict, ds, spec, batch_size=args.batch_size, form=form)
    metrics["model_dir"] = str(Path(args.model).resolve())
    if getattr(args, "model_uri", None):  # a registered version: the download folder is gone afterwards
        metrics.update(model_dir=None, model_uri=args.model_uri, model_version=args.model_version)
    metrics["data"] = str(Path(args.data).resolve())
    out.mkdir(parents=True, exist_ok=True)
    plot_confusion(metrics, out / "confusion.png")
    hist = Path(args.model) / "history.json"
    if hist.is_file():
        plot_history(json.loads(hist.read_text()), out / "curves.png")
    if args.gradcam_per_class > 0 and args.form == "torch":
        gradcam_overlays(model, spec, ds, out / "gradcam.png", per_class=args.gradcam_per_class)
    atomic_write_json(out / "metrics.json", metrics)
    print(json.dumps({"form": form, **metrics["overall"], "out": str(out)}))
    return 0
