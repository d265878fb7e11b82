"""Shared test settings: CPU only, quiet plotting; enough free disk; the two longest tests first."""

import os
import shutil
import tempfile

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WAFERFLOW_PROGRESS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)

#: free space the suite needs under its temporary folder: pytest's folder peaked at 1.1 GB on two workers (a
#: passing test's folder is removed at its teardown, pyproject.toml), plus MLflow stores and model exports
MIN_FREE_GIB = float(os.environ.get("WAFERFLOW_TEST_MIN_FREE_GIB", "3"))


def pytest_sessionstart(session):
    """Stop at once, saying why, when the disk cannot hold the run: a full disk otherwise shows as hundreds of
    unrelated setup errors."""
    if hasattr(session.config, "workerinput"):  # pytest-xdist workers: the controller has checked
        return
    where = session.config.option.basetemp or tempfile.gettempdir()
    while not os.path.isdir(where):
        where = os.path.dirname(os.path.abspath(where))
    free = shutil.disk_usage(where).free / 2**30
    if free < MIN_FREE_GIB:
        pytest.exit(f"only {free:.1f} GiB free under {where}; the test suite needs about {MIN_FREE_GIB:g} GiB. Free "
                    "some space, or point TMPDIR (or --basetemp) at a bigger disk (override: "
                    "WAFERFLOW_TEST_MIN_FREE_GIB)", returncode=3)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``run_first`` run first; the rest keep their order.

    ``./wf test`` spreads test files over one worker per core (pytest-xdist, ``--dist loadfile`` in pyproject.toml).
    The two longest tests (end-to-end pipeline runs, 4-6 minutes on two cores) start at once, one per worker, instead
    of last with one core idle. Only two are moved: a worker starts with two files, so a third long test moved up
    would queue behind the longest on the same worker; where it is, the first worker to free up takes it. Measured on
    two cores, the order changed nothing beyond noise (717.8 s against 721.3 s with xdist's own order;
    docs/MEASUREMENTS.md).
    """
    items.sort(key=lambda item: item.get_closest_marker("run_first") is None)  # stable
