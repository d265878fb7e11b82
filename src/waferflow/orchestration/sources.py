"""Where a pipeline task finds its maps, and how a task hands files to pods that cannot see its disk.

On one machine a data source is a path. On a cluster it is one of:
- ``s3://BUCKET/KEY`` (S3 or MinIO: the endpoint comes from ``$MLFLOW_S3_ENDPOINT_URL``, the keys from
  ``$AWS_ACCESS_KEY_ID``/``$AWS_SECRET_ACCESS_KEY``, which the pipeline Secret provides); a key that ends in
  ``/`` is a folder (e.g. PNG folders per class) and is downloaded whole;
- an MLflow artifact URI (``runs:/ID/PATH``, ``mlflow-artifacts:/...``), read through the tracking server;
- a path under a PersistentVolumeClaim mounted into the task (``cluster.data_pvc``).

No kfp import here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from waferflow.errors import DataError

#: the files of a drift decision's retrain plan that the retrain reads (profile keys of the same names)
RETRAIN_INPUTS = ("data", "pretrained", "unlabeled")
S3_PREFIX = "s3://"
MLFLOW_PREFIXES = ("runs:/", "models:/", "mlflow-artifacts:/")


def is_remote(source: str) -> bool:
    """Whether ``source`` is an S3 or MLflow URI (not a path)."""
    return source.startswith((S3_PREFIX, *MLFLOW_PREFIXES))


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``.

    Raises:
        DataError: Not an ``s3://bucket/...`` URI.
    """
    body = uri[len(S3_PREFIX):] if uri.startswith(S3_PREFIX) else ""
    bucket, _, key = body.partition("/")
    if not bucket or not key:
        raise DataError(f"{uri!r} is not an S3 object URI; write s3://BUCKET/KEY (a key ending in / is a folder)")
    return bucket, key


def s3_client() -> Any:
    """A boto3 S3 client for ``$MLFLOW_S3_ENDPOINT_URL`` (MinIO) or AWS when it is unset."""
    import boto3

    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)


def _fetch_s3(uri: str, dest: Path) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3(uri)
    s3 = s3_client()
    try:
        if not key.endswith("/"):
            out = dest / Path(key).name
            s3.download_file(bucket, key, str(out))
            return out
        out = dest / Path(key.rstrip("/")).name
        n = 0
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(key):]
                if not rel or rel.endswith("/"):
                    continue
                target = out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, obj["Key"], str(target))
                n += 1
        if n == 0:
            raise DataError(f"{uri} holds no objects; check the prefix (aws s3 ls {uri} / mc ls)")
        return out
    except (ClientError, BotoCoreError) as e:
        raise DataError(f"cannot read {uri}: {e}. Check the URI, MLFLOW_S3_ENDPOINT_URL and that the task's "
                        "S3 user may read that bucket (the pipeline Secret's AWS_ACCESS_KEY_ID)") from None


def fetch_source(source: str, dest: str | os.PathLike, tracking_uri: str | None = None) -> Path:
    """Make ``source`` a local path: download an S3 or MLflow URI into ``dest``; check a path exists.

    Args:
        source: ``s3://...``, ``runs:/...``, ``models:/...``, ``mlflow-artifacts:/...`` or a path.
        dest: Download folder (created).
        tracking_uri: MLflow URI for MLflow sources (None = ``$MLFLOW_TRACKING_URI``).

    Returns:
        The local file or folder.

    Raises:
        DataError: The source cannot be read (the message says which and what to check).
    """
    if not source:
        raise DataError("empty data source; give a path, s3://BUCKET/KEY or runs:/RUN_ID/PATH")
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    if source.startswith(S3_PREFIX):
        return _fetch_s3(source, d)
    if source.startswith(MLFLOW_PREFIXES):
        from mlflow.artifacts import download_artifacts

        try:
            return Path(download_artifacts(artifact_uri=source, dst_path=str(d), tracking_uri=tracking_uri))
        except Exception as e:  # mlflow raises MlflowException, requests and boto errors
            raise DataError(f"cannot download {source} from MLflow ({type(e).__name__}: {str(e)[:200]}); check "
                            "MLFLOW_TRACKING_URI and the tracking credentials") from None
    p = Path(source)
    if not p.exists():
        raise DataError(f"data source {source} does not exist in this task. On a cluster, give s3://BUCKET/KEY, "
                        "runs:/RUN_ID/PATH, or a path under the PVC mounted with cluster.data_pvc")
    return p


def publish_retrain_inputs(plan: dict, run_id: str, tracking_uri: str) -> dict:
    """Upload a drift decision's retrain inputs (local files of the drift task) to its MLflow run.

    The retrain's pods cannot see the drift pod's disk; they read ``runs:/RUN_ID/retrain/...`` through the
    tracking server instead (``fetch_source`` for the data, the weights loader for the pretrained model).

    Args:
        plan: ``{"data": path or "", "pretrained": path or "", "unlabeled": path or "", ...}`` (``decision.json``'s
            ``retrain_plan``).
        run_id: The drift decision's MLflow run.
        tracking_uri: MLflow URI.

    Returns:
        The plan with ``data``, ``pretrained`` and ``unlabeled`` replaced by MLflow URIs (URIs given as input
        stay).
    """
    from mlflow import MlflowClient

    out = dict(plan)
    local = [k for k in RETRAIN_INPUTS if plan.get(k) and not is_remote(plan[k])]
    if not local:  # nothing to hand over: no client (an empty URI would open ./mlflow.db)
        return out
    client = MlflowClient(tracking_uri)
    for key in local:
        path = plan[key]
        p = Path(path)
        if p.is_dir():
            client.log_artifacts(run_id, str(p), artifact_path=f"retrain/{p.name}")
        else:
            client.log_artifact(run_id, str(p), artifact_path="retrain")
        out[key] = f"runs:/{run_id}/retrain/{p.name}"
    return out


def fingerprint(path: str | os.PathLike, flag: str = "--data") -> str:
    """sha256 of a file's bytes, or of a folder's relative paths and file bytes (sorted), for cache keys.

    Raises:
        DataError: The path does not exist (the message names ``flag``).
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{flag} {p} does not exist; give a .npz, an LSWMD.pkl or a folder of PNGs per class")
    h = hashlib.sha256()
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
