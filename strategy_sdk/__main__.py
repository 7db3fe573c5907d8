"""``python -m strategy_sdk run PATH``: run one strategy against the desk until SIGTERM/SIGINT.

``python -m strategy_sdk backtest PATH --data FILE``: backtest a strategy folder over bar files, in
process, with only the SDK installed (``pip install ./sdk``): the same run as ``desk backtest --data``
(:func:`strategy_sdk.testing.run_backtest` with the folder's config.json, then :mod:`desk.backtest`'s
summary, ``--json`` and ``--html``), without the desk's command line. The local Alpaca cache
(``desk data fetch``) is the desk's: here bars come from files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from strategy_sdk.client import SDK_VERSION
from strategy_sdk.runner import configure_logging, run_strategy

EPILOG = """\
environment:
  NATS_URL                 NATS server(s), comma-separated (default nats://127.0.0.1:4222)
  NATS_USER, NATS_PASSWORD NATS user credentials, or NATS_CREDS: a .creds file
  NATS_INBOX_PREFIX        reply inbox prefix, when the strategy's NATS user is restricted to one
  DESK_STRATEGY_ID         the strategy's id (default: the folder name)
  DESK_MEMBER_ID           the member who owns it (default: config.json user_id)
  DESK_SYMBOLS             comma-separated symbols to receive (default: config.json symbols, else all)
  DESK_HEARTBEAT_INTERVAL  seconds between heartbeats on desk.hb.<id> (default 5)
  DESK_INITIAL_CASH        starting cash when the ledger has no books (default: config.json
                           initial_cash, else 100000)
  LOG_LEVEL                debug, info (default), warning, error

A folder with strategy.py + config.json, or a strategy.py file. strategy.py either defines one
subclass of strategy_sdk.Strategy, or is an old-desk strategy (reads JSON bars on stdin and calls
desk_client.place_order), which runs unchanged as a child process.

exit codes: 0 stopped on request, 1 cannot reach NATS, 2 strategy cannot be loaded or on_start
failed; an old-desk strategy's own exit code when it ends by itself.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strategy_sdk",
        description="Run a Quant Desk strategy: market data in, orders out, heartbeats on the bus.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"strategy_sdk {SDK_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run one strategy until SIGTERM/SIGINT", description="Run one strategy until SIGTERM/SIGINT.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("path", metavar="PATH", help="strategy folder (strategy.py + config.json) or a strategy.py")
    bt = commands.add_parser(
        "backtest", help="backtest a strategy folder over bar files, in process (no desk, no NATS)",
        description="Backtest a strategy folder over historical bars, in process, and print the summary "
                    "(the same run and numbers as `desk backtest --data`).",
        epilog=BACKTEST_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bt.add_argument("path", metavar="PATH", help="strategy folder (strategy.py + config.json)")
    bt.add_argument("--data", action="append", required=True, metavar="FILE", type=Path,
                    help="bar file or folder: desk CSV, Yahoo CSV, Alpaca bar JSON/CSV (repeatable)")
    bt.add_argument("--symbols", default="", help="comma-separated symbols (default: config.json's symbols)")
    bt.add_argument("--start", default="", help="first day (YYYY-MM-DD, New York) or ISO timestamp")
    bt.add_argument("--end", default="", help="last day (inclusive) or ISO timestamp")
    bt.add_argument("--cash", default="", help="initial cash (default: config.json's initial_cash, else 100000)")
    bt.add_argument("--json", dest="as_json", action="store_true", help="print the metrics as JSON (stable keys)")
    bt.add_argument("--html", type=Path, default=None, metavar="FILE",
                    help="write the self-contained HTML report to this file")
    args = parser.parse_args(argv)
    if args.command == "backtest":
        try:
            return backtest(args.path, args.data, symbols=args.symbols, start=args.start, end=args.end,
                            cash=args.cash, as_json=args.as_json, html=args.html)
        except BacktestError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return exc.code
    configure_logging()
    return asyncio.run(_run(args.path))


async def _run(path: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_strategy(path, stop_event=stop)


BACKTEST_EPILOG = """\
example (in a clone of the repository; the samples are also installed, in desk/data/samples/):
  python -m strategy_sdk backtest strategies/ma_crossover --data desk/data/samples/GSPC.csv --symbols GSPC

exit codes: 0 done (a warning on stderr when the strategy's hooks raised), 1 the strategy or the data
cannot be loaded, or no bars are left, 2 a bad option.
"""

NEW_YORK = ZoneInfo("America/New_York")


class BacktestError(Exception):
    """A backtest that cannot run: the message for stderr and the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _ns(text: str, option: str, *, end: bool) -> int | None:
    """YYYY-MM-DD (a New York day, inclusive) or an ISO timestamp, as ns; None when empty."""
    if not text:
        return None
    try:
        moment = datetime.combine(date.fromisoformat(text), time.max if end else time.min, NEW_YORK)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise BacktestError(f"{option} {text!r} is neither a date (YYYY-MM-DD) nor an ISO timestamp", 2) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=NEW_YORK)
    return int(moment.timestamp() * 1_000_000_000)


def backtest(path: str | Path, data: list[Path], *, symbols: str = "", start: str = "", end: str = "",
             cash: str = "", as_json: bool = False, html: Path | None = None) -> int:
    """Backtest the strategy folder ``path`` over the bar files ``data``; print the summary (or JSON).

    Raises :class:`BacktestError` when the strategy, the data or an option is unusable."""
    from desk.backtest.metrics import BacktestData, compute_data, to_json
    from desk.backtest.report import format_summary, render_html
    from desk.data import BarFileError, load_many
    from strategy_sdk.config import load_config
    from strategy_sdk.loading import StrategyLoadError, is_legacy_source, load_strategy_class, resolve_strategy_path
    from strategy_sdk.testing import run_backtest

    try:
        folder, file = resolve_strategy_path(path)
        config: dict[str, Any] = load_config(folder)
        if is_legacy_source(file.read_text(), str(file)):
            raise BacktestError(f"{file} is an old-desk (stdin) strategy: it can only run on the desk")
        cls = load_strategy_class(file, f"sdk_backtest_{folder.name.replace('-', '_')}")
    except StrategyLoadError as exc:
        raise BacktestError(str(exc)) from None
    except SyntaxError as exc:
        raise BacktestError(f"{path}: {exc}") from None
    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] or [
        str(s) for s in config.get("symbols") or []]
    start_ns, end_ns = _ns(start, "--start", end=False), _ns(end, "--end", end=True)
    try:
        loaded = load_many(data)
    except (BarFileError, OSError) as exc:
        raise BacktestError(str(exc)) from None
    bars = loaded.select(wanted or None, start_ns, end_ns)
    if len(bars) == 0:
        raise BacktestError(f"no bars of {', '.join(wanted) or 'any symbol'} in the given range (the data has "
                            f"{', '.join(loaded.symbol_list()) or 'none'}; pass --symbols)")
    try:
        initial = Decimal(cash or str(config.get("initial_cash") or "100000"))
    except InvalidOperation:
        raise BacktestError(f"initial cash {cash or config.get('initial_cash')!r} is not a number", 2) from None
    if not initial.is_finite() or initial <= 0:
        raise BacktestError(f"initial cash must be a positive number, got {initial}", 2)
    risk = config.get("risk") or {}
    result = run_backtest(
        cls, iter(bars), initial_cash=initial, config=dict(config, symbols=bars.symbol_list()),
        allow_short=bool(risk.get("allow_short", False)), strategy_id=folder.name,
        member_id=str(config.get("user_id", "")),
    )
    name = f"{config.get('name') or folder.name} — {config.get('user_id') or 'backtest'}"
    report_data = BacktestData.from_result(result, bars, initial_cash=initial, name=name)
    metrics = compute_data(report_data)
    if html is not None:
        render_html(report_data, html, metrics)
    if as_json:
        out = to_json(metrics)
        out.update(strategy=folder.name, symbols=bars.symbol_list(), orders=len(result.orders),
                   hook_errors=result.errors, report=str(html) if html else None)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        print(f"{name}: {len(bars):,} bars of {', '.join(bars.symbol_list())}, {len(result.orders)} orders, "
              f"{len(result.fills)} fills")
        print(format_summary(metrics))
        if html is not None:
            print(f"report: {html}")
    if result.errors:
        first = result.error_messages[0] if result.error_messages else ""
        print(f"warning: the strategy's hooks raised {result.errors} times; first: {first}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
