#!/usr/bin/env bash
# `make test-busy`: the whole suite, RUNS times in a row (default 2), with BURNERS CPU-bound processes
# (default 2: one per core of the club's 2-core CI machine) running beside it the whole time. The suite
# waits on observables with bounds, never on an idle machine: this is how that claim is checked.
#   deploy/ci/busy-test.sh            # 2 runs, 2 burners
#   RUNS=1 BURNERS=4 deploy/ci/busy-test.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
runs=${RUNS:-2}
burners=${BURNERS:-2}
pids=()
stop_burners() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_burners EXIT INT TERM
for _ in $(seq "$burners"); do
  python3 -c 'while True: pass' &
  pids+=("$!")
done
echo "=== ${burners} CPU burners running (pids ${pids[*]}); ${runs} runs of make test"
for run in $(seq "$runs"); do
  start=$(date +%s)
  echo "=== busy run ${run}/${runs}"
  make --no-print-directory test
  echo "=== busy run ${run}/${runs}: green in $(( $(date +%s) - start )) s"
done
