"""The library proper never imports kfp; only components, pipelines and orchestration launchers do."""

import subprocess
from pathlib import Path
import sys

LIBRARY = [
    "waferflow", "waferflow.config", "waferflow.errors", "waferflow.profiles", "waferflow.data.contract",
    "waferflow.evaluation", "waferflow.gates", "waferflow.models", "waferflow.predictors", "waferflow.train",
    "waferflow.export",
    "waferflow.tracking", "waferflow.drift", "waferflow.orchestration", "waferflow.orchestration.runtime",
    "waferflow.orchestration.local", "waferflow.orchestration.cluster", "waferflow.orchestration.mlflow_steps",
    "waferflow.orchestration.retrain", "waferflow.cli",
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


def test_every_component_file_holds_one_component_and_every_component_has_its_cluster_needs():
    """components/: one KFP component per file (ZenML's one step per file), and pipelines/_cluster.py's TASKS
    table says what each one needs on a cluster (the one place images, Secret, retries and caching are set)."""
    import ast
    import importlib

    from kfp.dsl.base_component import BaseComponent

    from waferflow.pipelines._cluster import TASKS

    folder = Path(importlib.import_module("waferflow.components").__file__).parent
    names = set()
    for f in sorted(folder.glob("*.py")):
        if f.name.startswith("_"):
            continue
        decorated = [n.name for n in ast.walk(ast.parse(f.read_text(encoding="utf-8")))
                     if isinstance(n, ast.FunctionDef) and any("component" in ast.unparse(d) for d in n.decorator_list)]
        assert len(decorated) == 1, f"{f.name} holds {decorated}: one component per file"
        comp = getattr(importlib.import_module(f"waferflow.components.{f.stem}"), decorated[0])
        assert isinstance(comp, BaseComponent)
        names.add(comp.component_spec.name)
    assert names == set(TASKS), f"components without a TASKS entry: {names - set(TASKS)}; stale: {set(TASKS) - names}"


def test_placing_a_component_the_table_does_not_know_is_refused():
    import pytest
    from kfp import dsl

    from waferflow.pipelines._cluster import place
    from waferflow.profiles import ClusterOptions

    @dsl.component(base_image="python:3.11")
    def unknown_step() -> str:
        return "x"

    @dsl.pipeline(name="p")
    def p():
        with pytest.raises(KeyError, match="TASKS has no entry for component 'unknown-step'"):
            place(unknown_step(), ClusterOptions())

    assert p is not None


def test_every_library_package_is_in_the_wheel():
    """pyproject.toml lists packages by hand: a new package missing there works in the editable install and the
    tests, and fails in the images (a ModuleNotFoundError inside a containerized task)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root / "src").parts) for p in (root / "src").rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
