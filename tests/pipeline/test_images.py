"""The Dockerfiles' pins match pyproject.toml; the images run as non-root with a version-tied tag."""

import re
import tomllib
from pathlib import Path

import pytest

from waferflow import __version__
from waferflow.profiles import get_profile

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"


def _pins() -> dict[str, str]:
    proj = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = list(proj["dependencies"]) + [d for group in proj["optional-dependencies"].values() for d in group]
    out = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^;\s]+)", d.strip())
        assert m, f"pyproject dependency {d!r} is not pinned with =="
        out[m.group(1).split("[")[0].lower()] = m.group(2)
    out["waferflow"] = proj["version"]
    return out


def _args(dockerfile: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S*)$", dockerfile.read_text(), flags=re.M))


ARG_TO_PACKAGE = {"TORCH_VERSION": "torch", "TORCHVISION_VERSION": "torchvision", "WAFERFLOW_VERSION": "waferflow",
                  "TENSORRT_VERSION": "tensorrt", "ONNXRUNTIME_GPU_VERSION": "onnxruntime-gpu"}


@pytest.mark.parametrize("name,expected", [
    ("Dockerfile.cpu", {"TORCH_VERSION", "TORCHVISION_VERSION", "WAFERFLOW_VERSION"}),
    ("Dockerfile.gpu", {"TORCH_VERSION", "TORCHVISION_VERSION", "WAFERFLOW_VERSION", "TENSORRT_VERSION",
                        "ONNXRUNTIME_GPU_VERSION"}),
])
def test_dockerfile_pins_match_pyproject(name, expected):
    pins = _pins()
    args = _args(IMAGES / name)
    assert expected <= set(args), f"{name} lacks ARGs {expected - set(args)}"
    for arg in expected:
        assert args[arg] == pins[ARG_TO_PACKAGE[arg]], f"{name}: {arg}={args[arg]} but pyproject pins {pins[ARG_TO_PACKAGE[arg]]}"
    assert args["WAFERFLOW_VERSION"] == __version__
    text = (IMAGES / name).read_text()
    base = args["BASE_IMAGE"]
    assert ":" in base and not base.endswith(":latest"), f"{name}: base image {base} must carry a fixed tag"
    assert re.search(r"^USER 10001:10001$", text, flags=re.M), f"{name} must switch to a non-root user"
    # the project comes in as the wheel, with its exact pins
    assert "waferflow-${WAFERFLOW_VERSION}-py3-none-any.whl" in text
    assert "PIP_NO_CACHE_DIR=1" in text


def test_build_script_uses_docker_buildkit_host_network_and_the_ca_secret():
    sh = (IMAGES / "build.sh").read_text()
    assert 'DOCKER_BUILDKIT=1 "$DOCKER" build' in sh and "--network host" in sh
    assert "id=cacert,src=/etc/ssl/certs/ca-certificates.crt" in sh
    assert "debootstrap" in sh and '"$DOCKER" import' in sh
    # the dependency layer is cached apart from the project wheel, so a code change rebuilds in seconds
    cpu = (IMAGES / "Dockerfile.cpu").read_text()
    assert cpu.index("COPY requirements.txt") < cpu.index("COPY dist/") and "--no-deps" in cpu
    # no `# syntax=` line: it would pull a frontend image from a registry
    assert not cpu.startswith("# syntax=")


def test_profile_image_tags_follow_the_package_version():
    c = get_profile("full", ["cluster.image_registry=reg.io/team/"]).cluster
    assert c.image("cpu") == f"reg.io/team/waferflow-cpu:{__version__}"
    assert c.image("gpu") == f"reg.io/team/waferflow-gpu:{__version__}"
