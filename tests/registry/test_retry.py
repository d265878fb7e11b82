"""Bounded retries with backoff, and a clear error for an unreachable MLflow."""

import os
import time

import pytest
import requests
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import ErrorCode
from wfreg_helpers import free_port

from waferflow.errors import RegistryError
from waferflow.tracking import RetryPolicy, start_pipeline_run, with_retries
from waferflow.tracking.client import is_transient


def test_transient_errors_are_retried_with_exponential_backoff():
    calls, slept = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise requests.exceptions.ConnectionError("Connection refused")
        return "ok"

    out = with_retries(flaky, what="x", uri="http://h:1", policy=RetryPolicy(4, 0.5, 8.0), sleep=slept.append)
    assert out == "ok" and len(calls) == 3 and slept == [0.5, 1.0]


def test_gives_up_after_attempts_with_uri_and_fix():
    slept = []

    def down():
        raise requests.exceptions.ConnectionError("Max retries exceeded ... Connection refused")

    with pytest.raises(RegistryError) as ei:
        with_retries(down, what="create run", uri="http://127.0.0.1:9", policy=RetryPolicy(3, 0.1, 0.15),
                     sleep=slept.append)
    msg = str(ei.value)
    assert "create run failed after 3 attempt(s)" in msg and "http://127.0.0.1:9" in msg
    assert "MLFLOW_TRACKING_URI" in msg and "MLFLOW_S3_ENDPOINT_URL" in msg
    assert slept == [0.1, 0.15]  # capped at max_delay_s


def test_non_transient_errors_are_not_retried():
    calls = []

    def missing():
        calls.append(1)
        raise MlflowException("Registered Model with name=x not found", error_code="RESOURCE_DOES_NOT_EXIST")

    with pytest.raises(MlflowException):
        with_retries(missing, what="x", uri="u", sleep=lambda s: None)
    assert len(calls) == 1
    assert not is_transient(ValueError("bad value"))
    from waferflow.errors import ModelFormatError
    assert not is_transient(ModelFormatError("model /tmp/tmpx503ab/model.onnx is unreadable"))  # ours: never retried
    assert is_transient(MlflowException("API request to http://h failed with exception Max retries exceeded"))


def test_policy_is_validated():
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_unreachable_mlflow_is_a_bounded_clear_failure():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(RegistryError) as ei:
        start_pipeline_run(uri, retry=RetryPolicy(attempts=3, base_delay_s=0.05))
    assert time.monotonic() - t0 < 20
    assert uri in str(ei.value) and "after 3 attempt(s)" in str(ei.value)


class _FlakyMlflowClient:
    """Stands in for MlflowClient: fails ``fails`` times with ``error``, then answers."""

    def __init__(self, error: Exception, fails: int):
        self.error, self.fails, self.calls = error, fails, 0

    def get_run(self, run_id):
        self.calls += 1
        if self.calls <= self.fails:
            raise self.error
        return run_id


def test_retrying_client_retries_5xx_and_429_but_not_4xx():
    from waferflow.tracking.client import RetryingClient

    for code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):  # 503, 429
        raw = _FlakyMlflowClient(MlflowException("server busy", error_code=ErrorCode.Value(code)), fails=2)
        c = RetryingClient("http://h:1", RetryPolicy(3, 0.0), raw=raw)
        assert c.call("read run", raw.get_run, "r1") == "r1" and raw.calls == 3
    for code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # 404, 400: at once, unchanged
        raw = _FlakyMlflowClient(MlflowException("no such run", error_code=ErrorCode.Value(code)), fails=5)
        c = RetryingClient("http://h:1", RetryPolicy(3, 0.0), raw=raw)
        with pytest.raises(MlflowException, match="no such run"):
            c.call("read run", raw.get_run, "r1")
        assert raw.calls == 1
    raw = _FlakyMlflowClient(RestException({"error_code": "INTERNAL_ERROR", "message": "db hiccup"}), fails=1)
    c = RetryingClient("http://h:1", RetryPolicy(3, 0.0), raw=raw)
    assert c.call("read run", raw.get_run, "r1") == "r1" and raw.calls == 2  # a 500 from the server
    raw = _FlakyMlflowClient(requests.exceptions.ConnectionError("Connection refused"), fails=5)
    with pytest.raises(RegistryError, match=r"^read run failed after 2 attempt\(s\) against MLflow at http://h:1"
                       ) as ei:
        RetryingClient("http://h:1", RetryPolicy(2, 0.0), raw=raw).call("read run", raw.get_run, "r1")
    assert raw.calls == 2 and "\n" not in str(ei.value)  # one line


def test_global_tracking_uri_is_restored_exactly(tmp_path, monkeypatch):
    import mlflow

    from waferflow.tracking.client import global_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_tracking_uri(None)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with global_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri and mlflow.get_registry_uri() == uri
    assert not mlflow.is_tracking_uri_set() and "MLFLOW_TRACKING_URI" not in os.environ
    assert "MLFLOW_REGISTRY_URI" not in os.environ
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://elsewhere:5000")
    with global_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri
    assert mlflow.get_tracking_uri() == "http://elsewhere:5000" == os.environ["MLFLOW_TRACKING_URI"]
