"""What both peer scripts share (stdlib only: they run in bench/.venv-peers): the command line and the
peak RSS. ``python bench/peers/<peer>.py --data FILE [...]`` prints the run's JSON line."""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from typing import Any

Run = Callable[[list[str], int, int, int], dict[str, Any]]


def peak_rss_mb() -> float:
    """This program's peak RSS: VmHWM of /proc/self/status (its own memory since exec). Not
    ``ru_maxrss``: Linux carries the forking parent's peak over into it at exec, so a child of a big
    parent would report the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(run: Run, doc: str, argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="desk CSV files, one symbol each")
    parser.add_argument("--fast", type=int, default=10)
    parser.add_argument("--slow", type=int, default=30)
    parser.add_argument("--size", type=int, default=10)
    args = parser.parse_args(argv)
    print(json.dumps(run(args.data, args.fast, args.slow, args.size)), flush=True)
    return 0
