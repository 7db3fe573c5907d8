"""The local cache of Alpaca bars that ``desk data fetch`` fills and backtests read.

Layout, under the data dir (``var`` by default)::

    <data dir>/data/alpaca/<feed>/<timeframe>/<SYMBOL>/2024-01.csv   one file per symbol and month
    <data dir>/data/alpaca/<feed>/<timeframe>/<SYMBOL>/coverage.json the days fetched, as date ranges

A month file is Alpaca-bars CSV (``symbol,timestamp,open,high,low,close,volume,trade_count,vwap``, the
numbers exactly as Alpaca sent them), so :func:`desk.data.loaders.load` reads it, and so do
``desk backtest --data`` and the replay feed's ``MD_REPLAY_FILE``. Days are New York dates (a US
session, pre-market to after-hours, is one day; Alpaca stamps a day bar at midnight New York).

``coverage.json`` (``{"days": [["2024-01-02", "2024-01-31"], ...]}``, inclusive, merged) records every
day that was asked for and fully answered — a day without bars (a weekend, a holiday) is covered too, so
it is never asked again. A day that had not ended (New York time, plus 15 minutes) when it was fetched is
not recorded, so it is fetched again next time. Files are replaced atomically (write, then rename).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from desk.data.loaders import NEW_YORK, BarData, load_many, parse_timestamp

__all__ = [
    "FEEDS",
    "TIMEFRAMES",
    "CacheEntry",
    "CacheMiss",
    "bars",
    "cache_root",
    "covered",
    "day_bounds_ns",
    "listing",
    "missing_ranges",
    "store",
    "symbol_dir",
]

#: timeframe name -> bar length in seconds
TIMEFRAMES: dict[str, int] = {"1Min": 60, "5Min": 300, "15Min": 900, "1Hour": 3600, "1Day": 86_400}
FEEDS = ("iex", "sip")
HEADER = ["symbol", "timestamp", "open", "high", "low", "close", "volume", "trade_count", "vwap"]
COVERAGE = "coverage.json"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CacheMiss(LookupError):
    """Days asked for are not in the cache; ``missing`` maps symbol -> [(first, last)] day ranges."""

    def __init__(self, message: str, missing: Mapping[str, list[tuple[date, date]]]) -> None:
        super().__init__(message)
        self.missing = dict(missing)


def default_data_dir() -> Path:
    return Path(os.environ.get("DESK_DATA_DIR", "var"))


def cache_root(data_dir: str | Path | None = None) -> Path:
    return Path(data_dir if data_dir is not None else default_data_dir()) / "data" / "alpaca"


def symbol_dir(data_dir: str | Path | None, feed: str, timeframe: str, symbol: str) -> Path:
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe {timeframe!r} is not one of {', '.join(TIMEFRAMES)}")
    if feed not in FEEDS:
        raise ValueError(f"feed {feed!r} is not one of {', '.join(FEEDS)}")
    return cache_root(data_dir) / feed / timeframe / symbol


def day_bounds_ns(first: date, last: date) -> tuple[int, int]:
    """[midnight New York of ``first``, midnight New York after ``last``) in epoch ns."""
    start = datetime.combine(first, time(0), NEW_YORK)
    end = datetime.combine(last + timedelta(days=1), time(0), NEW_YORK)
    return _ns(start), _ns(end)


def _ns(moment: datetime) -> int:
    return int((moment - _EPOCH) / timedelta(microseconds=1)) * 1000


def ny_day(ts_ns: int) -> date:
    return (_EPOCH + timedelta(microseconds=ts_ns // 1000)).astimezone(NEW_YORK).date()


# Coverage ---------------------------------------------------------------------------------------------


def _read_coverage(folder: Path) -> list[tuple[date, date]]:
    try:
        doc = json.loads((folder / COVERAGE).read_text())
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise ValueError(f"{folder / COVERAGE}: not valid JSON ({exc}); delete it to fetch again") from None
    return [(date.fromisoformat(a), date.fromisoformat(b)) for a, b in doc.get("days", [])]


def _merge(ranges: Iterable[tuple[date, date]]) -> list[tuple[date, date]]:
    out: list[tuple[date, date]] = []
    for first, last in sorted(ranges):
        if out and first <= out[-1][1] + timedelta(days=1):
            out[-1] = (out[-1][0], max(out[-1][1], last))
        else:
            out.append((first, last))
    return out


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, newline="")
    os.replace(tmp, path)


def covered(folder: Path) -> list[tuple[date, date]]:
    """The day ranges cached in a symbol folder (inclusive, merged)."""
    return _merge(_read_coverage(folder))


def missing_ranges(folder: Path, first: date, last: date) -> list[tuple[date, date]]:
    """The day ranges of [first, last] that the folder does not cover, in order."""
    out: list[tuple[date, date]] = []
    cursor = first
    for a, b in covered(folder):
        if b < cursor:
            continue
        if a > last:
            break
        if a > cursor:
            out.append((cursor, min(last, a - timedelta(days=1))))
        cursor = max(cursor, b + timedelta(days=1))
        if cursor > last:
            break
    if cursor <= last:
        out.append((cursor, last))
    return out


# Writing ----------------------------------------------------------------------------------------------


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def store(
    folder: Path, symbol: str, raw_bars: Sequence[Mapping[str, Any]], first: date, last: date, complete_until: date
) -> int:
    """Merge Alpaca bars (``{"t","o","h","l","c","v","n","vw"}`` dicts) of [first, last] into the month files
    and record the days up to ``complete_until`` as covered. Returns the number of bars written."""
    by_month: dict[str, dict[int, list[str]]] = {}
    for bar in raw_bars:
        ts = parse_timestamp(str(bar["t"]))
        day = ny_day(ts)
        row = [symbol, _iso(ts), *(_cell(bar.get(k)) for k in ("o", "h", "l", "c", "v", "n", "vw"))]
        by_month.setdefault(f"{day:%Y-%m}", {})[ts] = row
    months = {f"{first + timedelta(days=i):%Y-%m}" for i in range((last - first).days + 1)}
    lo, hi = day_bounds_ns(first, last)
    for month in sorted(months | set(by_month)):
        path = folder / f"{month}.csv"
        rows: dict[int, list[str]] = {}
        if path.exists():
            with path.open(newline="") as handle:
                reader = csv.reader(handle)
                next(reader, None)
                for cells in reader:
                    if cells:
                        ts = parse_timestamp(cells[1])
                        if not lo <= ts < hi:  # the fetched range replaces what was there
                            rows[ts] = cells
        rows.update(by_month.get(month, {}))
        if not rows:
            continue
        lines = [",".join(HEADER)] + [",".join(rows[ts]) for ts in sorted(rows)]
        _atomic_write(path, "\n".join(lines) + "\n")
    done_last = min(last, complete_until)
    if done_last >= first:
        ranges = _merge([*_read_coverage(folder), (first, done_last)])
        _atomic_write(
            folder / COVERAGE, json.dumps({"days": [[a.isoformat(), b.isoformat()] for a, b in ranges]}) + "\n"
        )
    return len(raw_bars)


def _iso(ts_ns: int) -> str:
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.isoformat().replace("+00:00", "Z")


# Reading ----------------------------------------------------------------------------------------------


def _month_files(folder: Path, first: date, last: date) -> list[Path]:
    lo, hi = f"{first:%Y-%m}", f"{last:%Y-%m}"
    return sorted(p for p in folder.glob("*.csv") if lo <= p.stem <= hi)


def bars(
    symbols: Sequence[str] | str,
    start: date | str,
    end: date | str,
    timeframe: str,
    *,
    feed: str = "iex",
    data_dir: str | Path | None = None,
    allow_missing: bool = False,
) -> BarData:
    """The cached bars of ``symbols`` from ``start`` to ``end`` (New York days, inclusive) as one
    :class:`~desk.data.loaders.BarData` for a backtest. Reads only local files.

    Raises :class:`CacheMiss` naming the ``desk data fetch`` command to run when some days were never
    fetched (``allow_missing=True`` returns what there is instead).
    """
    if isinstance(symbols, str):
        symbols = [s for s in symbols.split(",") if s]
    first = start if isinstance(start, date) else date.fromisoformat(start)
    last = end if isinstance(end, date) else date.fromisoformat(end)
    missing: dict[str, list[tuple[date, date]]] = {}
    files: list[Path] = []
    for symbol in symbols:
        folder = symbol_dir(data_dir, feed, timeframe, symbol)
        gaps = missing_ranges(folder, first, last)
        if gaps:
            missing[symbol] = gaps
        files += _month_files(folder, first, last)
    if missing and not allow_missing:
        what = "; ".join(
            f"{s}: " + ", ".join(f"{a}..{b}" if a != b else f"{a}" for a, b in r) for s, r in missing.items()
        )
        raise CacheMiss(
            f"not cached ({feed} {timeframe}): {what}. Run: desk data fetch {','.join(missing)} "
            f"--start {first} --end {last} --timeframe {timeframe} --feed {feed}"
            + (f" --data-dir {data_dir}" if data_dir is not None else ""),
            missing,
        )
    if not files:
        return BarData.empty("alpaca-csv")
    data = load_many(files)
    lo, hi = day_bounds_ns(first, last)
    out = data.select(symbols, lo, hi)
    out._intervals = {s: TIMEFRAMES[timeframe] * 1_000_000_000 for s in symbols}
    return out


@dataclass(frozen=True)
class CacheEntry:
    feed: str
    timeframe: str
    symbol: str
    ranges: list[tuple[date, date]]
    files: int
    bars: int
    bytes: int
    path: Path

    def to_json(self) -> dict[str, Any]:
        return {
            "feed": self.feed,
            "timeframe": self.timeframe,
            "symbol": self.symbol,
            "ranges": [[a.isoformat(), b.isoformat()] for a, b in self.ranges],
            "files": self.files,
            "bars": self.bars,
            "bytes": self.bytes,
            "path": str(self.path),
        }


def listing(data_dir: str | Path | None = None) -> list[CacheEntry]:
    """What is cached, one entry per feed/timeframe/symbol (bars counted by lines, no parsing)."""
    root = cache_root(data_dir)
    out: list[CacheEntry] = []
    if not root.is_dir():
        return out
    for folder in sorted(p for p in root.glob("*/*/*") if p.is_dir()):
        feed, timeframe, symbol = folder.parts[-3:]
        files = sorted(folder.glob("*.csv"))
        count = 0
        size = 0
        for path in files:
            size += path.stat().st_size
            with path.open("rb") as handle:
                count += max(0, sum(1 for _ in handle) - 1)
        out.append(CacheEntry(feed, timeframe, symbol, covered(folder), len(files), count, size, folder))
    return out
