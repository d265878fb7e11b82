"""The fenced promotion lock: tokens, server-clock leases, and a three-process trial with a short lease."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from waferflow import tracking as R
from waferflow.errors import RegistryError
from waferflow.gates import GateReport
from waferflow.tracking import client_for
from waferflow.tracking import lock as L

WORKER = Path(__file__).with_name("lock_worker.py")
TEST_HASH = "ab" * 32


@pytest.fixture
def uri(tmp_path, empty_store) -> str:
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path}/mlflow.db"


def test_broken_holder_is_fenced_and_cannot_release_the_new_holder(uri):
    a = L.acquire(uri, "m", owner="a", lease_s=1.0, margin_s=0.3)
    a.check()
    time.sleep(1.2)  # a stalls past its lease (by the registry's clock)
    b = L.acquire(uri, "m", owner="b", lease_s=30.0, timeout_s=10)
    assert b.epoch == a.epoch + 1
    with pytest.raises(RegistryError, match="lost: the lock '.*' was deleted|lost: the lock was broken"):
        a.check()
    a.release()  # a no-op: the lock a held is gone, b's is untouched
    b.check()
    with pytest.raises(RegistryError, match="holds the lock"):
        L.acquire(uri, "m", owner="c", timeout_s=0.3)
    b.release()
    with pytest.raises(RegistryError, match="no longer carries this holder's token"):
        b.check()
    L.acquire(uri, "m", owner="c", timeout_s=5).release()


def test_holder_stops_when_its_lease_is_about_to_run_out(uri):
    a = L.acquire(uri, "m", owner="a", lease_s=1.0, margin_s=0.5)
    time.sleep(0.6)
    with pytest.raises(RegistryError, match=r"lease runs out .*champion was not moved"):
        a.check()


def test_expiry_is_judged_on_the_server_clock_not_the_waiters(uri, monkeypatch):
    held = L.acquire(uri, "m", owner="a", lease_s=60.0)
    # the waiter's own clock runs far ahead; only the store's timestamps may count (with the embedded SQLite store
    # the store runs in this process, so only the lock module's view of the clock is skewed)
    fake = type("Clock", (), {"time": staticmethod(lambda: 1e12), "monotonic": staticmethod(time.monotonic),
                              "sleep": staticmethod(time.sleep)})
    monkeypatch.setattr(L, "time", fake)
    with pytest.raises(RegistryError, match="holds the lock"):
        L.acquire(uri, "m", owner="b", timeout_s=0.3)
    held.check()


def test_bad_lease_is_refused(uri):
    with pytest.raises(RegistryError, match="margin_s < lease_s"):
        L.acquire(uri, "m", owner="a", lease_s=1.0, margin_s=2.0)


def test_promotion_stops_before_the_alias_move_when_the_lock_was_broken(uri):
    c = client_for(uri)
    c.create_registered_model("m")
    v = c.create_model_version("m", source=str(Path(uri[10:]).parent), tags={"metric.accuracy": "0.9"}).version

    def stall_and_break():
        time.sleep(0.4)
        L.acquire(uri, "m", owner="intruder", lease_s=30.0, timeout_s=5)

    L.DEFAULT_LEASE_S, old = 0.3, L.DEFAULT_LEASE_S
    try:
        with pytest.raises(RegistryError, match="lost"):
            R.promote_if_passing(uri, v, GateReport(results=()), name="m", _before_move=stall_and_break)
    finally:
        L.DEFAULT_LEASE_S = old
    assert R.champion_version(uri, name="m") is None
    assert R.audit_history(uri, name="m")[-1]["status"] == "failed"


def _versions(uri: str, name: str, accuracies: list[float]) -> list[str]:
    c = client_for(uri)
    c.create_registered_model(name)
    src = str(Path(uri[len("sqlite:///"):]).parent)
    return [str(c.create_model_version(name, source=src, tags={
        "metric.accuracy": str(a), "metric.macro_f1": str(a - 0.05), "test_data_hash": TEST_HASH}).version)
            for a in accuracies]


def test_three_processes_short_lease_never_two_inside_and_best_wins(uri, tmp_path):
    name, lease = "m3", 2.0
    accs = [0.95, 0.97, 0.96]
    versions = _versions(uri, name, accs)
    marks = tmp_path / "marks"
    marks.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WAFERFLOW_PROGRESS": "0"}
    stalls = ["0", "1", ""]  # two contenders stall past the lease once, so their locks get broken
    procs = [subprocess.Popen([sys.executable, str(WORKER), uri, name, str(v), str(marks), str(lease), s],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for v, s in zip(versions, stalls)]
    logs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        logs.append(json.loads(out.strip().splitlines()[-1]))
    violations = (marks / "violations").read_text() if (marks / "violations").exists() else ""
    assert violations == "", violations
    assert not (marks / "inside").exists()
    assert sum(x["lost"] for x in logs) >= 2, logs  # both stalled holders were fenced off
    assert R.champion_version(uri, name=name) == versions[accs.index(max(accs))], logs
