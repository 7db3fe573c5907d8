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
from pathlib import Path

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
        "run",
        help="run one strategy until SIGTERM/SIGINT",
        description="Run one strategy until SIGTERM/SIGINT.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("path", metavar="PATH", help="strategy folder (strategy.py + config.json) or a strategy.py")
    bt = commands.add_parser(
        "backtest",
        help="backtest a strategy folder over bar files, in process (no desk, no NATS)",
        description="Backtest a strategy folder over historical bars, in process, and print the summary "
        "(the same run and numbers as `desk backtest --data`).",
        epilog=BACKTEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bt.add_argument("path", metavar="PATH", help="strategy folder (strategy.py + config.json)")
    bt.add_argument(
        "--data",
        action="append",
        required=True,
        metavar="FILE",
        type=Path,
        help="bar file or folder: desk CSV, Yahoo CSV, Alpaca bar JSON/CSV (repeatable)",
    )
    bt.add_argument("--symbols", default="", help="comma-separated symbols (default: config.json's symbols)")
    bt.add_argument("--start", default="", help="first day (YYYY-MM-DD, New York) or ISO timestamp")
    bt.add_argument("--end", default="", help="last day (inclusive) or ISO timestamp")
    bt.add_argument("--cash", default="", help="initial cash (default: config.json's initial_cash, else 100000)")
    bt.add_argument("--json", dest="as_json", action="store_true", help="print the metrics as JSON (stable keys)")
    bt.add_argument(
        "--html", type=Path, default=None, metavar="FILE", help="write the self-contained HTML report to this file"
    )
    args = parser.parse_args(argv)
    if args.command == "backtest":
        from desk.backtest.run import BacktestError  # numpy and the report: only for backtests

        try:
            return backtest(
                args.path,
                args.data,
                symbols=args.symbols,
                start=args.start,
                end=args.end,
                cash=args.cash,
                as_json=args.as_json,
                html=args.html,
            )
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


def backtest(
    path: str | Path,
    data: list[Path],
    *,
    symbols: str = "",
    start: str = "",
    end: str = "",
    cash: str = "",
    as_json: bool = False,
    html: Path | None = None,
) -> int:
    """Backtest the strategy folder ``path`` over the bar files ``data``; print the summary (or JSON).

    Raises :class:`desk.backtest.run.BacktestError` when the strategy, the data or an option is unusable."""
    from desk.backtest.report import format_summary, render_html
    from desk.backtest.run import BacktestError, load_folder, parse_when, run_folder, wanted_symbols
    from desk.data import BarFileError, load_many

    folder = load_folder(path, module_prefix="sdk_backtest")
    wanted = wanted_symbols(symbols, folder.config)
    start_ns, end_ns = parse_when(start, "--start", end=False), parse_when(end, "--end", end=True)
    try:
        loaded = load_many(data)
    except (BarFileError, OSError) as exc:
        raise BacktestError(str(exc)) from None
    bars = loaded.select(wanted or None, start_ns, end_ns)
    if len(bars) == 0:
        raise BacktestError(
            f"no bars of {', '.join(wanted) or 'any symbol'} in the given range (the data has "
            f"{', '.join(loaded.symbol_list()) or 'none'}; pass --symbols)"
        )
    outcome = run_folder(folder, bars, cash)
    if html is not None:
        render_html(outcome.data, html, outcome.metrics)
    if as_json:
        sys.stdout.write(json.dumps(outcome.summary_json(folder, bars.symbol_list(), html), indent=2) + "\n")
    else:
        print(
            f"{folder.title}: {len(bars):,} bars of {', '.join(bars.symbol_list())}, "
            f"{len(outcome.result.orders)} orders, {len(outcome.result.fills)} fills"
        )
        print(format_summary(outcome.metrics))
        if html is not None:
            print(f"report: {html}")
    warning = outcome.hook_warning()
    if warning:
        print(warning, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
