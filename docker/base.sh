#!/usr/bin/env bash
# Build the offline base image (Debian bookworm + Python 3 + git + tini) from Debian packages.
#
# For machines with no image registry (this project's CI): mmdebstrap assembles a root
# filesystem from the Debian mirror apt already uses, and `docker import` turns it into an image.
# With a registry, skip this and pass a public Python image as the Dockerfile's BASE instead.
#
# usage: docker/base.sh [TAG]   (default fsm-agent-base:bookworm)
set -euo pipefail
tag="${1:-fsm-agent-base:bookworm}"
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "base image $tag exists"
    exit 0
fi
packages=python3,python3-venv,git,tini,ca-certificates,util-linux,procps
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mmdebstrap --quiet --variant=minbase --include="$packages" bookworm "$work/rootfs.tar"
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' "$work/rootfs.tar" "$tag" >/dev/null
echo "base image $tag built"
