"""``desk data``: historical bars — fetch from Alpaca into the local cache, list the cache, check a file."""

from __future__ import annotations

import json
import sys
import time
from datetime import date
from pathlib import Path
from typing import Annotated

import typer

from desk.cli.render import console, err_console, table
from desk.data import cache
from desk.data.loaders import BarFileError, load

data_app = typer.Typer(
    name="data",
    help="Historical bars: `desk data fetch` (Alpaca -> local cache), `desk data list`, `desk data check FILE`.",
    no_args_is_help=True,
    add_completion=False,
)

DataDirOpt = Annotated[
    Path,
    typer.Option(
        "--data-dir", envvar="DESK_DATA_DIR", help="The desk's data dir; the cache is <data dir>/data/alpaca/."
    ),
]


def _fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _day(text: str, option: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        _fail(f"{option} {text!r} is not a date (YYYY-MM-DD)", 2)
        raise


@data_app.command()
def fetch(
    symbols: Annotated[str, typer.Argument(help="Comma-separated symbols, e.g. AAPL,MSFT.")],
    start: Annotated[str, typer.Option("--start", help="First day (YYYY-MM-DD, New York), inclusive.")],
    end: Annotated[str, typer.Option("--end", help="Last day (YYYY-MM-DD, New York), inclusive.")],
    timeframe: Annotated[str, typer.Option("--timeframe", "-t", help="1Min, 5Min, 15Min, 1Hour or 1Day.")] = "1Day",
    feed: Annotated[str, typer.Option("--feed", help="iex (free) or sip.")] = "iex",
    data_dir: DataDirOpt = Path("var"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Download bars through alpaca-py into the cache; days already cached are not downloaded again.

    Keys from ALPACA_API_KEY / ALPACA_SECRET_KEY; ALPACA_DATA_URL overrides the data API's address.
    """
    from desk.data.fetch import FetchError
    from desk.data.fetch import fetch as run_fetch

    if timeframe not in cache.TIMEFRAMES:
        _fail(f"--timeframe {timeframe!r} is not one of {', '.join(cache.TIMEFRAMES)}", 2)
    if feed not in cache.FEEDS:
        _fail(f"--feed {feed!r} is not one of {', '.join(cache.FEEDS)}", 2)
    first, last = _day(start, "--start"), _day(end, "--end")
    if last < first:
        _fail(f"--end {last} is before --start {first}", 2)
    names = [s.strip().upper() for s in symbols.split(",") if s.strip()]
    began = time.monotonic()

    def progress(line: str) -> None:
        if not as_json:
            err_console.print(f"{line}  ({time.monotonic() - began:.1f}s)", highlight=False)

    try:
        result = run_fetch(names, first, last, timeframe, feed=feed, data_dir=data_dir, progress=progress)
    except FetchError as err:
        _fail(str(err))
        return
    if as_json:
        sys.stdout.write(
            json.dumps(
                {
                    "requests": result.requests,
                    "bars": result.bars,
                    "cached_days": result.cached_days,
                    "fetched": [[s, str(a), str(b)] for s, a, b in result.fetched],
                }
            )
            + "\n"
        )
        return
    if not result.requests:
        console.print(f"all cached: {','.join(names)} {first}..{last} {timeframe} ({feed}); nothing downloaded")
    else:
        console.print(
            f"fetched {result.bars:,} bars in {result.requests} requests "
            f"({result.cached_days} symbol-days were already cached) into "
            f"{cache.cache_root(data_dir) / feed / timeframe}"
        )


@data_app.command("list")
def list_(
    data_dir: DataDirOpt = Path("var"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """What the cache holds: per feed, timeframe and symbol, the days covered and the bars."""
    entries = cache.listing(data_dir)
    if as_json:
        sys.stdout.write(json.dumps([e.to_json() for e in entries]) + "\n")
        return
    if not entries:
        console.print(
            f"nothing cached under {cache.cache_root(data_dir)} (desk data fetch SYMBOLS --start ... --end ...)"
        )
        return
    rows = [
        [
            e.feed,
            e.timeframe,
            e.symbol,
            ", ".join(f"{a}..{b}" if a != b else str(a) for a, b in e.ranges) or "-",
            f"{e.bars:,}",
            str(e.files),
            f"{e.bytes / 1024:,.0f} KiB",
        ]
        for e in entries
    ]
    table(
        "cached bars",
        ["feed", "timeframe", "symbol", "days", "bars", "files", "size"],
        rows,
        numeric=["bars", "files", "size"],
    )


@data_app.command()
def check(
    path: Annotated[Path, typer.Argument(help="A bar file (desk CSV, Alpaca CSV/JSON, Yahoo CSV) or a folder.")],
    symbol: Annotated[str | None, typer.Option("--symbol", help="Symbol of a Yahoo file (default: file name).")] = None,
    skip_null: Annotated[bool, typer.Option("--skip-null", help="Skip Yahoo's 'null' rows.")] = False,
) -> None:
    """Load a bar file as a backtest would and say what it holds (or the first problem, with row and column)."""
    began = time.perf_counter()
    try:
        data = load(path, symbol=symbol, skip_null=skip_null)
    except BarFileError as err:
        _fail(str(err))
        return
    took = time.perf_counter() - began
    console.print(
        f"{path}: {data.source}, {len(data):,} bars of {', '.join(data.symbol_list())} in {took:.2f}s", highlight=False
    )
    if len(data):
        first, last = data.ts_ns[[0, -1]].tolist()
        console.print(f"from {cache._iso(first)} to {cache._iso(last)}", highlight=False)
    if data.report.summary():
        console.print(data.report.summary(), highlight=False)
