"""Registry test fixtures (builders and server handles live in wfreg_helpers.py)."""

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from wfreg_helpers import Servers, build_candidate  # noqa: E402



@pytest.fixture(scope="module", autouse=True)
def _mlflow_env():
    """Fast failure instead of mlflow's own 7 retries with long backoff (our RetryPolicy is the retry layer);
    no artifact progress bars. Only for this area's modules, undone after each."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        mp.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow sqlite database with the schema already migrated (migrations cost ~10 s each time)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()
    return db


@pytest.fixture(scope="session")
def candidate_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return build_candidate(tmp_path_factory.mktemp("cand"))


@pytest.fixture(scope="session")
def plot_png(tmp_path_factory) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = tmp_path_factory.mktemp("plots") / "curves.png"
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1, 2], [1.0, 0.5, 0.3])
    fig.savefig(p)
    plt.close(fig)
    return p


@pytest.fixture
def local_uri(tmp_path) -> str:
    from waferflow.tracking import resolve_tracking_uri

    return resolve_tracking_uri(None, tmp_path)


@pytest.fixture(scope="session")
def servers(tmp_path_factory, empty_store):
    import shutil

    srv = Servers(tmp_path_factory.mktemp("servers"))
    shutil.copy(empty_store, srv.db)
    try:
        srv.start_s3()
        srv.start_mlflow()
        yield srv
    finally:
        srv.stop_all()
