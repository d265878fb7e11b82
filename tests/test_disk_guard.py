"""The suite stops at once, with the reason, on a disk too full to hold it (tests/conftest.py)."""

import os
import subprocess
import sys
from pathlib import Path


def test_a_full_disk_stops_the_suite_before_any_test_with_the_reason(tmp_path):
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "WAFERFLOW_TEST_MIN_FREE_GIB": "1000000000"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-n0", "-p", "no:cacheprovider", "--basetemp",
                        str(tmp_path / "bt"), "tests/test_boundaries.py"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 3, r.stdout[-2000:]
    assert "GiB free under" in r.stdout and "point TMPDIR (or --basetemp) at a bigger disk" in r.stdout
    assert " passed" not in r.stdout
