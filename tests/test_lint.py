"""ruff, with the settings in pyproject.toml, over the whole project: CI runs it as part of the suite."""

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = Path(sys.executable).with_name("ruff")
    if exe.is_file():
        return [str(exe)]
    found = shutil.which("ruff")
    assert found, "ruff is not installed: it is pinned in the test extra (pip install -e '.[test]')"
    return [found]


def test_ruff_passes():
    out = subprocess.run([*_ruff(), "check", "--no-cache", str(ROOT)], capture_output=True, text=True, timeout=300,
                         cwd=ROOT)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


def test_ruff_would_catch_an_undefined_name(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    return undefined_name\n")
    out = subprocess.run([*_ruff(), "check", "--no-cache", "--config", str(ROOT / "pyproject.toml"), str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and "F821" in out.stdout
