"""One contender of the three-process lock trial (run by test_lock.py, not collected by pytest).

Usage: python lock_worker.py URI NAME VERSION MARKER_DIR LEASE_S STALL_ROUNDS

Takes the promotion lock ``ROUNDS`` times; in the rounds listed in STALL_ROUNDS it sleeps past the lease before
its fenced section, so a waiter breaks the lock. Inside the fenced section (after ``check()`` passed, until the
alias move is done) it holds the marker file ``MARKER_DIR/inside`` (created with O_EXCL): finding it already there
means two holders were inside at once, which is written to ``MARKER_DIR/violations``. Then it promotes VERSION
with ``promote_if_passing``, retrying when its lock was lost. Prints one JSON line with what happened.
"""

import json
import os
import sys
import time

ROUNDS = 3


def _enter(marker_dir: str, who: str) -> None:
    try:
        fd = os.open(os.path.join(marker_dir, "inside"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.write(fd, who.encode())
        os.close(fd)
    except FileExistsError:
        with open(os.path.join(marker_dir, "violations"), "a") as f:
            f.write(f"{who} entered while {open(os.path.join(marker_dir, 'inside')).read()} was inside\n")


def _leave(marker_dir: str, who: str) -> None:
    p = os.path.join(marker_dir, "inside")
    try:
        if open(p).read() == who:
            os.remove(p)
    except FileNotFoundError:
        pass


def main() -> None:
    uri, name, version, marker_dir, lease_s, stalls = sys.argv[1:7]
    lease_s, stalls = float(lease_s), {int(x) for x in stalls.split(",") if x}
    from mlflow.tracking import MlflowClient

    from waferflow import tracking
    from waferflow.errors import RegistryError
    from waferflow.gates import GateReport
    from waferflow.tracking import lock

    lock.DEFAULT_LEASE_S = lease_s
    who = f"v{version}/pid{os.getpid()}"
    orig_check, orig_set = lock.LockHandle.check, MlflowClient.set_registered_model_alias

    def check(self):
        orig_check(self)
        _enter(marker_dir, who)

    def set_alias(self, *a, **k):
        try:
            return orig_set(self, *a, **k)
        finally:
            _leave(marker_dir, who)

    lock.LockHandle.check, MlflowClient.set_registered_model_alias = check, set_alias
    log = {"who": who, "lost": 0, "sections": 0}
    for r in range(ROUNDS):
        try:
            with lock.promotion_lock(uri, name, owner=who, timeout_s=60, poll_s=0.05) as h:
                if r in stalls:
                    time.sleep(lease_s + 0.5)
                h.check()
                time.sleep(0.05)  # the "alias move"
                _leave(marker_dir, who)
                log["sections"] += 1
        except RegistryError as e:
            assert "lost" in str(e), e
            log["lost"] += 1
    for _attempt in range(10):
        try:
            res = tracking.promote_if_passing(uri, version, GateReport(results=()), name=name, lock_timeout_s=60)
            log["promoted"], log["reason"] = res.promoted, res.reason
            break
        except RegistryError as e:
            assert "lost" in str(e), e
            log["lost"] += 1
    print(json.dumps(log), flush=True)


if __name__ == "__main__":
    main()
