"""Bounded retries with backoff, and a clear error for an unreachable MLflow."""

import time

import pytest
import requests
from mlflow.exceptions import MlflowException
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
