"""Shared test settings: CPU only, quiet plotting; the two longest tests first."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WAFERFLOW_PROGRESS", "0")
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("MLFLOW_REGISTRY_URI", None)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``run_first`` run first; the rest keep their order.

    ``./wf test`` spreads test files over one worker per core (pytest-xdist, ``--dist loadfile`` in pyproject.toml).
    The two longest tests (end-to-end pipeline runs, 4-6 minutes on two cores) start at once, one per worker, instead
    of last with one core idle. Only two are moved: a worker starts with two files, so a third long test moved up
    would queue behind the longest on the same worker; where it is, the first worker to free up takes it. Measured on
    two cores, the order changed nothing beyond noise (717.8 s against 721.3 s with xdist's own order; README).
    """
    items.sort(key=lambda item: item.get_closest_marker("run_first") is None)  # stable
