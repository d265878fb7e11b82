"""A fenced promotion lock on the MLflow model registry.

The only atomic primitive every MLflow backend offers is "create registered model fails when the name exists"
(a unique key in the database). The lock is built on it as a sequence of *epochs*:

* Epoch ``n`` is the registered model ``<name>.promotion-lock.<n>``, tagged with its holder's random ``token``
  and lease. Taking the lock creates epoch ``top + 1``; when two processes try, the database admits one.
* An epoch is free when its holder tagged it ``released`` or its lease ran out. Lease age is judged on the
  registry server's clock alone: the creation timestamp of the epoch (set by the server) is compared with the
  timestamp the server sets when it updates the probe model ``<name>.promotion-clock``. No local clock is read.
* Breaking a stale lock never deletes it; it creates the next epoch, so two waiters that both judge the same
  epoch stale cannot both win, and nobody can delete another holder's lock by name.
* Fencing: before the alias move the holder calls :meth:`LockHandle.check`, which refuses when its epoch was
  superseded, lost its token, or has less than ``margin_s`` of its lease left on the server's clock. Waiters break
  an epoch only after the full lease, so a holder that passed the check owns the lock for ``margin_s`` more
  seconds; the alias move must finish within that (the default margin is a quarter of the lease).
* Release tags the holder's own epoch ``released`` after checking its token; older epochs are deleted by the
  next holder (they can no longer pass a check).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterator

from waferflow.errors import RegistryError
from waferflow.tracking.client import RetryingClient, RetryPolicy

log = logging.getLogger(__name__)

LOCK_INFIX = ".promotion-lock."
CLOCK_SUFFIX = ".promotion-clock"
DEFAULT_LEASE_S = 300.0  # seconds; a crashed holder blocks promotions this long at most
TAG_TOKEN, TAG_LEASE, TAG_OWNER, TAG_RELEASED = "lock.token", "lock.lease_s", "lock.owner", "lock.released"


def _code(e: Exception) -> str:
    return getattr(e, "error_code", "")


def server_now_ms(c: RetryingClient, name: str) -> int:
    """The registry server's current time in ms: the timestamp it sets when it updates the probe model."""
    from mlflow.exceptions import MlflowException

    clock = name + CLOCK_SUFFIX
    for _ in range(3):
        try:
            rm = c.call("read the registry clock", c.raw.update_registered_model, clock,
                        description="waferflow promotion-lock clock probe")
            return int(rm.last_updated_timestamp)
        except MlflowException as e:
            if _code(e) != "RESOURCE_DOES_NOT_EXIST":
                raise
        with contextlib.suppress(MlflowException):
            c.raw.create_registered_model(clock, description="waferflow promotion-lock clock probe")
    raise RegistryError(f"could not create the clock model '{clock}' at {c.uri}")


def _epochs(c: RetryingClient, name: str) -> dict[int, Any]:
    """Existing lock epochs ``{n: RegisteredModel}`` of ``name``."""
    prefix = name + LOCK_INFIX
    found = c.call("list promotion-lock epochs", c.raw.search_registered_models,
                   filter_string=f"name LIKE '{prefix}%'", max_results=1000)
    out = {}
    for rm in found:
        tail = rm.name[len(prefix):]
        if rm.name.startswith(prefix) and tail.isdigit():
            out[int(tail)] = rm
    return out


def _is_free(rm: Any, now_ms: int) -> bool:
    if rm.tags.get(TAG_RELEASED) == "true":
        return True
    lease_ms = float(rm.tags.get(TAG_LEASE, "0") or 0) * 1000.0
    return now_ms - int(rm.creation_timestamp) > lease_ms


