"""Bounded retries with exponential backoff for MLflow / S3 calls.

Only errors that look transient (connection refused, timeouts, 5xx from the server or its artifact proxy) are
retried; anything else (a missing version, a bad parameter) is raised at once, unchanged. After the last attempt
a :class:`~waferflow.errors.RegistryError` names the URI and says how to fix it.

MLflow's own HTTP client retries too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with a long backoff); the
CLI sets it to 0 unless the user set it, so that this policy is the one bound on how long a call can hang.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

from waferflow.errors import RegistryError

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT_TEXT = (
    "max retries exceeded", "connection refused", "connection reset", "connection aborted",
    "failed to establish a new connection", "timed out", "timeout", "temporarily unavailable",
    "could not connect to the endpoint", "endpointconnectionerror", "remote end closed", "bad gateway",
    "service unavailable", "internal server error", "500 server error", "502", "503", "504",
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry.

    Attributes:
        attempts: Total tries (>= 1).
        base_delay_s: Delay before the 2nd try; doubles each time.
        max_delay_s: Cap on one delay.
    """

    attempts: int = 4
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.base_delay_s < 0 or self.max_delay_s < 0:
            raise ValueError(f"invalid RetryPolicy {self}: attempts >= 1 and delays >= 0")

    def delays(self) -> list[float]:
        return [min(self.base_delay_s * 2 ** i, self.max_delay_s) for i in range(self.attempts - 1)]


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: network failures and server-side (5xx / INTERNAL_ERROR) failures."""
    from waferflow.errors import WaferflowError

    if isinstance(exc, WaferflowError):  # our own errors say what is wrong; their text may hold "503" in a path
        return False
    try:
        import requests

        if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout)):
            return True
    except ImportError:  # pragma: no cover
        pass
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import EndpointConnectionError

        if isinstance(exc, (EndpointConnectionError, BotoConnectionError)):
            return True
    except ImportError:  # pragma: no cover
        pass
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        if exc.error_code in ("TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"):
            return True
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS", "INVALID_PARAMETER_VALUE",
                              "PERMISSION_DENIED", "UNAUTHENTICATED", "INVALID_STATE"):
            return False
    text = f"{type(exc).__name__}: {exc}".lower()
    return any(t in text for t in _TRANSIENT_TEXT)


def with_retries(fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` until it succeeds, retrying transient errors with exponential backoff.

    Args:
        fn: A no-argument callable.
        what: What is being done, for the error message ("register model version").
        uri: The tracking URI (named in the error).
        policy: Attempts and delays; default :class:`RetryPolicy()`.
        sleep: Injected for tests.

    Raises:
        RegistryError: The call still failed with a transient error after ``policy.attempts`` tries.
        Exception: A non-transient error, unchanged, on the first occurrence.
    """
    policy = policy or RetryPolicy()
    delays = policy.delays()
    for attempt in range(policy.attempts):
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e):
                raise
            if attempt == policy.attempts - 1:
                raise RegistryError(
                    f"{what} failed after {policy.attempts} attempt(s) against MLflow at {uri}: "
                    f"{type(e).__name__}: {_short(e)}. Check that the MLflow server is running and reachable "
                    "(set --tracking-uri or MLFLOW_TRACKING_URI), and that its artifact store (S3/MinIO: "
                    "bucket, MLFLOW_S3_ENDPOINT_URL, AWS_* credentials on the server) is reachable."
                ) from e
            log.warning("%s failed (attempt %d/%d, retrying in %.2fs): %s", what, attempt + 1,
                        policy.attempts, delays[attempt], _short(e))
            sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


def _short(e: BaseException, n: int = 400) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[:n] + "..."
