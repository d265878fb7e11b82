import sys
from pathlib import Path

import pytest

# The fake KFP server and the manifest/docker helpers sit beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(scope="session")
def cpu_image(tmp_path_factory):
    """The CPU image tag, with a Docker daemon to run it (see docker_setup.py); skips where Docker is missing."""
    from docker_setup import build_image, ensure_daemon

    logs = tmp_path_factory.mktemp("docker")
    proc = ensure_daemon(logs / "dockerd.log")
    try:
        yield build_image(logs / "build.log")
    finally:
        if proc is not None:  # only the daemon this set-up started
            proc.terminate()
            proc.wait(timeout=60)
