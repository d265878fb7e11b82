#!/usr/bin/env bash
# Build the waferflow CPU image with podman (no Docker engine, no registry needed).
#
#   images/build.sh [--registry PREFIX] [--base IMAGE] [--no-base] [--gpu]
#
# Steps on a machine with neither a Docker engine nor a reachable container registry (this one):
#   1. a Debian bookworm root filesystem made with debootstrap (python3.11 + venv + CA certificates),
#      imported as localhost/waferflow-base:bookworm with `podman import`;
#   2. the project wheel built from the working tree into a temporary build context;
#   3. `podman build --isolation chroot` with the machine's CA bundle as the build secret `cacert`;
#      torch comes from the PyTorch CPU index when it is reachable, else from local wheel folders
#      (/opt/wheels, /opt/pypi*/files when present) bind-mounted read-only into the build;
#   4. runtime settings podman needs inside an unprivileged container here (runc, cgroupfs, explicit
#      ulimits) written to /etc/containers/containers.conf when that file has no [containers] ulimits yet.
# With a registry at hand, pass --base docker.io/library/python:3.11.11-slim-bookworm to skip step 1.
# Prints JSON with the image tag, size and build seconds at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
REGISTRY="${WAFERFLOW_IMAGE_REGISTRY:-localhost}"
BASE=""
KIND=cpu
while [ $# -gt 0 ]; do
  case "$1" in
    --registry) REGISTRY="$2"; shift 2 ;;
    --base) BASE="$2"; shift 2 ;;
    --gpu) KIND=gpu; shift ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
command -v podman >/dev/null || { echo "build.sh: podman is missing: apt-get install -y podman debootstrap" >&2; exit 2; }
command -v runc >/dev/null || { echo "build.sh: runc is missing (containers.conf selects it): apt-get install -y runc" >&2; exit 2; }
PY="${PYTHON:-.venv/bin/python}"
VERSION="$("$PY" -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')"
TAG="${REGISTRY%/}/waferflow-${KIND}:${VERSION}"
t0=$(date +%s)

# Step 4: runtime config (idempotent; only adds what is missing).
CONF=/etc/containers/containers.conf
if [ -w /etc/containers ] || [ -w "$CONF" ]; then
  if ! grep -q '^\s*runtime\s*=' "$CONF" 2>/dev/null; then
    cat >> "$CONF" <<'CONF'
[containers]
default_ulimits = ["nproc=8192:8192", "nofile=16384:16384"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
    echo "build.sh: wrote runtime runc, cgroupfs and ulimits to $CONF" >&2
  fi
fi

# Step 1: base image.
if [ -z "$BASE" ]; then
  BASE=localhost/waferflow-base:bookworm
  if ! podman image exists "$BASE"; then
    command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing: apt-get install -y debootstrap" >&2; exit 2; }
    ROOTFS="$(mktemp -d /tmp/waferflow-rootfs.XXXXXX)"
    echo "build.sh: debootstrap bookworm into $ROOTFS (a few minutes) ..." >&2
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,python3-lib2to3,python3-pip-whl,python3-setuptools-whl,ca-certificates,passwd bookworm "$ROOTFS" http://deb.debian.org/debian >/tmp/waferflow-debootstrap.log
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/*
    tar -C "$ROOTFS" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE"
    rm -rf "$ROOTFS"
  fi
fi

# Step 2: context with the wheel.
CTX="$(mktemp -d /tmp/waferflow-ctx.XXXXXX)"
trap 'rm -rf "$CTX"' EXIT
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$CTX/dist" .
cp "images/Dockerfile.${KIND}" "$CTX/Dockerfile"

# Step 3: build.
ARGS=(--isolation chroot --build-arg "BASE_IMAGE=$BASE" --build-arg "WAFERFLOW_VERSION=$VERSION" -t "$TAG" -f "$CTX/Dockerfile")
[ -f /etc/ssl/certs/ca-certificates.crt ] && ARGS+=(--secret id=cacert,src=/etc/ssl/certs/ca-certificates.crt)
if [ "$KIND" = cpu ] && ! curl -fsS -m 10 -o /dev/null https://download.pytorch.org/whl/cpu/torch/ 2>/dev/null; then
  links=""
  for d in /opt/wheels /opt/pypi/files /opt/pypi-more/files; do
    if [ -d "$d" ]; then ARGS+=(-v "$d:/wheelhouse$d:ro"); links="$links /wheelhouse$d"; fi
  done
  echo "build.sh: download.pytorch.org is unreachable; torch ${KIND} comes from PyPI/local wheels:${links:- none}" >&2
  ARGS+=(--build-arg "TORCH_INDEX_URL=" --build-arg "PIP_FIND_LINKS=${links# }")
fi
podman build "${ARGS[@]}" "$CTX"
t1=$(date +%s)
SIZE=$(podman image inspect "$TAG" --format '{{.Size}}')
printf '{"image": "%s", "size_bytes": %s, "size_gb": %.2f, "build_seconds": %d, "base": "%s"}\n' \
  "$TAG" "$SIZE" "$(echo "$SIZE / 1000000000" | bc -l)" "$((t1 - t0))" "$BASE"
