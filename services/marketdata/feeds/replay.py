"""The ``replay`` feed: bars from a file, in file order, with the original spacing scaled.

The desk's own CSV has the header ``timestamp,symbol,open,high,low,close,volume``; ``timestamp`` is
ISO-8601 (naive means UTC) or epoch seconds; its prices are kept exactly as written. Every other format
:mod:`desk.data.loaders` reads works too (Alpaca bars CSV — what ``desk data fetch`` caches —, Alpaca
bars JSON, a Yahoo CSV), read through those loaders and replayed in time order. Rows that cannot be
used are returned as :class:`BadRow` (line number and reason) for the service to log, and skipped.
Parsing is pure: it takes lines of text.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

from desk.bus import subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.core import marketdata
from desk.core.marketdata import DEFAULT_INTERVAL_NS, REPLAY_SOURCE, Tick, replay_tick
from desk.data import loaders
from desk.v1 import marketdata_pb2
from services.marketdata.feeds.base import Scheduled

SOURCE = REPLAY_SOURCE
HEADER = ["timestamp", "symbol", "open", "high", "low", "close", "volume"]
__all__ = [
    "DEFAULT_INTERVAL_NS",
    "BadRow",
    "ReplayData",
    "ReplayFeed",
    "ReplayFileError",
    "ReplayRow",
    "delays",
    "infer_intervals",
    "parse_replay",
    "parse_timestamp",
]


class ReplayFileError(ValueError):
    """The file as a whole cannot be replayed (no or wrong header, no usable row)."""


@dataclass(frozen=True)
class ReplayRow:
    line: int
    ts_ns: int
    symbol: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str


@dataclass
class ReplayData:
    rows: list[ReplayRow] = field(default_factory=list)
    bad_rows: list[BadRow] = field(default_factory=list)


#: ISO-8601 (naive = UTC) or epoch seconds (may have decimals) -> epoch ns; shared with desk.data.loaders
parse_timestamp = loaders.parse_timestamp


def _row(line: int, cells: list[str]) -> ReplayRow:
    if len(cells) != len(HEADER):
        raise ValueError(f"expected {len(HEADER)} columns, got {len(cells)}")
    ts_text, symbol, *numbers = (c.strip() for c in cells)
    ts_ns = parse_timestamp(ts_text)
    if not subjects.SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol {symbol!r} is not a valid symbol")
    try:
        open_, high, low, close = (
            parse_decimal(name, value) for name, value in zip(HEADER[2:6], numbers[:4], strict=True)
        )
        volume = parse_decimal("volume", numbers[4], positive=False)
    except DeskError as err:
        raise ValueError(err.message) from None
    assert open_ is not None and high is not None and low is not None and close is not None and volume is not None
    if volume < 0:
        raise ValueError(f"volume must not be negative, got {numbers[4]}")
    if not (low <= min(open_, close) and max(open_, close) <= high):
        raise ValueError(f"inconsistent bar: low {low} <= open {open_}, close {close} <= high {high} does not hold")
    return ReplayRow(line, ts_ns, symbol, open_, high, low, close, volume)


def parse_replay(lines: Iterable[str]) -> ReplayData:
    """Parse the file's text; raises :class:`ReplayFileError` when the header is missing or unknown."""
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None:
        raise ReplayFileError("the file is empty (expected the header " + ",".join(HEADER) + ")")
    header = next(csv.reader([first]), [])
    if [h.strip().lower() for h in header] != HEADER:
        if loaders.detect(first) is None:
            raise ReplayFileError(
                f"bad header {','.join(header)!r}: expected {','.join(HEADER)!r} "
                "(or another format desk.data.loaders reads)"
            )
        return _from_loaders(first, iterator, getattr(lines, "name", "<replay>"))
    reader = csv.reader(iterator)
    data = ReplayData()
    for cells in reader:
        line = reader.line_num + 1
        if not cells or all(not c.strip() for c in cells):
            continue
        try:
            data.rows.append(_row(line, cells))
        except ValueError as exc:
            data.bad_rows.append(BadRow(line, str(exc)))
    return data


