"""Evaluate stage: the one evaluator on a model folder, with KFP UI metrics."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from waferflow.components._images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_model(
    model: Input[Model],
    data: Input[Dataset],
    split: str,
    form: str,
    metrics_json: Output[Artifact],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
) -> NamedTuple("EvalResult", [("accuracy", float), ("macro_f1", float)]):
    """Evaluate ``model`` (PyTorch form) on ``data``; ``metrics_json`` is the evaluator's dict as ``metrics.json``.

    Args:
        model: A model folder (form "torch") or an export dir (forms "onnx_fp32", "onnx_int8", "onnx_fp32_tta",
            "onnx_int8_tta").
        data: A Dataset folder.
        split: Name of the split (recorded).
        form: Which form of the model to run.
    """
    import os
    from collections import namedtuple

    from waferflow.config import atomic_write_json
    from waferflow.data.contract import load_dataset
    from waferflow.errors import ConfigError
    from waferflow.evaluation import evaluate
    from waferflow.forms import EXPORT_FORMS
    from waferflow.export.onnx_export import onnx_spec, read_onnx_metadata
    from waferflow.models import load_model_dir
    from waferflow.orchestration.runtime import dataset_file, persist_metadata, stage, versions
    from waferflow.predictors import create_predictor, form_file

    name = model.metadata.get("candidate", "model")
    with stage("evaluate", model=name, split=split, form=form) as rec:
        ds = load_dataset(dataset_file(data.path), require_labels=True)
        if form == "torch":
            net, spec = load_model_dir(model.path)
            predict = create_predictor(form, net)
        elif form in EXPORT_FORMS:
            path = form_file(form, model.path)  # the one table of forms names the file
            spec = onnx_spec(read_onnx_metadata(path))  # the export's own preprocessing record
            predict = create_predictor(form, path)
        else:
            raise ConfigError(f"form must be torch or one of {', '.join(EXPORT_FORMS)}, got {form!r}")
        m = evaluate(predict, ds, spec, form=form)
        m["split"], m["candidate"] = split, name
        os.makedirs(metrics_json.path, exist_ok=True)
        atomic_write_json(os.path.join(metrics_json.path, "metrics.json"), m)
        ov = m["overall"]
        for k in ("accuracy", "balanced_accuracy", "macro_f1", "ece"):
            metrics.log_metric(f"{split}_{form}_{k}", float(ov[k]))
        confusion.log_confusion_matrix(list(m["class_names"]), [[int(v) for v in row] for row in m["confusion_matrix"]])
        persist_metadata(metrics, confusion)
        meta = {"candidate": name, "split": split, "form": form, "data_hash": data.metadata.get("data_hash", ""),
                "overall": ov, "versions": versions()}
        metrics_json.metadata.update(meta)
        rec.update(accuracy=ov["accuracy"], macro_f1=ov["macro_f1"])
    return namedtuple("EvalResult", ["accuracy", "macro_f1"])(float(ov["accuracy"]), float(ov["macro_f1"]))
