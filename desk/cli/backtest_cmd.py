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
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from desk.cli.render import console, err_console

#: Runs this long or longer show a progress bar (on a terminal).
PROGRESS_FROM = 20_000


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False, markup=False)
    raise typer.Exit(code)


def _bars(
    data: list[Path],
    symbols: list[str],
    start_ns: int | None,
    end_ns: int | None,
    start: str,
    end: str,
    timeframe: str,
    feed: str,
    data_dir: Path | None,
) -> Any:
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


def _progress(bars: Iterable[Any], total: int) -> Iterator[Any]:
    """The bars, with a progress bar on stderr for long runs on a terminal."""
    if total < PROGRESS_FROM or not err_console.is_terminal:
        yield from bars
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "backtest", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err_console, transient=True
    ) as progress:
        task = progress.add_task("bars", total=total)
        for i, bar in enumerate(bars, 1):
            yield bar
            if i % 5000 == 0:
                progress.update(task, completed=i)


def backtest(
    path: Annotated[Path, typer.Argument(help="The strategy folder (strategy.py + config.json).")],
    data: Annotated[
        list[Path] | None,
        typer.Option("--data", help="Bar file(s) or folder: desk CSV, Yahoo CSV, Alpaca bar JSON/CSV (repeatable)."),
    ] = None,
    symbols: Annotated[
        str,
        typer.Option(
            help="Comma-separated symbols (default: config.json's symbols); with no --data, read from the cache."
        ),
    ] = "",
    start: Annotated[str, typer.Option(help="First day (YYYY-MM-DD, New York) or ISO timestamp.")] = "",
    end: Annotated[str, typer.Option(help="Last day (inclusive) or ISO timestamp.")] = "",
    timeframe: Annotated[str, typer.Option(help="Cache timeframe: 1Min, 5Min, 15Min, 1Hour, 1Day.")] = "1Day",
    feed: Annotated[str, typer.Option(help="Cache feed: iex or sip.")] = "iex",
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", envvar="DESK_DATA_DIR", help="The desk's data dir holding the cache (default var)."),
    ] = None,
    cash: Annotated[str, typer.Option(help="Initial cash (default: config.json's initial_cash, else 100000).")] = "",
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON (stable keys).")] = False,
    html: Annotated[Path | None, typer.Option(help="Write the self-contained HTML report to this file.")] = None,
) -> None:
    """Backtest a strategy over historical bars, in process, and print the summary quants expect."""
    from desk.backtest.report import format_summary, render_html
    from desk.backtest.run import BacktestError, load_folder, parse_when, run_folder, wanted_symbols

    try:
        folder = load_folder(
            path, module_prefix="desk_backtest", legacy_hint="; try `desk up --feed replay` with MD_REPLAY_FILE"
        )
        wanted = wanted_symbols(symbols, folder.config)
        start_ns, end_ns = parse_when(start, "--start", end=False), parse_when(end, "--end", end=True)
        bars = _bars(list(data or []), wanted, start_ns, end_ns, start, end, timeframe, feed, data_dir)
        if len(bars) == 0:
            have = ", ".join(load_symbols(data)) if data else ""
            _fail(
                f"no bars of {', '.join(wanted) or 'any symbol'} in the given range"
                + (f" (the data has {have}; pass --symbols)" if have else "")
            )
        outcome = run_folder(folder, bars, cash, feed=_progress)
    except BacktestError as exc:
        _fail(str(exc), exc.code)
    if html is not None:
        render_html(outcome.data, html, outcome.metrics)
    if as_json:
        sys.stdout.write(json.dumps(outcome.summary_json(folder, bars.symbol_list(), html), indent=2) + "\n")
    else:
        console.print(
            f"[bold]{folder.title}[/bold]: {len(bars):,} bars of {', '.join(bars.symbol_list())}, "
            f"{len(outcome.result.orders)} orders, {len(outcome.result.fills)} fills",
            highlight=False,
        )
        console.print(format_summary(outcome.metrics), markup=False, highlight=False)
        if html is not None:
            console.print(f"report: {html}", highlight=False)
    warning = outcome.hook_warning()
    if warning:
        err_console.print(warning, markup=False, highlight=False)


def load_symbols(data: list[Path] | None) -> list[str]:
    """The symbols in ``data`` (for an error message)."""
    from desk.data import load_many

    try:
        return load_many(list(data or [])).symbol_list()
    except Exception:  # noqa: BLE001 - only for a hint in an error message
        return []
