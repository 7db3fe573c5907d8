#!/usr/bin/env bash
# Make a Debian bookworm base image with Python 3.11 without any container registry:
# debootstrap --variant=minbase into a folder, then `docker import`. About 40 s on a warm mirror.
#
#   deploy/offline/make-base-image.sh [IMAGE]        (default IMAGE: quantdesk/base:bookworm)
#
# The Debian mirror is the one this machine's apt already uses (DEBIAN_MIRROR overrides it).
# Needs root (debootstrap) and a running Docker engine.
set -euo pipefail

image="${1:-quantdesk/base:bookworm}"

if docker image inspect "$image" >/dev/null 2>&1 && [ -z "${REBUILD:-}" ]; then
    echo "base image $image already present (REBUILD=1 to make it again)"
    exit 0
fi

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
    # deb822 sources first, then the one-line format
    mirror=$(awk '/^URIs:/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
fi
if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
    mirror=$(awk '$1 == "deb" && $0 !~ /security/ {for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) {print $i; exit}}' /etc/apt/sources.list)
fi
if [ -z "$mirror" ]; then
    echo "no Debian mirror found in apt's sources; set DEBIAN_MIRROR" >&2
    exit 1
fi
command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }

rootfs=$(mktemp -d /tmp/quantdesk-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap bookworm from $mirror into $rootfs"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$mirror" >/dev/null
# Slim it: no apt lists, docs or caches in the image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8 PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["/bin/bash"]' - "$image" >/dev/null
echo "made $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
