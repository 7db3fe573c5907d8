#!/usr/bin/env bash
# The Docker end-to-end stage of `make test`: make sure an engine runs (installing Debian's docker.io,
# docker-compose and debootstrap when missing, starting dockerd when none runs), build the images
# offline, run tests/docker against the compose desk and the compose cluster (3 nats nodes, two of
# every service), tear everything down.
#
# It skips, saying so loudly, only where no engine can start at all; it never reports a pass for
# tests that did not run.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf '\n=== docker stage: %s\n' "$*"; }
skip() {
    say "SKIPPED — $*"
    echo "docker stage: 0 passed, 0 failed (skipped: no Docker engine could start here)"
    exit 0
}

started_dockerd=""
cleanup() {
    if [ -n "$started_dockerd" ]; then
        say "stopping the dockerd this stage started (pid $started_dockerd)"
        kill "$started_dockerd" 2>/dev/null || true
        wait "$started_dockerd" 2>/dev/null || true
    fi
}
trap cleanup EXIT

need_install=""
for tool in docker dockerd debootstrap; do command -v "$tool" >/dev/null || need_install=1; done
command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need_install=1
if [ -n "$need_install" ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        skip "Docker is not installed and this user cannot install it (needs root and apt-get)"
    fi
    say "installing docker.io, docker-compose and debootstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq || skip "apt-get update failed"
    apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null || skip "apt-get install of docker.io failed"
fi

if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" = 0 ] || skip "no Docker engine is running and only root can start dockerd"
    say "starting dockerd"
    log=$(mktemp /tmp/dockerd.XXXXXX.log)
    dockerd >"$log" 2>&1 &
    started_dockerd=$!
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && break
        kill -0 "$started_dockerd" 2>/dev/null || { tail -20 "$log"; started_dockerd=""; skip "dockerd exited at start (log above)"; }
        sleep 1
    done
    docker info >/dev/null 2>&1 || { tail -20 "$log"; skip "dockerd did not answer within 60 s (log above)"; }
fi
say "engine: $(docker info --format '{{.ServerVersion}}, storage {{.Driver}}, cgroups v{{.CgroupVersion}}')"

say "building the images offline (make build OFFLINE=1)"
make --no-print-directory build OFFLINE=1

say "running tests/docker: the compose desk (compose.yaml) and the compose cluster (compose.cluster.yaml)"
.venv/bin/python -m pytest -q -p no:cacheprovider tests/docker