@dataclass
class LockHandle:
    """The held lock: epoch, token and the server timestamp it was taken at (``client`` retries its calls)."""

    client: RetryingClient
    name: str
    epoch: int
    token: str
    created_ms: int
    lease_s: float
    margin_s: float

    @property
    def lock_name(self) -> str:
        return f"{self.name}{LOCK_INFIX}{self.epoch}"

    def _lost_reason(self) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.call("read promotion lock", self.client.raw.get_registered_model, self.lock_name)
        except MlflowException:
            return f"the lock '{self.lock_name}' was deleted"
        if rm.tags.get(TAG_TOKEN) != self.token or rm.tags.get(TAG_RELEASED) == "true":
            return f"the lock '{self.lock_name}' no longer carries this holder's token"
        newer = [n for n in _epochs(self.client, self.name) if n > self.epoch]
        if newer:
            return f"the lock was broken and taken again (epoch {max(newer)})"
        age_s = (server_now_ms(self.client, self.name) - self.created_ms) / 1000.0
        if age_s > self.lease_s - self.margin_s:
            return (f"the lease runs out ({age_s:.1f}s held of {self.lease_s:g}s, by the registry's clock; "
                    f"{self.margin_s:g}s are kept for the alias move)")
        return None

    def check(self) -> None:
        """Refuse unless this holder still owns the lock with ``margin_s`` of lease left.

        Raises:
            RegistryError: the lock was broken, superseded or is about to expire; nothing must be moved.
        """
        why = self._lost_reason()
        if why:
            raise RegistryError(f"promotion lock of '{self.name}' lost: {why}; champion was not moved. Re-run the "
                                "promotion (raise lease_s if promotions take longer than the lease)")

    def release(self) -> None:
        """Tag this epoch released, only when it still carries this holder's token."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.raw.get_registered_model(self.lock_name)
        except MlflowException:
            return
        if rm.tags.get(TAG_TOKEN) == self.token:
            self.client.call("release promotion lock", self.client.raw.set_registered_model_tag, self.lock_name,
                             TAG_RELEASED, "true")


def _try_take(c: RetryingClient, name: str, epoch: int, token: str, owner: str, lease_s: float) -> Any | None:
    """Create epoch ``epoch``; None when another process created it first."""
    from mlflow.exceptions import MlflowException

    tags = {TAG_TOKEN: token, TAG_LEASE: repr(float(lease_s)), TAG_OWNER: owner, TAG_RELEASED: "false"}
    try:
        return c.call("take promotion lock", c.raw.create_registered_model, f"{name}{LOCK_INFIX}{epoch}", tags=tags,
                      description=f"waferflow promotion lock held by {owner} (pid {os.getpid()})")
    except MlflowException as e:
        # on a name clash the sqlalchemy store re-reads the model for its message; a concurrent delete makes that
        # read fail with RESOURCE_DOES_NOT_EXIST: contention either way
        if _code(e) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return None
        raise


def _delete_older(c: RetryingClient, name: str, epochs: dict[int, Any], below: int) -> None:
    from mlflow.exceptions import MlflowException

    for n in epochs:
        if n < below:
            with contextlib.suppress(MlflowException):
                c.raw.delete_registered_model(f"{name}{LOCK_INFIX}{n}")


def acquire(tracking_uri: str, name: str, *, owner: str, timeout_s: float = 60.0, lease_s: float = 300.0,
            margin_s: float | None = None, poll_s: float = 0.2, retry: RetryPolicy | None = None) -> LockHandle:
    """Take the promotion lock of ``name``; see the module docstring for the protocol.

    Raises:
        RegistryError: The lock stayed held for ``timeout_s``, or ``lease_s``/``margin_s`` are invalid.
    """
    margin_s = lease_s / 4.0 if margin_s is None else margin_s
    if lease_s <= 0 or not 0 < margin_s < lease_s:
        raise RegistryError(f"lease_s must be > 0 and 0 < margin_s < lease_s; got {lease_s}, {margin_s}")
    c = RetryingClient(tracking_uri, retry)
    token = uuid.uuid4().hex
    deadline = time.monotonic() + timeout_s
    while True:
        epochs = _epochs(c, name)
        top = max(epochs, default=0)
        released = not top or epochs[top].tags.get(TAG_RELEASED) == "true"
        now_ms = 0 if released else server_now_ms(c, name)
        if released or _is_free(epochs[top], now_ms):
            if not released:
                log.warning("breaking stale promotion lock %s%s%d of %s", name, LOCK_INFIX, top,
                            epochs[top].tags.get(TAG_OWNER, "?"))
            rm = _try_take(c, name, top + 1, token, owner, lease_s)
            if rm is not None:
                _delete_older(c, name, epochs, top)
                return LockHandle(c, name, top + 1, token, int(rm.creation_timestamp), lease_s, margin_s)
            continue
        if time.monotonic() > deadline:
            held = epochs[top]
            age_s = (now_ms - int(held.creation_timestamp)) / 1000.0
            raise RegistryError(
                f"another promotion of '{name}' holds the lock ({held.tags.get(TAG_OWNER, '?')}) for {age_s:.0f}s "
                f"at {tracking_uri}; wait and retry (it expires after its lease of "
                f"{held.tags.get(TAG_LEASE, '?')}s), or, if that promotion crashed, tag registered model "
                f"'{held.name}' {TAG_RELEASED}=true")
        time.sleep(poll_s)


@contextlib.contextmanager
def promotion_lock(tracking_uri: str, name: str, *, owner: str = "", timeout_s: float = 60.0,
                   lease_s: float | None = None, margin_s: float | None = None, poll_s: float = 0.2,
                   retry: RetryPolicy | None = None) -> Iterator[LockHandle]:
    """Mutual exclusion for alias moves on ``name``, across threads, processes and machines.

    Yields:
        The :class:`LockHandle`; call its ``check()`` right before every alias move. ``lease_s`` defaults to
        :data:`DEFAULT_LEASE_S`, read at call time.

    Raises:
        RegistryError: The lock stayed held for ``timeout_s``.
    """
    lease_s = DEFAULT_LEASE_S if lease_s is None else lease_s
    handle = acquire(tracking_uri, name, owner=owner or f"pid {os.getpid()}", timeout_s=timeout_s,
                     lease_s=lease_s, margin_s=margin_s, poll_s=poll_s, retry=retry)
    try:
        yield handle
    finally:
        try:
            handle.release()
        except Exception as e:  # noqa: BLE001 - the lease frees it; do not mask the body's error
            log.warning("could not release promotion lock %s (it expires after %ss): %s", handle.lock_name,
                        lease_s, e)
