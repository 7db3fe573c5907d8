#!/usr/bin/env bash
# One stage of `make test`: run it, then print how long it took (also when it fails).
#   deploy/ci/stage.sh NAME COMMAND [ARGS...]
set -uo pipefail
name=$1; shift
start=$(date +%s)
echo "=== stage ${name}"
"$@"
code=$?
echo "=== stage ${name}: $(( $(date +%s) - start )) s, exit ${code}"
exit "${code}"
