"""What both peer scripts share (stdlib only: they run in bench/.venv-peers): the command line and the
peak RSS. ``python bench/peers/<peer>.py --data FILE [...]`` prints the run's JSON line."""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from typing import Any

Run = Callable[..., dict[str, Any]]  # (files, fast, slow, size, **choices)


def peak_rss_mb() -> float:
    """This program's peak RSS: VmHWM of /proc/self/status (its own memory since exec). Not
    ``ru_maxrss``: Linux carries the forking parent's peak over into it at exec, so a child of a big
    parent would report the parent's size."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(run: Run, doc: str, argv: list[str] | None = None, choices: dict[str, list[str]] | None = None) -> int:
    """``choices``: a peer's own options, ``{"oms": ["netting", "hedging"]}`` -> ``--oms`` (default the first),
    passed to ``run`` as keyword arguments."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--data", nargs="+", required=True, help="desk CSV files, one symbol each")
    parser.add_argument("--fast", type=int, default=10)
    parser.add_argument("--slow", type=int, default=30)
    parser.add_argument("--size", type=int, default=10)
    for name, values in (choices or {}).items():
        parser.add_argument(f"--{name}", choices=values, default=values[0])
    args = parser.parse_args(argv)
    extra = {name: getattr(args, name) for name in choices or {}}
    print(json.dumps(run(args.data, args.fast, args.slow, args.size, **extra)), flush=True)
    return 0