def _from_loaders(first: str, rest: Iterator[str], name: str) -> ReplayData:
    """Any other bar format, through :func:`desk.data.loaders.parse_lines`, in time order."""
    import itertools
    from pathlib import Path

    try:
        bars = loaders.parse_lines(
            itertools.chain([first], rest),
            name=Path(str(name)).name,
            symbol=loaders.symbol_from_name(Path(str(name))),
            errors="skip",
        )
    except loaders.BarFileError as err:
        raise ReplayFileError(str(err)) from None
    data = ReplayData(bad_rows=[BadRow(line, reason) for line, reason in bars.report.skipped])
    for index, bar in enumerate(bars):
        data.rows.append(
            ReplayRow(index + 2, bar.start_ns, bar.symbol, bar.open, bar.high, bar.low, bar.close, bar.volume)
        )
    return data


def infer_intervals(rows: list[ReplayRow]) -> dict[str, int]:
    """Bar length per symbol: the smallest positive gap between its bars (1 minute if unknown)."""
    return marketdata.infer_intervals((row.symbol, row.ts_ns) for row in rows)


def delays(rows: list[ReplayRow], speed: float, pace: float = 0.0) -> list[float]:
    """Seconds to wait before each row: the original gap divided by ``speed`` (0 = no waiting), or,
    with ``pace`` > 0, ``pace`` seconds before every row after the first whatever the file's spacing
    (bars of the same time included: each bar gets its own ``pace``, so a strategy has that long to
    react to one bar before the next one, of any symbol, is published).

    The first row is due at once; a timestamp going backwards is due at once too (without ``pace``).
    """
    out: list[float] = []
    previous: int | None = None
    for row in rows:
        if pace > 0:
            out.append(0.0 if previous is None else pace)
        elif speed <= 0 or previous is None:
            out.append(0.0)
        else:
            out.append(max(0, row.ts_ns - previous) / 1e9 / speed)
        previous = row.ts_ns
    return out


class ReplayFeed:
    """Replays ``data`` once, or forever with ``loop`` (each pass shifted to follow the last);
    ``pace`` > 0: one row every ``pace`` seconds instead of the file's spacing / ``speed``."""

    def __init__(self, data: ReplayData, speed: float, loop: bool = False, pace: float = 0.0) -> None:
        if not data.rows:
            raise ReplayFileError("no usable row in the file")
        self.rows = data.rows
        self.bad_rows = data.bad_rows
        self.speed = speed
        self.pace = pace
        self.loop = loop
        self.intervals = infer_intervals(self.rows)
        self._delays = delays(self.rows, speed, pace)
        first, last = self.rows[0].ts_ns, max(r.ts_ns for r in self.rows)
        # A loop's next pass starts one bar after the last one of this pass, so time only moves on.
        self.pass_ns = last - first + min(self.intervals.values())

    @property
    def name(self) -> str:
        return SOURCE

    @property
    def symbols(self) -> list[str]:
        return list(dict.fromkeys(r.symbol for r in self.rows))

    def initial(self) -> list[marketdata_pb2.Trade]:
        """Nothing: replayed prices become known as their bars are replayed."""
        return []

    def schedule(self) -> Iterator[Scheduled]:
        passes = 0
        while True:
            offset = passes * self.pass_ns
            for i, (row, delay) in enumerate(zip(self.rows, self._delays, strict=True)):
                if i == 0 and passes > 0 and self.pace > 0:
                    delay = self.pace
                elif i == 0 and passes > 0 and self.speed > 0:
                    delay = (self.pass_ns - (self.rows[-1].ts_ns - self.rows[0].ts_ns)) / 1e9 / self.speed
                yield Scheduled(delay, self.tick(row, offset))
            passes += 1
            if not self.loop:
                return

    def tick(self, row: ReplayRow, offset_ns: int = 0) -> Tick:
        """The bar of ``row`` with its quote and trade (:func:`desk.core.marketdata.replay_tick`)."""
        return replay_tick(
            row.symbol,
            row.open,
            row.high,
            row.low,
            row.close,
            row.volume,
            row.ts_ns + offset_ns,
            self.intervals[row.symbol],
            SOURCE,
        )
