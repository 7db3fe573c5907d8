"""``python -m bench [--quick] [--only orders,fanout,ledger,backtest] [--no-uvloop]``: run, print the table, write JSON."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import backtest, fanout, harness, ledger, orders
from bench.stats import Figure, render_table, report_json
from desk.bus.testing import nats_server_binary

RESULTS = Path(__file__).resolve().parent / "results"
SECTIONS = ("orders", "fanout", "ledger", "uvloop", "backtest")

FULL = {
    "orders": orders.Plan(
        sequential=2000, warmup=100, throughput_orders=3000, load_processes=2, concurrency=32, replicas=(1, 2, 4)
    ),
    "uvloop": orders.Plan(
        sequential=1000, warmup=100, throughput_orders=2000, load_processes=2, concurrency=32, replicas=(1,)
    ),
    "fanout": {"counts": (1, 10, 50), "duration": 6.0, "symbols": 50, "rate": 2000.0},
    "ledger": {"chunk": 20000, "budget_s": 70.0, "max_rows": 1_000_000},
    "backtest": backtest.FULL,
}
QUICK = {
    "orders": orders.Plan(
        sequential=200, warmup=20, throughput_orders=400, load_processes=2, concurrency=16, replicas=(1, 2)
    ),
    "uvloop": orders.Plan(
        sequential=100, warmup=10, throughput_orders=200, load_processes=1, concurrency=16, replicas=(1,)
    ),
    "fanout": {"counts": (1, 4), "duration": 2.0, "symbols": 20, "rate": 1000.0},
    "ledger": {"chunk": 2000, "budget_s": 4.0, "max_rows": 4000},
    "backtest": backtest.QUICK,
}


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    try:
        out = subprocess.run(
            [nats_server_binary(), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        nats_server = out.strip().split()[-1]
    except (OSError, subprocess.SubprocessError, IndexError):
        nats_server = "unknown"
    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "nats_server": nats_server,
        "nats_py": _version("nats-py"),
        "protobuf": _version("protobuf"),
        "aiosqlite": _version("aiosqlite"),
        "sqlite": __import__("sqlite3").sqlite_version,
        "uvloop": _version("uvloop"),
    }


async def _run(sections: tuple[str, ...], quick: bool) -> tuple[list[Figure], dict[str, Any], list[str]]:
    plan = QUICK if quick else FULL
    figures: list[Figure] = []
    raw: dict[str, Any] = {}
    notes: list[str] = []
    for section in sections:
        started = time.perf_counter()
        print(f"bench: {section} ...", file=sys.stderr, flush=True)
        try:
            if section == "orders":
                got, raw[section] = await orders.run(plan["orders"])  # type: ignore[arg-type]
            elif section == "uvloop":
                # The desk runs on uvloop when it is installed (EVENT_LOOP=auto): measure asyncio's own loop beside it.
                harness.EVENT_LOOP = "asyncio"
                try:
                    got, raw[section] = await orders.run(plan["uvloop"], suffix=" (asyncio)", with_bare=False)  # type: ignore[arg-type]
                finally:
                    harness.EVENT_LOOP = "auto"
                base = {f.name: f for f in figures if f.section == "orders"}
                for f in got:
                    default = base.get(f.name.replace(" (asyncio)", ""))
                    f.bare = default.value if default else None
                    f.section = "uvloop"
                    f.target = None
                    f.note = "EVENT_LOOP=asyncio; bare column = the same figure on uvloop, the default (ratio = asyncio / uvloop)"
            elif section == "backtest":
                # Each engine runs in its own process, one after another (never beside the desk's services).
                got, raw[section] = await asyncio.to_thread(backtest.run, plan["backtest"])  # type: ignore[arg-type]
            elif section == "fanout":
                got, raw[section] = await fanout.run(**plan["fanout"])  # type: ignore[arg-type]
            else:
                got, raw[section] = await ledger.run(**plan["ledger"])  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others' figures
            notes.append(f"{section} failed: {exc!r}")
            print(f"bench: {section} failed: {exc!r}", file=sys.stderr)
            continue
        figures.extend(got)
        print(f"bench: {section} done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    seen: set[str] = set()
    for f in figures:
        if f.note and f.note not in seen:
            seen.add(f.note)
            notes.append(f"{f.section}: {f.name}: {f.note}")
    return figures, raw, notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smoke run: small numbers, well under a minute")
    parser.add_argument("--only", default="", help=f"comma-separated sections of {','.join(SECTIONS)}")
    parser.add_argument("--no-uvloop", action="store_true", help="skip the comparison with asyncio's own event loop")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    args = parser.parse_args(argv)
    sections = tuple(s for s in (args.only.split(",") if args.only else SECTIONS) if s)
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.no_uvloop or (args.quick and not args.only):
        sections = tuple(s for s in sections if s != "uvloop")
    started = time.perf_counter()
    figures, raw, notes = asyncio.run(_run(sections, args.quick))
    elapsed = time.perf_counter() - started
    info = machine()
    print()
    print(render_table(figures))
    print()
    for note in notes:
        print(f"  * {note}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(report_json(figures, info, notes, quick=args.quick, elapsed_s=elapsed, raw=raw))
    print(
        f"\nmachine: {info['cpu_count']} CPU, Python {info['python']}, nats-server {info['nats_server']}, "
        f"nats-py {info['nats_py']}; {elapsed:.0f} s; written {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
