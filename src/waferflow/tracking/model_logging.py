"""MLflow models and inputs of a run: the ONNX models (signature + input example), the raw-map pyfunc, datasets.

``mlflow.onnx.log_model`` and ``mlflow.pyfunc.log_model`` need an active run: they run inside
:func:`~waferflow.tracking.client.active_run`, which scopes mlflow's global URI with its public setters. Datasets
go through ``MlflowClient.log_inputs`` with the run id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from waferflow.errors import ModelFormatError
from waferflow.tracking.client import active_run, client_for
from waferflow.tracking.manifest import split_manifests


def example_input(spec: Mapping[str, Any]):
    """One clean, preprocessed wafer (a disk of passing dies), shaped [1, C, S, S] like ``preprocess`` makes."""
    import numpy as np

    s, cch = int(spec["input_size"]), int(spec.get("in_chans", 1))
    yy, xx = np.mgrid[:s, :s]
    r = (s - 1) / 2
    disk = ((yy - r) ** 2 + (xx - r) ** 2 <= (0.45 * s) ** 2).astype(np.float32) * 0.5  # value 1 (pass) / 2
    mean = np.asarray(spec.get("mean", [0.0] * cch), np.float32).reshape(cch, 1, 1)
    std = np.asarray(spec.get("std", [1.0] * cch), np.float32).reshape(cch, 1, 1)
    return ((np.repeat(disk[None], cch, 0) - mean) / std)[None].astype(np.float32)


def log_onnx(uri: str, run_id: str, onnx_path: Path, form: str, spec: Mapping[str, Any]) -> str:
    """Log one ONNX file as an MLflow model (signature + input example); returns the logged model id."""
    import mlflow
    import numpy as np
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    try:
        model = onnx.load(str(onnx_path))
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - any load failure means a bad file
        raise ModelFormatError(f"{onnx_path} is not a loadable ONNX model ({e}); re-run waferflow export") from None
    x = example_input(spec)
    in_name = sess.get_inputs()[0].name
    y = sess.run(None, {in_name: x})[0]
    if y.shape != (1, int(spec["num_classes"])):
        raise ModelFormatError(f"{onnx_path} returns shape {y.shape}, model.json says {spec['num_classes']} "
                               "classes; re-export the model")
    sig = infer_signature({in_name: x}, np.asarray(y))
    with active_run(uri, run_id):
        # explicit requirements: mlflow's inference of them spawns a subprocess and costs seconds per model
        info = mlflow.onnx.log_model(model, name=form, signature=sig, input_example={in_name: x},
                                     save_as_external_data=False, onnx_execution_providers=["CPUExecutionProvider"],
                                     pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={ort.__version__}",
                                                       f"numpy=={np.__version__}"])
    return info.model_id


def _dataset_source(origin: str):
    """An MLflow dataset source for a manifest's ``source``: a local file for a path, else the generator."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    if origin.startswith("/") or origin.startswith("file:"):
        return resolve_dataset_source(origin if origin.startswith("file:") else Path(origin).as_uri())
    return CodeDatasetSource(tags={"origin": origin})


def _dataset_input(ds, context: str, tags: Mapping[str, str]):
    """The ``DatasetInput`` that ``mlflow.log_input(ds, context=context, tags=tags)`` logs."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    d = ds.to_dict()
    entity = Dataset(name=d["name"], digest=d["digest"], source_type=d["source_type"], source=d["source"],
                     schema=d.get("schema"), profile=d.get("profile"))
    input_tags = [InputTag(key=k, value=v) for k, v in tags.items()] + [InputTag(MLFLOW_DATASET_CONTEXT, context)]
    return DatasetInput(dataset=entity, tags=input_tags)


def log_datasets(tracking_uri: str, run_id: str, manifest: Mapping[str, Any]) -> list[str]:
    """Log every split of ``manifest`` as an input dataset of ``run_id`` (``MlflowClient.log_inputs``).

    Each split is a dataset named ``<split>`` whose digest is the split's content hash, with the input tag
    ``mlflow.data.context`` = the split; its source is the origin of the whole dataset (the user's file, or
    the synthetic generator). Returns the splits logged.
    """
    from mlflow.data.meta_dataset import MetaDataset

    splits = split_manifests(manifest)
    origin = str(manifest.get("source") or "unknown")
    c = client_for(tracking_uri)
    for name, m in splits.items():
        ds = MetaDataset(_dataset_source(origin), name=name, digest=str(m.get("content_sha256", "unknown"))[:16])
        tags = {"n_maps": str(m.get("n_maps", "?")), "content_sha256": str(m.get("content_sha256", "unknown"))}
        c.log_inputs(run_id, datasets=[_dataset_input(ds, name, tags)])
    return list(splits)


def log_pyfunc(tracking_uri: str, run_id: str, onnx_path: str | Path, spec_path: str | Path,
               name: str = "pyfunc") -> str:
    """Log the raw-map pyfunc (:class:`waferflow.tracking.pyfunc.WaferMapClassifier`) around ``onnx_path`` and ``model.json`` into ``run_id``; returns the model id.

    The input example (two maps of different sizes) is checked by MLflow on logging, so a model that cannot
    answer raw maps fails here, not in a reviewer's hands.
    """
    import mlflow
    import numpy as np
    import onnxruntime as ort

    from waferflow.tracking.pyfunc import CODE_FILE, ONNX_ARTIFACT, SPEC_ARTIFACT, example_maps

    spec = json.loads(Path(spec_path).read_text())
    with active_run(tracking_uri, run_id):
        info = mlflow.pyfunc.log_model(
            # models from code: loading rebuilds the model from _pyfunc_code.py, nothing is unpickled
            name=name, python_model=str(CODE_FILE), input_example=example_maps(spec),
            artifacts={ONNX_ARTIFACT: str(onnx_path), SPEC_ARTIFACT: str(spec_path)},
            # explicit requirements: inferring them spawns a subprocess and costs seconds
            pip_requirements=[f"onnxruntime=={ort.__version__}", f"numpy=={np.__version__}",
                              f"mlflow=={mlflow.__version__}", "waferflow"])
    return info.model_id
