"""The artifact layout of a candidate run, and reading it back (downloads, JSON files, logged ONNX models)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from waferflow.errors import ModelFormatError, RegistryError
from waferflow.tracking.client import RetryingClient, RetryPolicy, global_tracking_uri, with_retries

# Run artifacts that the registry reads back (model card, get_champion).
INFO_DIR = "waferflow"
MODEL_DIR_ARTIFACT = "model_dir"
EXPORT_ARTIFACT = "export"
MODEL_DIR_FILES = ("model.json", "weights.pt", "config.yaml", "history.json", "self_training.json")
EXPORT_FILES = ("export.json", "latency.json")
CONFIG_ARTIFACT = "config/resolved_config.json"  # the candidate's training config, as log_candidate logs it
PREDICTIONS_FILE = "test_predictions.json"
TAG_LOGGED_MODEL = "waferflow.logged_model."  # + form -> model id
TAG_PYFUNC_FORM = "waferflow.pyfunc_form"  # the ONNX form inside the raw-map pyfunc


def download_run_artifacts(tracking_uri: str, run_id: str, artifact_path: str, dest: str | os.PathLike,
                           retry: RetryPolicy | None = None) -> Path:
    """Download ``artifact_path`` of a run into ``dest`` (atomic: temp folder, then rename)."""
    from mlflow.artifacts import download_artifacts

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        got = with_retries(lambda: download_artifacts(run_id=run_id, artifact_path=artifact_path,
                                                      dst_path=str(tmp), tracking_uri=tracking_uri),
                           what=f"download {artifact_path}", uri=tracking_uri, policy=retry)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(got, dest)
    except Exception as e:
        if isinstance(e, (RegistryError, ModelFormatError)):
            raise
        from mlflow.exceptions import MlflowException

        if isinstance(e, (MlflowException, OSError)):
            raise RegistryError(f"could not download '{artifact_path}' of run {run_id} from {tracking_uri}: "
                                f"{e}") from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def read_run_jsons(c: RetryingClient, run_id: str, rels: list[str]) -> dict[str, dict | None]:
    """JSON artifacts of a run by relative path (None where the run has no such file); each folder is listed
    once, whatever the number of files read from it."""
    present: set[str] = set()
    for folder in sorted({rel.rpartition("/")[0] for rel in rels}):
        listing = c.call(f"list {folder or 'artifacts'}", c.raw.list_artifacts, run_id, folder or None)
        present.update(f.path for f in listing)
    out: dict[str, dict | None] = {}
    with tempfile.TemporaryDirectory() as td:
        for rel in rels:
            if rel not in present:
                out[rel] = None
                continue
            local = c.call(f"download {rel}", c.raw.download_artifacts, run_id, rel, td)
            out[rel] = json.loads(Path(local).read_text())
    return out


def download_logged_onnx(c: RetryingClient, model_id: str, dest: Path) -> None:
    """The ``model.onnx`` of logged model ``model_id`` into ``dest``."""
    import mlflow

    def dl() -> str:
        with global_tracking_uri(c.uri):  # ``models:/<id>`` resolves through the global tracking URI
            return mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_id}", dst_path=td)

    with tempfile.TemporaryDirectory(dir=dest.parent) as td:
        got = Path(c.call(f"download model {model_id}", dl))
        src = got / "model.onnx"
        if not src.is_file():
            raise RegistryError(f"logged model {model_id} has no model.onnx; it was not logged by waferflow")
        os.replace(src, dest)
