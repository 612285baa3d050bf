#!/bin/sh
# Builds a Debian bookworm base image without a registry: debootstrap (minbase) from Debian's
# packages, then `docker import`. The example environment's Dockerfiles start FROM it.
# Does nothing when the image is already on the engine.
#   scripts/debian-image.sh [IMAGE]   (default itproxy-example/bookworm:latest)
set -eu
IMAGE=${1:-itproxy-example/bookworm:latest}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    echo "$IMAGE is on the engine"
    exit 0
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
root=$(mktemp -d /var/tmp/itproxy-bookworm.XXXXXX)
trap 'rm -rf "$root"' EXIT INT TERM
echo "debootstrap --variant=minbase bookworm from $MIRROR"
debootstrap --variant=minbase bookworm "$root" "$MIRROR" >"$root.log" 2>&1 || {
    tail -20 "$root.log"
    rm -f "$root.log"
    exit 1
}
rm -f "$root.log"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# No recommends and no caches in the images built on it.
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' \
    >"$root/etc/apt/apt.conf.d/90itproxy-minimal"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    - "$IMAGE" >/dev/null
echo "$IMAGE imported"
