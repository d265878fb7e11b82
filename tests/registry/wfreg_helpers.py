"""Helpers for the registry tests: tiny real artifacts (torch -> ONNX FP32/INT8, model dir, eval dicts) and real servers.

The servers are a moto S3 server and an ``mlflow server`` (sqlite backend, ``--serve-artifacts`` to
``s3://bucket/...`` on moto), both on 127.0.0.1 with free ports, started once per session, polled for readiness
with a bound, and always terminated.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

CLASSES = ["Center", "Donut", "Edge-Loc", "none"]
S = 16



def make_metrics(acc: float, n: int = 400, weak_class: str | None = None, weak_recall: float = 0.2,
                 seed: int = 0) -> dict:
    """A real eval dict (via metrics_from_logits) whose accuracy is about ``acc``."""
    from waferflow.evaluation import metrics_from_logits

    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    y = np.arange(n) % k
    pred = y.copy()
    wrong = rng.permutation(n)[: int(round((1 - acc) * n))]
    pred[wrong] = (y[wrong] + 1) % k
    if weak_class is not None:
        ci = CLASSES.index(weak_class)
        idx = np.flatnonzero(y == ci)
        bad = idx[: int(round((1 - weak_recall) * len(idx)))]
        pred[idx] = ci
        pred[bad] = (ci + 1) % k
    logits = np.full((n, k), -2.0)
    logits[np.arange(n), pred] = 3.0
    return metrics_from_logits(y, logits, CLASSES)


def make_latency(p99_int8: float = 3.0) -> dict:
    def form(p99):
        return {"p50_ms": p99 / 2, "p95_ms": p99 * 0.8, "p99_ms": p99, "throughput_maps_per_s": 1000 / p99,
                "batch_size": 64, "size_bytes": 1234}
    return {"forms": {"torch_eager": form(p99_int8 * 2), "onnx_fp32": form(p99_int8 * 1.5),
                      "onnx_int8": form(p99_int8), "onnx_fp32_tta": form(p99_int8 * 8),
                      "tensorrt_fp16": {"skipped": "skipped: no CUDA device"}},
            "threads": 1, "input_size": S}


def manifest(tag: str = "test") -> dict:
    counts = {c: 100 for c in CLASSES}
    return {"test": {"n_maps": 400, "class_counts": counts, "content_sha256": "ab" * 32},
            "train": {"n_maps": 1600, "class_counts": {c: 400 for c in CLASSES}, "content_sha256": "cd" * 32},
            "content_sha256": "ef" * 32, "source": f"synthetic:{tag}"}


def build_candidate(root: Path, strategy: str = "full_finetune", seed: int = 0) -> tuple[Path, Path]:
    """A real model dir (state dict + model.json) and export dir (ONNX FP32, dynamic INT8) of a tiny CNN."""
    import torch
    import yaml
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                            torch.nn.Flatten(), torch.nn.Linear(4, len(CLASSES))).eval()
    md, ed = root / "model", root / "export"
    md.mkdir(parents=True)
    ed.mkdir(parents=True)
    torch.save(m.state_dict(), md / "weights.pt")
    spec = {"backbone": "tinycnn", "num_classes": len(CLASSES), "class_names": CLASSES, "input_size": S,
            "in_chans": 1, "mean": [0.5], "std": [0.25], "taxonomy": None, "rotation_invariant": False,
            "weights_source": "random", "strategy": strategy, "data_hash": "cd" * 32, "weights_sha256": "00",
            "waferflow_version": "0.1.0", "created_utc": "2026-11-29T00:00:00Z"}
    (md / "model.json").write_text(json.dumps(spec))
    (md / "config.yaml").write_text(yaml.safe_dump({"epochs": 2, "optimizer": {"lr": 0.001, "name": "adamw"}}))
    (md / "history.json").write_text(json.dumps([
        {"epoch": e, "phase": "all", "train_loss": 1.0 / (e + 1), "val_loss": 1.1 / (e + 1),
         "val_accuracy": 0.5 + 0.1 * e, "val_macro_f1": 0.4 + 0.1 * e, "lr": 1e-3, "seconds": 0.1}
        for e in range(3)]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(m, (torch.zeros(2, 1, S, S),), str(ed / "model.onnx"), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        quantize_dynamic(str(ed / "model.onnx"), str(ed / "model.int8.onnx"), weight_type=QuantType.QInt8)
    (ed / "latency.json").write_text(json.dumps(make_latency()))
    (ed / "export.json").write_text(json.dumps({"parity": {"max_abs_diff": 0.0, "argmax_agreement": 1.0, "n": 2}}))
    return md, ed


# ------------------------------------------------------------------ real servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout_s: float, log: Path) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not ready after {timeout_s}s: {log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    """Stop a server started here (its own process group), SIGKILL after 5 s."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


class Servers:
    """Handles for the moto S3 and mlflow server processes."""

    def __init__(self, root: Path):
        self.root = root
        self.s3_port = free_port()
        self.s3_url = f"http://127.0.0.1:{self.s3_port}"
        self.db = root / "mlflow.db"
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.bucket = "waferflow-artifacts"
        self.env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1", "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
                    "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
        self.env.pop("MLFLOW_TRACKING_URI", None)
        self.s3: subprocess.Popen | None = None
        self.mlflow: subprocess.Popen | None = None

    def start_s3(self) -> None:
        log = self.root / "moto.log"
        self.s3 = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.s3_port)],
                                   stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env,
                                   start_new_session=True)
        wait_ready(self.s3_url + "/moto-api/", self.s3, 60, log)
        import boto3

        boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=self.bucket)

    def start_mlflow(self) -> None:
        log = self.root / "mlflow.log"
        self.mlflow = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.db}", "--serve-artifacts",
             "--artifacts-destination", f"s3://{self.bucket}/mlartifacts", "--workers", "1"],
            stdout=log.open("w"), stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        wait_ready(self.uri + "/health", self.mlflow, 240, log)

    def stop_all(self) -> None:
        stop(self.mlflow)
        stop(self.s3)


