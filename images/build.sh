#!/usr/bin/env bash
# Build a waferflow component image with Docker (BuildKit).
#
#   images/build.sh [--registry PREFIX] [--base IMAGE] [--gpu] [--docker PATH]
#
# Steps on a machine with no reachable container registry (this one):
#   1. a Debian bookworm root filesystem made with debootstrap (python3.11 + venv + CA certificates), imported
#      as localhost/waferflow-base:bookworm with `docker import` (skipped when that image exists);
#   2. a build context with requirements.txt (the pins of [project].dependencies) and the project wheel;
#   3. `DOCKER_BUILDKIT=1 docker build --network host` with the host CA bundle as the build secret `cacert`.
#      The dependency layer (torch and every runtime pin) is cached until those pins or the Dockerfile change;
#      a code change only reinstalls the wheel (seconds).
# With a registry at hand, pass --base docker.io/library/python:3.11.11-slim-bookworm to skip step 1.
# The Docker CLI needs BuildKit's --secret: Debian's /usr/bin/docker (docker.io) has it; override with --docker.
# Prints JSON with the image tag, size and build seconds at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY="${WAFERFLOW_IMAGE_REGISTRY:-localhost}"
BASE=""
KIND=cpu
DOCKER="${DOCKER:-}"
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) REGISTRY="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --gpu) KIND=gpu; shift ;;
    --docker) DOCKER="$2"; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -z "$DOCKER" ]; then
  if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER="$(command -v docker || true)"; fi
fi
[ -n "$DOCKER" ] || { echo "build.sh: no docker CLI: apt-get install -y docker.io debootstrap" >&2; exit 2; }
"$DOCKER" info >/dev/null 2>&1 || { echo "build.sh: the Docker daemon does not answer; start it, e.g." \
  "dockerd --iptables=false --ip6tables=false --bridge=none --storage-driver=overlay2 &" >&2; exit 2; }
PY="${PYTHON:-.venv/bin/python}"
VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
TAG="${REGISTRY%/}/waferflow-${KIND}:${VERSION}"
t0=$(date +%s)

# Step 1: base image.
if [ -z "$BASE" ]; then
  BASE=localhost/waferflow-base:bookworm
  if ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
    ROOTFS="$(mktemp -d /tmp/waferflow-rootfs.XXXXXX)"
    echo "build.sh: debootstrap bookworm into $ROOTFS (a few minutes) ..." >&2
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates,passwd bookworm "$ROOTFS" http://deb.debian.org/debian >/tmp/waferflow-debootstrap.log
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
    tar -C "$ROOTFS" -c . | "$DOCKER" import --change 'CMD ["/bin/bash"]' - "$BASE" >/dev/null
    rm -rf "$ROOTFS"
  fi
fi

# Step 2: context with the runtime pins and the wheel.
CTX="$(mktemp -d /tmp/waferflow-ctx.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
"$PY" -m pip wheel --quiet --no-deps -w "$CTX/dist" .
# only the runtime pins key the dependency layer: test extras or tool settings in pyproject.toml do not rebuild it
"$PY" -c 'import sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
print("\n".join(d for d in deps if not d.startswith(("torch==", "torchvision=="))))' > "$CTX/requirements.txt"
cp "images/Dockerfile.${KIND}" "$CTX/Dockerfile"

# Step 3: build.
ARGS=(--network host --build-arg "BASE_IMAGE=$BASE" --build-arg "WAFERFLOW_VERSION=$VERSION" -t "$TAG" -f "$CTX/Dockerfile")
[ -f /etc/ssl/certs/ca-certificates.crt ] && ARGS+=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
if [ "$KIND" = cpu ] && ! curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
  echo "build.sh: download.pytorch.org is unreachable; torch comes from PyPI (the CUDA build, several GB larger)" >&2
  ARGS+=(--build-arg "TORCH_INDEX_URL=")
fi
DOCKER_BUILDKIT=1 "$DOCKER" build "${ARGS[@]}" "$CTX"
t1=$(date +%s)
SIZE=$("$DOCKER" image inspect "$TAG" --format '{{.Size}}')
printf '{"image": "%s", "size_bytes": %s, "size_gb": %.2f, "build_seconds": %d, "base": "%s"}\n' \
  "$TAG" "$SIZE" "$(echo "$SIZE / 1000000000" | bc -l)" "$((t1 - t0))" "$BASE"
