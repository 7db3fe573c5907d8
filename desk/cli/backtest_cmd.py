"""``desk backtest``: run a strategy folder over historical bars in process and report how it did.

Bars come from files (``--data``: the desk's CSV, Yahoo CSV, Alpaca bar JSON/CSV, or a folder of them;
see :mod:`desk.data.loaders`) or from the local Alpaca cache (``--symbols --start --end --timeframe``,
filled by ``desk data fetch``; nothing is fetched here). The strategy runs through
:func:`strategy_sdk.testing.run_backtest` with its ``config.json`` (symbols, initial cash, risk,
params); the summary is :mod:`desk.backtest`'s (``--json`` for the stable JSON, ``--html FILE`` for the
self-contained report).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from datetime import date, datetime, time
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, NoReturn
from zoneinfo import ZoneInfo

import typer

from desk.cli.render import console, err_console

NEW_YORK = ZoneInfo("America/New_York")
#: Runs this long or longer show a progress bar (on a terminal).
PROGRESS_FROM = 20_000


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=False)
    raise typer.Exit(code)


def _ns(text: str, option: str, *, end: bool) -> int | None:
    """YYYY-MM-DD (a New York day, inclusive) or an ISO timestamp, as ns; None when empty."""
    if not text:
        return None
    try:
        day = date.fromisoformat(text)
        moment = datetime.combine(day, time.max if end else time.min, NEW_YORK)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            _fail(f"{option} {text!r} is neither a date (YYYY-MM-DD) nor an ISO timestamp", 2)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=NEW_YORK)
    return int(moment.timestamp() * 1_000_000_000)


def _load_strategy(path: Path) -> tuple[Path, type[Any], dict[str, Any]]:
    from strategy_sdk.config import load_config
    from strategy_sdk.loading import StrategyLoadError, is_legacy_source, load_strategy_class, resolve_strategy_path

    try:
        folder, file = resolve_strategy_path(path)
        config = load_config(folder)
        if is_legacy_source(file.read_text(), str(file)):
            _fail(f"{file} is an old-desk (stdin) strategy: it can only run on the desk; try "
                  "`desk up --feed replay` with MD_REPLAY_FILE")
        cls = load_strategy_class(file, f"desk_backtest_{folder.name.replace('-', '_')}")
    except StrategyLoadError as exc:
        _fail(str(exc))
    except SyntaxError as exc:
        _fail(f"{path}: {exc}")
    return folder, cls, config


def _bars(data: list[Path], symbols: list[str], start_ns: int | None, end_ns: int | None, start: str, end: str,
          timeframe: str, feed: str, data_dir: Path | None) -> Any:
    from desk.data import BarFileError, cache, load_many

    if data:
        try:
            bars = load_many(data)
        except (BarFileError, OSError) as exc:
            _fail(str(exc))
        return bars.select(symbols or None, start_ns, end_ns)
    if not (symbols and start and end):
        _fail("give --data FILE, or --symbols, --start and --end to read the local cache (desk data fetch)", 2)
    try:
        return cache.bars(symbols, start, end, timeframe, feed=feed, data_dir=data_dir)
    except cache.CacheMiss as exc:
        _fail(str(exc))
    except ValueError as exc:
        _fail(str(exc), 2)


def _progress(bars: Any, total: int) -> Iterator[Any]:
    """The bars, with a progress bar on stderr for long runs on a terminal."""
    if total < PROGRESS_FROM or not err_console.is_terminal:
        yield from bars
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("backtest", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console,
                  transient=True) as progress:
        task = progress.add_task("bars", total=total)
        for i, bar in enumerate(bars, 1):
            yield bar
            if i % 5000 == 0:
                progress.update(task, completed=i)


def backtest(
    path: Annotated[Path, typer.Argument(help="The strategy folder (strategy.py + config.json).")],
    data: Annotated[list[Path] | None, typer.Option(
        "--data", help="Bar file(s) or folder: desk CSV, Yahoo CSV, Alpaca bar JSON/CSV (repeatable).")] = None,
    symbols: Annotated[str, typer.Option(
        help="Comma-separated symbols (default: config.json's symbols); with no --data, read from the cache.")] = "",
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, New York) or ISO timestamp.")] = "",
    end: Annotated[str, typer.Option(help="Last day (inclusive) or ISO timestamp.")] = "",
    timeframe: Annotated[str, typer.Option(help="Cache timeframe: 1Min, 5Min, 15Min, 1Hour, 1Day.")] = "1Day",
    feed: Annotated[str, typer.Option(help="Cache feed: iex or sip.")] = "iex",
    data_dir: Annotated[Path | None, typer.Option(
        "--data-dir", envvar="DESK_DATA_DIR", help="The desk's data dir holding the cache (default var).")] = None,
    cash: Annotated[str, typer.Option(help="Initial cash (default: config.json's initial_cash, else 100000).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (stable keys).")] = False,
    html: Annotated[Path | None, typer.Option(help="Write the self-contained HTML report to this file.")] = None,
) -> None:
    """Backtest a strategy over historical bars, in process, and print the summary quants expect."""
    from desk.backtest.metrics import BacktestData, compute_data, to_json
    from desk.backtest.report import format_summary, render_html
    from strategy_sdk.testing import run_backtest

    folder, cls, config = _load_strategy(path)
    wanted = [s.strip().upper() for s in symbols.split(",") if s.strip()] or [
        str(s) for s in config.get("symbols") or []]
    start_ns, end_ns = _ns(start, "--start", end=False), _ns(end, "--end", end=True)
    bars = _bars(list(data or []), wanted, start_ns, end_ns, start, end, timeframe, feed, data_dir)
    if len(bars) == 0:
        have = ", ".join(load_symbols(data)) if data else ""
        _fail(f"no bars of {', '.join(wanted) or 'any symbol'} in the given range"
              + (f" (the data has {have}; pass --symbols)" if have else ""))
    try:
        initial = Decimal(cash or str(config.get("initial_cash") or "100000"))
    except InvalidOperation:
        _fail(f"initial cash {cash or config.get('initial_cash')!r} is not a number", 2)
    if not initial.is_finite() or initial <= 0:
        _fail(f"initial cash must be a positive number, got {initial}", 2)
    run_config = dict(config, symbols=bars.symbol_list())
    risk = config.get("risk") or {}
    result = run_backtest(
        cls, _progress(iter(bars), len(bars)), initial_cash=initial, config=run_config,
        allow_short=bool(risk.get("allow_short", False)), strategy_id=folder.name,
        member_id=str(config.get("user_id", "")),
    )
    name = f"{config.get('name') or folder.name} — {config.get('user_id') or 'backtest'}"
    report_data = BacktestData.from_result(result, bars, initial_cash=initial, name=name)  # its columns
    metrics = compute_data(report_data)
    if html is not None:
        render_html(report_data, html, metrics)
    if as_json:
        out = to_json(metrics)
        out.update(strategy=folder.name, symbols=bars.symbol_list(), orders=len(result.orders),
                   hook_errors=result.errors, report=str(html) if html else None)
        sys.stdout.write(json.dumps(out, indent=2) + "\n")
    else:
        console.print(f"[bold]{name}[/bold]: {len(bars):,} bars of {', '.join(bars.symbol_list())}, "
                      f"{len(result.orders)} orders, {len(result.fills)} fills", highlight=False)
        console.print(format_summary(metrics), markup=False, highlight=False)
        if html is not None:
            console.print(f"report: {html}", highlight=False)
    if result.errors:
        first = result.error_messages[0] if result.error_messages else ""
        err_console.print(f"warning: the strategy's hooks raised {result.errors} times; first: {first}",
                          markup=False, highlight=False)


def load_symbols(data: list[Path] | None) -> list[str]:
    """The symbols in ``data`` (for an error message)."""
    from desk.data import load_many

    try:
        return load_many(list(data or [])).symbol_list()
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return []
