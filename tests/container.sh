#!/usr/bin/env bash
# The container test: builds the runtime image from docker/Dockerfile with podman and runs tests/container.rs
# against it (configuration from environment variables only, rows read back with `tail` inside the image, SIGTERM
# exit 0 within the grace period, a new container resuming from the stored LSN, the healthcheck, a non-root user).
# A documented command of its own (README, "Running in a container"), not part of tests/run.sh: it installs podman
# and builds a Debian base image from the Debian mirror (debootstrap), a few minutes on a fresh machine.
#
#   bash tests/container.sh            # as root on Debian 12; starts tests/infra if needed
#
# No image registry is reachable here, so the base image is made with debootstrap (cached in
# .infra/container/rootfs.tar) and the relay is compiled on the host (--build-arg BINARY=prebuilt): the runtime
# stage is the one users build.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BASE=localhost/debian:bookworm-minbase
IMAGE=localhost/outbox-relay:test

bash scripts/prerequisites.sh
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null || ! command -v runc >/dev/null; then
    echo "[container] installing podman, runc, debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi
# crun (podman's default runtime) refuses this kernel's hybrid cgroups, and the default ulimits cannot be raised in
# this sandbox.
if [[ ! -f /etc/containers/containers.conf ]] || ! grep -q 'runtime = "runc"' /etc/containers/containers.conf; then
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n' >/etc/containers/containers.conf
fi
if ! podman image exists "$BASE"; then
    cache="$ROOT/.infra/container"
    mkdir -p "$cache"
    if [[ ! -s "$cache/rootfs.tar" ]]; then
        echo "[container] debootstrap bookworm minbase (about 70 s)"
        rootfs=$(mktemp -d)
        debootstrap --variant=minbase bookworm "$rootfs" http://deb.debian.org/debian >"$cache/debootstrap.log" 2>&1 \
            || { tail -20 "$cache/debootstrap.log"; exit 1; }
        tar -C "$rootfs" -cf "$cache/rootfs.tar.part" . && mv "$cache/rootfs.tar.part" "$cache/rootfs.tar"
        rm -rf "$rootfs"
    fi
    podman import "$cache/rootfs.tar" "$BASE" >/dev/null
fi

bash tests/infra/up.sh
cargo build --release --locked --bin outbox-relay
# The image's binary without the debug line tables the release profile keeps for profiling, as the Dockerfile's own
# build stage makes it.
mkdir -p target/container
objcopy --strip-debug target/release/outbox-relay target/container/outbox-relay
# --format docker keeps the HEALTHCHECK (the OCI image format has no field for it).
podman build --format docker --network host --build-arg BASE_IMAGE="$BASE" --build-arg BINARY=prebuilt \
    --build-arg PREBUILT=target/container/outbox-relay -t "$IMAGE" -f docker/Dockerfile .
OUTBOX_RELAY_IMAGE="$IMAGE" cargo test --release --locked --test container -- --ignored --nocapture
