"""The library proper never imports kfp; only components, pipelines and orchestration launchers do."""

import subprocess
import sys

LIBRARY = [
    "waferflow", "waferflow.config", "waferflow.errors", "waferflow.profiles", "waferflow.data.contract",
    "waferflow.evaluation", "waferflow.gates", "waferflow.models", "waferflow.predictors", "waferflow.train",
    "waferflow.export",
    "waferflow.tracking", "waferflow.drift", "waferflow.orchestration", "waferflow.orchestration.runtime",
    "waferflow.orchestration.local", "waferflow.orchestration.cluster", "waferflow.cli",
]


def _imports_kfp(modules: list[str]) -> set[str]:
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(k for k in sys.modules if k == 'kfp' or k.startswith('kfp.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return set(eval(out.stdout.strip().splitlines()[-1]))


def test_library_and_cli_import_without_kfp():
    assert _imports_kfp(LIBRARY) == set()


def test_cli_parser_builds_without_kfp():
    code = ("import sys\nfrom waferflow.cli import build_parser\nbuild_parser()\n"
            "print(any(k == 'kfp' or k.startswith('kfp.') for k in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_components_do_import_kfp():
    # the check above can fail: the KFP layer really imports kfp
    assert "kfp" in _imports_kfp(["waferflow.components.data"])
