"""MLflow clients whose calls retry transient errors, the tracking URI, and a scoped global URI.

Retries (with :mod:`tenacity`): only errors that look transient (connection refused, timeouts, 5xx or 429 from the
server or its artifact proxy) are retried, with exponential backoff; anything else (a missing version, a bad
parameter) is raised at once, unchanged. After the last attempt a :class:`~waferflow.errors.RegistryError` names
the URI and says how to fix it.

MLflow's own HTTP client retries too (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with a long backoff); the
CLI sets it to 0 unless the user set it, so that this policy is the one bound on how long a call can hang.

Everything else goes through an explicit tracking URI: :class:`RetryingClient` wraps an ``MlflowClient`` bound to
it. Only the calls that need mlflow's global state (``mlflow.onnx.log_model`` and ``mlflow.pyfunc.log_model`` need
an active run; ``models:/<id>`` URIs resolve through the global URI) run inside :func:`global_tracking_uri`, which
sets it with the public ``mlflow.set_tracking_uri`` and restores the previous value afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import tenacity

from waferflow.errors import RegistryError

T = TypeVar("T")
log = logging.getLogger(__name__)

_TRANSIENT_TEXT = (
    "max retries exceeded", "connection refused", "connection reset", "connection aborted",
    "failed to establish a new connection", "timed out", "timeout", "temporarily unavailable",
    "could not connect to the endpoint", "endpointconnectionerror", "remote end closed", "bad gateway",
    "service unavailable", "internal server error", "500 server error", "502", "503", "504",
)
# 503, 504, 429 (twice)
_TRANSIENT_CODES = ("TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED")
_GLOBAL_URI_LOCK = threading.Lock()


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
    """True for errors worth retrying: network failures and server-side (5xx / 429 / INTERNAL_ERROR) failures."""
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
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, MlflowException):
        if exc.error_code in _TRANSIENT_CODES:
            return True
        if exc.error_code == "INVALID_STATE":
            return False
        status = exc.get_http_status_code()
        if 400 <= status < 500:  # the request is wrong (missing, exists, invalid, denied): retrying cannot help
            return False
        if isinstance(exc, RestException) and status >= 500:  # the server answered 5xx
            return True
        # a local MlflowException defaults to INTERNAL_ERROR whatever went wrong: judged by its text below
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

    def warn(state: tenacity.RetryCallState) -> None:
        log.warning("%s failed (attempt %d/%d, retrying in %.2fs): %s", what, state.attempt_number,
                    policy.attempts, state.next_action.sleep, _short(state.outcome.exception()))

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=tenacity.wait_exponential(multiplier=policy.base_delay_s, exp_base=2, min=0, max=policy.max_delay_s),
        retry=tenacity.retry_if_exception(is_transient), sleep=sleep, before_sleep=warn)
    try:
        return retrying(fn)
    except tenacity.RetryError as re:
        e = re.last_attempt.exception()
        raise RegistryError(
            f"{what} failed after {policy.attempts} attempt(s) against MLflow at {uri}: "
            f"{type(e).__name__}: {_short(e)}. Check that the MLflow server is running and reachable "
            "(set --tracking-uri or MLFLOW_TRACKING_URI), and that its artifact store (S3/MinIO: "
            "bucket, MLFLOW_S3_ENDPOINT_URL, AWS_* credentials on the server) is reachable."
        ) from e


def _short(e: BaseException, n: int = 400) -> str:
    s = " ".join(str(e).split())
    return s if len(s) <= n else s[:n] + "..."


def client_for(uri: str):
    """An ``MlflowClient`` bound to ``uri`` for both tracking and registry (its calls are not retried)."""
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


class RetryingClient:
    """An ``MlflowClient`` (``raw``) bound to ``uri``, and the one retry policy its calls go through.

    ``c.call("read parent run", c.raw.get_run, run_id)`` retries transient errors under ``retry``; ``what`` names
    the call in the error ("read parent run failed after 4 attempt(s) against MLflow at ..."). A best-effort call
    that must not retry uses ``c.raw`` directly.
    """

    def __init__(self, uri: str, retry: RetryPolicy | None = None, raw: Any = None) -> None:
        self.uri = uri
        self.retry = retry
        self.raw = raw if raw is not None else client_for(uri)

    def with_policy(self, retry: RetryPolicy | None) -> RetryingClient:
        """The same client under another policy."""
        return RetryingClient(self.uri, retry, self.raw)

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)``, retried; ``what`` names it in the error."""
        return with_retries(lambda: fn(*args, **kwargs), what=what, uri=self.uri, policy=self.retry)


def resolve_tracking_uri(uri: str | None = None, workdir: str | os.PathLike | None = None) -> str:
    """The tracking URI: ``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<workdir>/mlflow.db``.

    Args:
        uri: Explicit URI (``http://host:5000``, ``sqlite:///...``).
        workdir: Folder for the embedded store; defaults to the current directory. Artifacts of the embedded
            store go to ``<workdir>/mlartifacts``.
    """
    if uri:
        return str(uri)
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    wd = Path(workdir or os.getcwd()).resolve()
    wd.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{wd / 'mlflow.db'}"


def artifact_root_for(uri: str) -> str | None:
    """``<db folder>/mlartifacts`` (as a file URI) for an embedded sqlite store; None for a server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


@contextlib.contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Point mlflow's global (fluent) tracking and registry URI at ``uri`` for the body, then restore them.

    Uses only ``mlflow.set_tracking_uri`` / ``mlflow.set_registry_uri``; the previous values (unset included) and
    the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` environment are put back exactly, so nothing leaks into
    later :func:`resolve_tracking_uri` calls or subprocesses. Serialised: one scoped URI at a time.
    """
    import mlflow

    env_keys = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    with _GLOBAL_URI_LOCK:
        old_env = {k: os.environ.get(k) for k in env_keys}
        old_t = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        old_t = None if old_t == old_env["MLFLOW_TRACKING_URI"] else old_t  # None: follows the environment
        old_r = mlflow.get_registry_uri()
        old_r = None if old_r == mlflow.get_tracking_uri() else old_r  # None: follows the tracking URI
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            for k in env_keys:
                os.environ.pop(k, None)
            mlflow.set_tracking_uri(old_t)
            mlflow.set_registry_uri(old_r)
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@contextlib.contextmanager
def active_run(uri: str, run_id: str) -> Iterator[Any]:
    """``run_id`` as mlflow's active run against ``uri`` (for ``mlflow.<flavor>.log_model``)."""
    import mlflow

    with global_tracking_uri(uri), mlflow.start_run(run_id=run_id, nested=True) as run:
        yield run
