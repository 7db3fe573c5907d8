"""``desk data fetch``: Alpaca bars through alpaca-py's ``StockHistoricalDataClient`` into the cache.

Only the days the cache lacks are asked for (:func:`desk.data.cache.missing_ranges`); symbols missing the
same days share one multi-symbol request. A range is asked for one calendar month at a time (one
``get_stock_bars`` call, which follows ``next_page_token`` itself) and written when it arrives, so an
interrupted fetch keeps what it got and a progress line can be printed per month.

Settings (environment): ``ALPACA_API_KEY``, ``ALPACA_SECRET_KEY`` (the keys), ``ALPACA_DATA_URL`` (base URL
of the data API, e.g. a local fake in tests; default Alpaca's).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

with warnings.catch_warnings():
    # alpaca-py 0.44 imports websockets.legacy (deprecated since websockets 14) from alpaca.data
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.enums import Adjustment, DataFeed
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

from desk.data.cache import TIMEFRAMES, day_bounds_ns, missing_ranges, store, symbol_dir
from desk.data.loaders import NEW_YORK, parse_timestamp

__all__ = ["FetchError", "FetchResult", "fetch", "make_client"]

#: a day counts as complete (and is recorded as cached) this long after it ends in New York
SETTLE = timedelta(minutes=15)


class FetchError(RuntimeError):
    """Alpaca refused (``status``/``code`` from its error body) or the settings are incomplete."""

    def __init__(self, message: str, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class FetchResult:
    requests: int = 0  # get_stock_bars calls (each may be several HTTP pages)
    bars: int = 0  # bars downloaded
    fetched: list[tuple[str, date, date]] = field(default_factory=list)  # (symbols, first, last) asked for
    cached_days: int = 0  # days of the asked range already in the cache (not downloaded)


def make_client(
    api_key: str | None = None, secret_key: str | None = None, url: str | None = None
) -> StockHistoricalDataClient:
    """A raw-data ``StockHistoricalDataClient`` from arguments or ALPACA_API_KEY/ALPACA_SECRET_KEY/ALPACA_DATA_URL."""

    key = api_key or os.environ.get("ALPACA_API_KEY")
    secret = secret_key or os.environ.get("ALPACA_SECRET_KEY")
    if not key or not secret:
        raise FetchError("set ALPACA_API_KEY and ALPACA_SECRET_KEY (an Alpaca account's keys; paper keys work)")
    return StockHistoricalDataClient(key, secret, raw_data=True, url_override=url or os.environ.get("ALPACA_DATA_URL"))


def _timeframe(name: str) -> TimeFrame:
    units = {"Min": TimeFrameUnit.Minute, "Hour": TimeFrameUnit.Hour, "Day": TimeFrameUnit.Day}
    for suffix, unit in units.items():
        if name.endswith(suffix):
            return TimeFrame(int(name.removesuffix(suffix)), unit)
    raise ValueError(f"timeframe {name!r} is not one of {', '.join(TIMEFRAMES)}")


def _months(first: date, last: date) -> list[tuple[date, date]]:
    out = []
    cursor = first
    while cursor <= last:
        next_month = (cursor.replace(day=1) + timedelta(days=32)).replace(day=1)
        out.append((cursor, min(last, next_month - timedelta(days=1))))
        cursor = next_month
    return out


def _complete_until(now: datetime) -> date:
    """The last New York day that had ended (plus SETTLE) at ``now``."""
    return (now - SETTLE).astimezone(NEW_YORK).date() - timedelta(days=1)


def fetch(
    symbols: Sequence[str],
    start: date,
    end: date,
    timeframe: str,
    *,
    feed: str = "iex",
    data_dir: str | Path | None = None,
    client: Any = None,
    progress: Callable[[str], None] | None = None,
    now: datetime | None = None,
) -> FetchResult:
    """Fill the cache with ``symbols``' bars of New York days ``start``..``end`` (inclusive).

    ``client``: a ``StockHistoricalDataClient`` made with ``raw_data=True`` (default: :func:`make_client`).
    """
    if end < start:
        raise ValueError(f"--end {end} is before --start {start}")
    tf = _timeframe(timeframe)
    if timeframe not in TIMEFRAMES:
        raise ValueError(f"timeframe {timeframe!r} is not one of {', '.join(TIMEFRAMES)}")
    symbols = list(dict.fromkeys(s.strip().upper() for s in symbols if s.strip()))
    complete_until = _complete_until(now or datetime.now(UTC))
    result = FetchResult()
    groups: dict[tuple[tuple[date, date], ...], list[str]] = {}
    total_days = (end - start).days + 1
    for symbol in symbols:
        gaps = missing_ranges(symbol_dir(data_dir, feed, timeframe, symbol), start, end)
        result.cached_days += total_days - sum((b - a).days + 1 for a, b in gaps)
        if gaps:
            groups.setdefault(tuple(gaps), []).append(symbol)
    chunks = [(group, month) for gaps, group in groups.items() for gap in gaps for month in _months(*gap)]
    if not chunks:
        return result
    if client is None:
        client = make_client()
    for number, (group, (first, last)) in enumerate(chunks, 1):
        lo, hi = day_bounds_ns(first, last)
        request = StockBarsRequest(
            symbol_or_symbols=group,
            timeframe=tf,
            feed=DataFeed(feed),
            adjustment=Adjustment.RAW,
            start=datetime.combine(first, time(0), NEW_YORK).astimezone(UTC),
            end=datetime.combine(last + timedelta(days=1), time(0), NEW_YORK).astimezone(UTC) - timedelta(seconds=1),
        )
        try:
            raw = client.get_stock_bars(request)
        except APIError as err:
            raise FetchError(
                f"Alpaca refused bars of {','.join(group)} {first}..{last}: HTTP {err.status_code} {err.message}",
                err.status_code,
                _code(err),
            ) from None
        count = 0
        for symbol in group:
            items = [b for b in (raw.get(symbol) or []) if lo <= parse_timestamp(str(b["t"])) < hi]
            count += store(symbol_dir(data_dir, feed, timeframe, symbol), symbol, items, first, last, complete_until)
        result.requests += 1
        result.bars += count
        result.fetched.append((",".join(group), first, last))
        if progress is not None:
            progress(f"[{number}/{len(chunks)}] {','.join(group)} {first}..{last}: {count:,} bars")
    return result


def _code(err: Any) -> int | None:
    try:
        return int(err.code)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
