"""Bar files in, one columnar in-memory form out: :class:`BarData`.

Formats, told apart by their header (or a leading ``{`` for JSON) — :func:`detect`:

``desk``
    The desk's own CSV (``services/marketdata/data/sample_bars.csv``, what the replay feed and
    ``strategy_sdk.testing.bars_from_csv`` read): ``timestamp,symbol,open,high,low,close,volume``
    in any column order; ``start_ns`` may stand for ``timestamp``; ``volume`` may be missing.
``alpaca-csv``
    Alpaca bars as ``BarSet.df.to_csv()`` writes them (and as the fetch cache stores them):
    ``symbol,timestamp,open,high,low,close,volume,trade_count,vwap``.
``yahoo``
    ``Date,Open,High,Low,Close,Adj Close,Volume`` (or ``Datetime`` for intraday), one symbol per
    file: the symbol comes from the ``symbol`` argument, else the file name (``AAPL.csv`` -> AAPL,
    ``^GSPC.csv`` -> GSPC). A day is stamped at midnight New York time, as Alpaca stamps daily bars.
    Yahoo writes ``null`` in every column of a day it has no prices for: such a row is an error
    unless ``skip_null=True`` (``desk ... --skip-null``).
``alpaca-json``
    The v2 ``/stocks/bars`` response ``{"bars": {"AAPL": [{"t","o","h","l","c","v","n","vw"}, ...]},
    "next_page_token": ...}``, or ``/stocks/{symbol}/bars``'s ``{"bars": [...], "symbol": "AAPL"}``.

Timestamps: ISO-8601 (naive means UTC; any number of fraction digits), epoch seconds, or (``start_ns``)
epoch nanoseconds. Files may be gzip-compressed (``.gz``).

Errors name the file, the row (the line number in the file, the header being line 1) and the column:
``bars.csv row 17, column close: 'abc' is not a number``. With ``errors="skip"`` bad rows are skipped
and listed in :attr:`BarData.report` instead. Bars come out sorted by time (stable: rows with the same
time keep their file order); rows out of order are counted, a repeated (symbol, time) keeps the first
row and is reported.

Memory: a bar costs 60 bytes (int64 time, int32 symbol index, 6 float64 columns: open, high, low, close,
volume, vwap); :class:`strategy_sdk.Bar` objects with Decimals are made one at a time by
:meth:`BarData.__iter__`.
"""

from __future__ import annotations

import csv
import decimal
import gzip
import io
import itertools
import json
import math
import operator
import re
from array import array
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import IO, Any, Literal
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from strategy_sdk.models import Bar, new_bar

__all__ = ["BarData", "BarFileError", "LoadReport", "detect", "load", "load_many", "parse_lines", "parse_timestamp"]

Format = Literal["desk", "alpaca-csv", "yahoo", "alpaca-json"]
Errors = Literal["raise", "skip"]
FORMATS: tuple[Format, ...] = ("desk", "alpaca-csv", "yahoo", "alpaca-json")

NEW_YORK = ZoneInfo("America/New_York")
DAY_NS = 86_400 * 1_000_000_000
DEFAULT_INTERVAL_NS = 60 * 1_000_000_000
CHUNK = 8192  # rows turned into Python objects at a time when iterating
#: Files this large or larger are read by pandas' C parser when clean (smaller: importing pandas costs more).
FAST_CSV_BYTES = 2 << 20
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_INF = math.inf
_SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")  # as desk.bus.subjects.SYMBOL_RE
_FRACTION_RE = re.compile(r"(\.\d{6})\d+")
_NUMBER_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
I32 = npt.NDArray[np.int32]


class BarFileError(ValueError):
    """A file that cannot be loaded, with where: ``file``, ``row`` (line number) and ``column``."""

    def __init__(self, file: str, message: str, row: int | None = None, column: str | None = None) -> None:
        where = file
        if row is not None:
            where += f" row {row}"
        if column is not None:
            where += f", column {column}"
        super().__init__(f"{where}: {message}")
        self.file, self.row, self.column, self.reason = file, row, column, message


@dataclass
class LoadReport:
    """What loading noticed: rows skipped (``errors="skip"`` / ``skip_null``), order, duplicates."""

    skipped: list[tuple[int, str]] = field(default_factory=list)  # (row, reason)
    null_rows: int = 0  # Yahoo 'null' rows skipped
    out_of_order: int = 0  # rows earlier than the previous row of the same symbol
    duplicates: int = 0  # rows repeating a (symbol, time) already seen; the first is kept
    duplicate_examples: list[tuple[str, int]] = field(default_factory=list)  # (symbol, ts_ns), first few

    def merge(self, other: LoadReport) -> None:
        self.skipped += other.skipped
        self.null_rows += other.null_rows
        self.out_of_order += other.out_of_order
        self.duplicates += other.duplicates
        self.duplicate_examples = (self.duplicate_examples + other.duplicate_examples)[:10]

    def summary(self) -> str:
        parts = []
        if self.skipped:
            parts.append(
                f"{len(self.skipped)} bad rows skipped (first: row {self.skipped[0][0]}: {self.skipped[0][1]})"
            )
        if self.null_rows:
            parts.append(f"{self.null_rows} Yahoo 'null' rows skipped")
        if self.out_of_order:
            parts.append(f"{self.out_of_order} rows out of time order (sorted)")
        if self.duplicates:
            sym, ts = self.duplicate_examples[0]
            parts.append(f"{self.duplicates} duplicate (symbol, time) rows dropped (first: {sym} {_iso(ts)})")
        return "; ".join(parts)


def _iso(ts_ns: int) -> str:
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.isoformat().replace("+00:00", "Z")


def _decimal(value: float) -> Decimal:
    """The shortest decimal that reads back as ``value`` ("175.1", not 175.099999...)."""
    if value.is_integer() and abs(value) < 1e15:
        return Decimal(int(value))
    return Decimal(repr(value))


def _no_values(n: int) -> F64:
    """``n`` NaNs that take no memory (a zero-stride, read-only view)."""
    view: F64 = np.broadcast_to(np.float64(np.nan), (n,))
    return view


def _pick(column: F64, index: npt.NDArray[Any]) -> F64:
    """``column[index]``, keeping an all-NaN view a view."""
    if column.strides == (0,):
        return _no_values(len(index))
    picked: F64 = column[index]
    return picked


#: :func:`_decimals` makes ``n * 10**-k`` here: exact for any 16-digit ``n`` whatever the caller's context.
_EXACT = decimal.Context(prec=40, Emax=999_999, Emin=-999_999, traps=[])
_POWERS = [Decimal(1).scaleb(-k) for k in range(7)]  # 1, 0.1, ... 1E-6
_FAST_LIMIT = 1e9  # below it, a float with at most 6 decimals has exactly one such decimal (its ulp < 1e-6)


def _decimals(values: F64) -> npt.NDArray[Any]:
    """``[_decimal(x) for x in values]`` as an object array, without formatting and parsing a string each.

    For ``|x| < 1e9`` the shortest decimal that reads back as ``x`` (what ``repr`` writes) is ``n / 10**k``
    for the smallest ``k <= 6`` with ``float(n / 10**k) == x``, ``n = rint(x * 10**k)`` (an IEEE division
    of two exact integers is correctly rounded, as ``float("n e-k")`` is; the ulp is below 10**-k, so no
    other ``k``-decimal number reads back as ``x``, and ``n`` has no trailing zero when ``k`` is the smallest).
    That is ``Decimal(n) * 10**-k``: the same coefficient and exponent as ``Decimal(repr(x))`` (for
    ``k = 0``, ``Decimal(int(x))``, as :func:`_decimal`). Anything else (larger, more decimals, NaN)
    goes through :func:`_decimal`."""
    out = np.empty(len(values), dtype=object)
    done = np.zeros(len(values), dtype=bool)
    with np.errstate(invalid="ignore", over="ignore"):
        left = np.flatnonzero(np.abs(values) < _FAST_LIMIT)
        for k, power in enumerate(_POWERS):
            if not len(left):
                break
            part = values[left]
            scale = float(10**k)
            n = np.rint(part * scale)
            hit = (n / scale) == part
            if not hit.any():
                continue
            ints = map(Decimal, n[hit].astype(np.int64).tolist())
            if k == 0:
                made = list(ints)
            else:
                with decimal.localcontext(_EXACT):  # the product n * 10**-k is exact
                    made = list(map(operator.mul, ints, itertools.repeat(power)))
            out[left[hit]] = np.fromiter(made, dtype=object, count=len(made))  # a list: numpy probes each item
            done[left[hit]] = True
            left = left[~hit]
    missing = np.flatnonzero(~done)
    if len(missing):
        out[missing] = np.fromiter(map(_decimal, values[missing].tolist()), dtype=object, count=len(missing))
    return out


def _decimal_columns(*columns: F64) -> list[list[Decimal]]:
    """Float columns as lists of Decimals (:func:`_decimal`), each distinct value converted once."""
    joined = np.concatenate(columns) if len(columns) > 1 else columns[0]
    unique, inverse = np.unique(joined, return_inverse=True)
    table = _decimals(unique)
    values = table[inverse]
    size = len(columns[0])
    return [values[i * size : (i + 1) * size].tolist() for i in range(len(columns))]


class BarData:
    """Bars in columns, sorted by time. ``len()``, iterate for :class:`strategy_sdk.Bar` objects
    (one at a time), or read the numpy columns directly."""

    __slots__ = (
        "_intervals",
        "close",
        "high",
        "low",
        "open",
        "report",
        "source",
        "sym",
        "symbols",
        "trade_count",
        "ts_ns",
        "volume",
        "vwap",
    )

    def __init__(
        self,
        symbols: Sequence[str],
        sym: I32,
        ts_ns: I64,
        open_: F64,
        high: F64,
        low: F64,
        close: F64,
        volume: F64,
        vwap: F64 | None = None,
        trade_count: F64 | None = None,
        *,
        report: LoadReport | None = None,
        source: str = "",
        intervals: dict[str, int] | None = None,
    ) -> None:
        n = len(ts_ns)
        self.symbols = list(symbols)
        self.sym, self.ts_ns = sym, ts_ns
        self.open, self.high, self.low, self.close, self.volume = open_, high, low, close, volume
        # A column the source does not have is a read-only view of one NaN (no memory per bar).
        self.vwap = vwap if vwap is not None else _no_values(n)
        self.trade_count = trade_count if trade_count is not None else _no_values(n)
        self.report = report or LoadReport()
        self.source = source
        self._intervals = intervals

    @classmethod
    def empty(cls, source: str = "") -> BarData:
        f: F64 = np.empty(0, dtype=np.float64)
        return cls([], np.empty(0, dtype=np.int32), np.empty(0, dtype=np.int64), f, f, f, f, f, f, f, source=source)

    def __len__(self) -> int:
        return len(self.ts_ns)

    def __repr__(self) -> str:
        span = f" {_iso(int(self.ts_ns[0]))}..{_iso(int(self.ts_ns[-1]))}" if len(self) else ""
        return f"<BarData {len(self)} bars of {','.join(self.symbols)}{span}>"

    @property
    def nbytes(self) -> int:
        return sum(
            a.nbytes
            for a in (
                self.sym,
                self.ts_ns,
                self.open,
                self.high,
                self.low,
                self.close,
                self.volume,
                self.vwap,
                self.trade_count,
            )
            if a.strides != (0,)
        )

    def symbol_list(self) -> list[str]:
        """Symbols that have at least one bar, in symbol-table order."""
        present = np.unique(self.sym)
        return [self.symbols[i] for i in present.tolist()]

    def intervals(self) -> dict[str, int]:
        """Bar length per symbol: given by the source, else the smallest positive gap between its bars."""
        if self._intervals is None:
            out: dict[str, int] = {}
            for index, symbol in enumerate(self.symbols):
                ts = self.ts_ns[self.sym == index]
                if len(ts) == 0:
                    continue
                gaps = np.diff(ts)
                gaps = gaps[gaps > 0]
                out[symbol] = int(gaps.min()) if len(gaps) else DEFAULT_INTERVAL_NS
            self._intervals = out
        return self._intervals

    def _take(self, index: npt.NDArray[Any]) -> BarData:
        return BarData(
            self.symbols,
            self.sym[index],
            self.ts_ns[index],
            self.open[index],
            self.high[index],
            self.low[index],
            self.close[index],
            self.volume[index],
            _pick(self.vwap, index),
            _pick(self.trade_count, index),
            report=self.report,
            source=self.source,
            intervals=self._intervals,
        )

    def select(
        self, symbols: Iterable[str] | None = None, start_ns: int | None = None, end_ns: int | None = None
    ) -> BarData:
        """Bars of ``symbols`` with ``start_ns <= time < end_ns`` (each bound optional)."""
        mask = np.ones(len(self), dtype=bool)
        if symbols is not None:
            wanted = [self.symbols.index(s) for s in symbols if s in self.symbols]
            mask &= np.isin(self.sym, np.array(wanted, dtype=np.int32))
        if start_ns is not None:
            mask &= self.ts_ns >= start_ns
        if end_ns is not None:
            mask &= self.ts_ns < end_ns
        if bool(mask.all()):
            return self  # nothing left out: no copy (the columns are never written to)
        return self._take(np.flatnonzero(mask))

    def _chunks(self, names: Sequence[str]) -> Iterator[Iterator[tuple[Any, ...]]]:
        """Columns as Python values, :data:`CHUNK` rows at a time (never a million objects at once)."""
        for start in range(0, len(self), CHUNK):
            stop = start + CHUNK
            yield zip(*(getattr(self, name)[start:stop].tolist() for name in names), strict=True)

    def __iter__(self) -> Iterator[Bar]:
        """:class:`strategy_sdk.Bar` objects in time order, made one at a time."""
        intervals = self.intervals()
        symbols = self.symbols
        source = self.source
        default = DEFAULT_INTERVAL_NS
        make = new_bar  # Bar(...) without the frozen dataclass's per-field object.__setattr__
        for start in range(0, len(self), CHUNK):
            stop = start + CHUNK
            # Prices repeat (a tick grid): each distinct value of the chunk becomes a Decimal once.
            o, h, lo, c = _decimal_columns(
                self.open[start:stop], self.high[start:stop], self.low[start:stop], self.close[start:stop]
            )
            (v,) = _decimal_columns(self.volume[start:stop])
            vw_col, n_col = self.vwap[start:stop], self.trade_count[start:stop]
            if np.isnan(vw_col).all():
                vw: Iterable[Decimal | None] = itertools.repeat(None, len(o))
            else:
                vw = [None if math.isnan(x) else _decimal(x) for x in vw_col.tolist()]
            counts: Iterable[int] = (
                itertools.repeat(0, len(o))
                if np.isnan(n_col).all()
                else [0 if math.isnan(x) else int(x) for x in n_col.tolist()]
            )
            for s, ts, o_, h_, l_, c_, v_, vw_, n_ in zip(
                self.sym[start:stop].tolist(), self.ts_ns[start:stop].tolist(), o, h, lo, c, v, vw, counts, strict=True
            ):
                symbol = symbols[s]
                yield make(symbol, o_, h_, l_, c_, v_, ts, intervals.get(symbol, default), vw_, n_, source)

    def rows(self) -> Iterator[tuple[str, int, float, float, float, float, float]]:
        """Plain tuples ``(symbol, start_ns, open, high, low, close, volume)`` — the cheapest iteration."""
        symbols = self.symbols
        for chunk in self._chunks(("sym", "ts_ns", "open", "high", "low", "close", "volume")):
            for s, ts, o, h, lo, c, v in chunk:
                yield symbols[s], ts, o, h, lo, c, v

    @staticmethod
    def concat(parts: Sequence[BarData], source: str = "") -> BarData:
        """One BarData from several (symbol tables merged), sorted by time, duplicates dropped."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return BarData.empty(source)
        symbols: list[str] = []
        index: dict[str, int] = {}
        remapped: list[I32] = []
        report = LoadReport()
        for part in parts:
            table = np.array([index.setdefault(s, len(index)) for s in part.symbols], dtype=np.int32)
            remapped.append(table[part.sym])
            report.merge(part.report)
        symbols = list(index)

        def joined(name: str) -> F64:
            columns = [getattr(p, name) for p in parts]
            if all(c.strides == (0,) for c in columns):
                return _no_values(sum(len(c) for c in columns))
            return np.concatenate(columns)

        out = BarData(
            symbols,
            np.concatenate(remapped),
            np.concatenate([p.ts_ns for p in parts]),
            *(joined(name) for name in ("open", "high", "low", "close", "volume", "vwap", "trade_count")),
            report=report,
            source=source or parts[0].source,
        )
        return _finish(out, count_order=False)


def _finish(data: BarData, count_order: bool = True) -> BarData:
    """Sort by time (stable), count out-of-order rows and drop repeated (symbol, time) rows."""
    n = len(data)
    if n == 0:
        return data
    if count_order:
        # rows earlier than the previous row of the same symbol, in file order
        by_symbol = np.argsort(data.sym, kind="stable")
        ts_sorted, sym_sorted = data.ts_ns[by_symbol], data.sym[by_symbol]
        same = sym_sorted[1:] == sym_sorted[:-1]
        data.report.out_of_order += int(np.count_nonzero(same & (ts_sorted[1:] < ts_sorted[:-1])))
    if n > 1 and not bool(np.all(data.ts_ns[1:] >= data.ts_ns[:-1])):
        order = np.argsort(data.ts_ns, kind="stable")
        data = data._take(order)
    # duplicates: the same symbol at the same time (adjacent after a stable sort by (time, symbol))
    key = np.lexsort((data.sym, data.ts_ns))
    ts_k, sym_k = data.ts_ns[key], data.sym[key]
    dup = np.zeros(n, dtype=bool)
    dup[key[1:]] = (ts_k[1:] == ts_k[:-1]) & (sym_k[1:] == sym_k[:-1])
    count = int(np.count_nonzero(dup))
    if count:
        report = data.report
        report.duplicates += count
        for i in np.flatnonzero(dup)[:10].tolist():
            report.duplicate_examples.append((data.symbols[int(data.sym[i])], int(data.ts_ns[i])))
        del report.duplicate_examples[10:]
        data = data._take(np.flatnonzero(~dup))
    return data


# Timestamps -----------------------------------------------------------------------------------------


def parse_timestamp(text: str) -> int:
    """ISO-8601 (naive = UTC, any fraction digits) or epoch seconds (may have decimals) -> epoch ns."""
    text = text.strip()
    if not text:
        raise ValueError("timestamp is empty")
    if _NUMBER_RE.match(text):
        seconds = Decimal(text)
        if seconds < 0:
            raise ValueError(f"timestamp {text!r} is not a valid epoch time")
        return int(seconds * 1_000_000_000)
    extra_ns = 0
    match = _FRACTION_RE.search(text)
    if match:  # nanoseconds: datetime keeps microseconds, the rest is added back
        digits = text[match.start() + 7 : match.end()]
        extra_ns = int((digits + "000")[:3])
        text = text[: match.start() + 7] + text[match.end() :]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"timestamp {text!r} is neither ISO-8601 nor epoch seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000 + extra_ns


def _parse_date(text: str) -> int:
    """A Yahoo ``Date`` (YYYY-MM-DD or M/D/YYYY) -> midnight New York, in epoch ns; a ``Datetime`` as ISO."""
    text = text.strip()
    if "/" in text:
        month, day, year = (int(p) for p in text.split("/"))
        day_ = date(year, month, day)
    elif len(text) == 10:
        day_ = date.fromisoformat(text)
    else:
        return parse_timestamp(text)
    moment = datetime.combine(day_, time(0), NEW_YORK)
    return int((moment - _EPOCH) / timedelta(microseconds=1)) * 1_000


# Detection --------------------------------------------------------------------------------------------


def _classify_header(header: Sequence[str]) -> Format | None:
    names = [h.strip() for h in header]
    lower = [h.lower() for h in names]
    if lower and lower[0].startswith("\ufeff"):
        lower[0] = lower[0][1:]
    cols = set(lower)
    if {"open", "high", "low", "close"} <= cols:
        if "symbol" in cols and ("timestamp" in cols or "start_ns" in cols):
            return "alpaca-csv" if {"trade_count", "vwap"} & cols else "desk"
        if ("date" in cols or "datetime" in cols) and "symbol" not in cols:
            return "yahoo"
    return None


def detect(first_line: str) -> Format | None:
    """The format of a file from its first line (None when unknown)."""
    stripped = first_line.lstrip("\ufeff \t\r\n")
    if stripped.startswith("{"):
        return "alpaca-json"
    header = next(csv.reader([first_line]), [])
    return _classify_header(header)


def _open_text(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def symbol_from_name(path: Path) -> str | None:
    stem = path.name
    while stem.lower().endswith((".gz", ".csv", ".txt", ".json")):
        stem = stem.rsplit(".", 1)[0]
    candidate = re.sub(r"[^A-Za-z0-9]", "", stem).upper()
    return candidate if _SYMBOL_RE.match(candidate) else None


# Loading ----------------------------------------------------------------------------------------------


def load(
    path: str | Path,
    *,
    symbol: str | None = None,
    format: Format | None = None,
    errors: Errors = "raise",
    skip_null: bool = False,
) -> BarData:
    """Bars from one file (any format above; see :func:`detect`), sorted by time.

    ``symbol`` names a Yahoo file's symbol (default: from the file name); ``errors="skip"`` skips bad rows
    (listed in ``report.skipped``) instead of raising :class:`BarFileError`; ``skip_null`` skips Yahoo's
    ``null`` rows. A directory loads every bar file under it (e.g. a fetch cache folder).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and not p.name.startswith(".")
            and p.name != "coverage.json"  # the fetch cache's index, not bars
            and p.name.endswith((".csv", ".csv.gz", ".json"))
        )
        if not files:
            raise BarFileError(str(path), "no bar files (*.csv, *.csv.gz, *.json) in this folder")
        return load_many(files, symbol=symbol, format=format, errors=errors, skip_null=skip_null)
    try:
        with _open_text(path) as handle:
            first = handle.readline()
            second = handle.readline()
            kind = format or detect(first)
            if kind in ("desk", "alpaca-csv") and path.stat().st_size >= FAST_CSV_BYTES:
                fast = _fast_csv(path, next(csv.reader([first]), []), second, kind)
                if fast is not None:
                    return fast
            handle.seek(0)
            return parse_lines(
                handle,
                name=path.name,
                symbol=symbol or symbol_from_name(path),
                format=format,
                errors=errors,
                skip_null=skip_null,
            )
    except OSError as exc:
        raise BarFileError(str(path), f"cannot read: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise BarFileError(str(path), f"not a text file ({exc.reason})") from None


def load_many(paths: Iterable[str | Path], **kwargs: Any) -> BarData:
    """Several files as one BarData (merged, sorted by time, duplicates across files dropped)."""
    parts = [load(p, **kwargs) for p in paths]
    return BarData.concat(parts, source=parts[0].source if parts else "")


def parse_lines(
    lines: Iterable[str],
    *,
    name: str = "<bars>",
    symbol: str | None = None,
    format: Format | None = None,
    errors: Errors = "raise",
    skip_null: bool = False,
) -> BarData:
    """Bars from lines of text (see :func:`load`); ``name`` is the file name used in errors."""
    iterator = iter(lines)
    first = next(iterator, None)
    if first is None or not first.strip():
        raise BarFileError(
            name, "the file is empty (expected a header such as timestamp,symbol,open,high,low,close,volume)"
        )
    kind = format or detect(first)
    if kind is None:
        raise BarFileError(
            name,
            f"bad header {first.strip()!r}: not a known bar format (expected the desk's "
            "timestamp,symbol,open,high,low,close,volume; Alpaca's symbol,timestamp,open,"
            "high,low,close,volume,trade_count,vwap; Yahoo's Date,Open,High,Low,Close,"
            "Adj Close,Volume; or Alpaca bars JSON)",
            row=1,
        )
    if kind == "alpaca-json":
        text = first + "".join(iterator)
        return _finish(_parse_json(text, name, errors))
    header = next(csv.reader([first]))
    rows = csv.reader(iterator)
    if kind == "yahoo":
        if symbol is None:
            raise BarFileError(
                name, "a Yahoo file has no symbol column and the file name is not a symbol: pass the symbol (--symbol)"
            )
        symbol = symbol.upper()
        if not _SYMBOL_RE.match(symbol):
            raise BarFileError(name, f"symbol {symbol!r} is not a valid symbol (A-Z, 0-9, at most 16)")
        return _finish(_parse_yahoo(header, rows, name, symbol, errors, skip_null))
    return _finish(_parse_csv(header, rows, name, kind, errors))


class _Columns:
    """Growing typed arrays (8 bytes a number, no Python objects per bar)."""

    def __init__(self) -> None:
        self.sym = array("i")
        self.ts = array("q")
        self.o, self.h, self.l, self.c, self.v = array("d"), array("d"), array("d"), array("d"), array("d")
        self.vw, self.n = array("d"), array("d")

    def finish(
        self, symbols: Sequence[str], source: str, report: LoadReport, intervals: dict[str, int] | None = None
    ) -> BarData:
        def f(a: array[float]) -> F64:
            return np.frombuffer(a, dtype=np.float64) if len(a) else np.empty(0, dtype=np.float64)

        return BarData(
            symbols,
            np.frombuffer(self.sym, dtype=np.int32) if len(self.sym) else np.empty(0, np.int32),
            np.frombuffer(self.ts, dtype=np.int64) if len(self.ts) else np.empty(0, np.int64),
            f(self.o),
            f(self.h),
            f(self.l),
            f(self.c),
            f(self.v),
            f(self.vw),
            f(self.n),
            report=report,
            source=source,
            intervals=intervals,
        )


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError
    return value


def _diagnose(cells: Sequence[str], columns: dict[str, int], file: str, line: int, parse_ts: Any) -> BarFileError:
    """The first problem of a row that failed the fast path, as a :class:`BarFileError`."""
    width = max(columns.values()) + 1
    if len(cells) < width:
        return BarFileError(file, f"expected {width} columns, got {len(cells)}", row=line)
    values: dict[str, float] = {}
    for col, i in columns.items():
        text = cells[i].strip()
        if col == "symbol":
            if not _SYMBOL_RE.match(text):
                return BarFileError(file, f"{text!r} is not a valid symbol (A-Z, 0-9, at most 16)", line, col)
            continue
        if col in ("timestamp", "start_ns", "date", "datetime"):
            try:
                parse_ts(text)
            except ValueError as exc:
                reason = str(exc) if "timestamp" in str(exc) or "epoch" in str(exc) else f"{text!r} is not a date"
                return BarFileError(file, reason, line, col)
            continue
        if col in ("trade_count", "vwap") and text == "":
            continue
        if text.lower() == "null" and col in ("open", "high", "low", "close", "volume", "adj close"):
            return BarFileError(
                file,
                "'null' (no price in the file for this row); pass --skip-null (skip_null=True) to skip such rows",
                line,
                col,
            )
        try:
            values[col] = _number(text)
        except ValueError:
            return BarFileError(file, f"{text!r} is not a number", line, col)
    if values.get("volume", 0.0) < 0:
        return BarFileError(
            file, f"volume must not be negative, got {cells[columns['volume']].strip()}", line, "volume"
        )
    o, h, lo, c = values["open"], values["high"], values["low"], values["close"]
    if not (lo <= min(o, c) and max(o, c) <= h):
        return BarFileError(
            file,
            f"inconsistent bar: low {lo} <= open {o}, close {c} <= high {h} does not hold",
            line,
            "low" if lo > min(o, c) else "high",
        )
    return BarFileError(file, "row cannot be used", line)


def _csv_columns(header: Sequence[str]) -> tuple[dict[str, int], bool]:
    """The index of each column the desk reads, by name, and whether the timestamps are epoch ns
    (``start_ns``) rather than ISO 8601 (``timestamp``); only one of the two is kept."""
    lower = [h.strip().lower().lstrip("\ufeff") for h in header]
    columns: dict[str, int] = {
        name: lower.index(name)
        for name in ("symbol", "timestamp", "start_ns", "open", "high", "low", "close", "volume", "trade_count", "vwap")
        if name in lower
    }
    epoch_ns = "timestamp" not in columns
    columns.pop("timestamp" if epoch_ns else "start_ns", None)
    return columns, epoch_ns


def _epoch_ns(text: str) -> int:
    if not text.strip().isdigit():
        raise ValueError(f"{text!r} is not epoch nanoseconds")
    return int(text)


def _parse_csv(header: Sequence[str], rows: Any, file: str, kind: Format, errors: Errors) -> BarData:
    """The exact row-by-row reader: every row checked, a bad one named (row, column) or skipped."""
    columns, epoch_ns = _csv_columns(header)
    ts_col = columns["start_ns"] if epoch_ns else columns["timestamp"]
    parse_ts = _epoch_ns if epoch_ns else parse_timestamp
    i_sym, i_o, i_h, i_l, i_c = (columns[k] for k in ("symbol", "open", "high", "low", "close"))
    i_v = columns.get("volume")
    i_n, i_vw = columns.get("trade_count"), columns.get("vwap")
    width = max(columns.values()) + 1
    cols = _Columns()
    report = LoadReport()
    sym_index: dict[str, int] = {}
    last_text, last_ns = "", 0
    line = 1
    append_sym, append_ts = cols.sym.append, cols.ts.append
    append_o, append_h, append_l, append_c, append_v = (
        cols.o.append,
        cols.h.append,
        cols.l.append,
        cols.c.append,
        cols.v.append,
    )
    append_vw, append_n = cols.vw.append, cols.n.append
    nan = math.nan
    for cells in rows:
        line = rows.line_num + 1  # the header was read before the reader began
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        try:
            if len(cells) < width:
                raise ValueError
            text = cells[ts_col]
            if text != last_text:
                last_ns, last_text = parse_ts(text), text
            symbol = cells[i_sym].strip()
            s = sym_index.get(symbol)
            if s is None:
                if not _SYMBOL_RE.match(symbol):
                    raise ValueError
                s = sym_index[symbol] = len(sym_index)
            o, h, lo, c = float(cells[i_o]), float(cells[i_h]), float(cells[i_l]), float(cells[i_c])
            v = float(cells[i_v]) if i_v is not None else 0.0
            if not (lo <= o <= h and lo <= c <= h and v >= 0) or h == _INF or lo == -_INF or v == _INF:
                raise ValueError
            n = float(cells[i_n]) if i_n is not None and cells[i_n] else nan
            vw = float(cells[i_vw]) if i_vw is not None and cells[i_vw] else nan
        except ValueError:
            err = _diagnose(cells, columns, file, line, parse_ts)
            if errors == "raise":
                raise err from None
            report.skipped.append((line, err.reason if err.column is None else f"column {err.column}: {err.reason}"))
            continue
        append_sym(s)
        append_ts(last_ns)
        append_o(o)
        append_h(h)
        append_l(lo)
        append_c(c)
        append_v(v)
        append_n(n)
        append_vw(vw)
    if not len(cols.ts) and not report.skipped:
        raise BarFileError(file, "no bars in the file (only a header)")
    return cols.finish(list(sym_index), kind, report)


_DIGITS_RE = re.compile(r"^\s*\d+\s*$")
_SAMPLE = 64  # rows the fast path checks against the exact row-by-row parser


def import_fast_csv() -> bool:
    """Import what the fast CSV path needs (pandas) now rather than at the first large file it reads
    (about 0.2 s); False when it is not installed (files are then read row by row)."""
    try:
        import pandas  # noqa: F401
    except ImportError:  # pragma: no cover - pandas comes with alpaca-py
        return False
    return True


def _fast_csv(path: Path, header: Sequence[str], first_row: str, kind: Format) -> BarData | None:
    """A clean desk / Alpaca CSV file read by pandas' C parser (about 10x the row-by-row parser), or
    ``None`` when any row is not clean: then the row-by-row parser reads the file and names the row and
    column of the first problem (or skips bad rows). The result equals the row-by-row parser's: Python's
    float parsing (pandas >= 3.1 converts correctly rounded), the symbols in order of first appearance, and the first rows
    re-read by the exact parser as a check (a file that does not agree is read row by row)."""
    read = _fast_read(path, header, first_row)
    if read is None:
        return None
    frame, index, ts_name, epoch_ns, ts_digits, numbers = read
    n = len(frame)
    table = _fast_symbols(frame[index["symbol"]], n)
    ts = _fast_timestamps(frame[index[ts_name]], ts_digits, epoch_ns)
    if table is None or ts is None:
        return None
    sym, symbols = table
    columns: dict[str, F64] = {c: frame[index[c]].to_numpy(dtype=np.float64) for c in numbers}
    if not _fast_values_clean(columns, n):
        return None
    # the exact parser on a sample of rows must agree (timestamps and numbers)
    if not _sample_agrees(path, index, ts_name, epoch_ns, sym, symbols, ts, columns, n):
        return None
    o, h, lo, c = columns["open"], columns["high"], columns["low"], columns["close"]
    data = BarData(
        symbols,
        np.ascontiguousarray(sym),
        np.ascontiguousarray(ts, dtype=np.int64),
        o,
        h,
        lo,
        c,
        columns.get("volume", np.zeros(n)),
        columns.get("vwap"),
        columns.get("trade_count"),
        report=LoadReport(),
        source=kind,
    )
    return _finish(data)


def _fast_read(
    path: Path, header: Sequence[str], first_row: str
) -> tuple[Any, dict[str, int], str, bool, bool, list[str]] | None:
    """pandas' reading of the file's columns the desk uses: (frame, column index by name, the timestamp
    column's name, whether it is epoch ns, whether it is all digits, the number columns), or None."""
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas comes with alpaca-py
        return None
    lower = [h.strip().lower().lstrip("\ufeff") for h in header]
    if len(set(lower)) != len(lower):
        return None
    epoch_ns = "timestamp" not in lower
    ts_name = "start_ns" if epoch_ns else "timestamp"
    numbers: list[str] = [c for c in ("open", "high", "low", "close", "volume", "trade_count", "vwap") if c in lower]
    index = {c: lower.index(c) for c in ("symbol", ts_name, *numbers)}
    cells = next(csv.reader([first_row]), [])
    if len(cells) != len(header):
        return None
    ts_digits = bool(_DIGITS_RE.match(cells[index[ts_name]]))
    if epoch_ns and not ts_digits:
        return None
    dtypes: dict[int, Any] = {index["symbol"]: "category", index[ts_name]: np.int64 if ts_digits else object}
    dtypes.update({index[c]: np.float64 for c in numbers})
    try:
        frame = pd.read_csv(
            path,
            header=0,
            names=list(range(len(header))),
            usecols=list(index.values()),
            dtype=dtypes,
            encoding="utf-8-sig",
            compression="infer",
            keep_default_na=False,
            na_values={index[c]: [""] for c in numbers},
            skip_blank_lines=True,
            engine="c",
        )
    except (ValueError, TypeError, OverflowError, OSError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    if len(frame) == 0:
        return None
    return frame, index, ts_name, epoch_ns, ts_digits, numbers


def _fast_symbols(symbols_col: Any, n: int) -> tuple[I32, list[str]] | None:
    """Each row's symbol number and the symbol table in order of first appearance (as the row-by-row
    parser builds it), or None when a symbol is not one the desk accepts."""
    names = [str(c) for c in symbols_col.cat.categories]
    if any(not _SYMBOL_RE.match(name) for name in names):
        return None
    codes = symbols_col.cat.codes.to_numpy()
    if (codes < 0).any():
        return None
    first_seen = np.full(len(names), n, dtype=np.int64)
    np.minimum.at(first_seen, codes, np.arange(n, dtype=np.int64))
    order = np.argsort(first_seen, kind="stable")
    present = order[first_seen[order] < n]
    remap = np.full(len(names), -1, dtype=np.int32)
    remap[present] = np.arange(len(present), dtype=np.int32)
    return remap[codes], [names[i] for i in present.tolist()]


def _fast_timestamps(raw_ts: Any, ts_digits: bool, epoch_ns: bool) -> I64 | None:
    """The timestamp column as epoch ns (from epoch ns, epoch seconds or ISO 8601), or None."""
    import pandas as pd

    if ts_digits:
        ts: I64 = raw_ts.to_numpy(dtype=np.int64)
        if (ts < 0).any():
            return None
        if not epoch_ns:
            if (ts > 9_000_000_000).any():
                return None
            ts = ts * 1_000_000_000
        return ts
    try:
        moments = pd.to_datetime(raw_ts, format="ISO8601", utc=True)
    except (ValueError, TypeError, OverflowError):
        return None
    if moments.isna().any():
        return None
    parsed: I64 = moments.to_numpy(dtype="datetime64[ns]").view(np.int64)
    return parsed


def _fast_values_clean(columns: dict[str, F64], n: int) -> bool:
    """Every bar's prices are finite with low <= open, close <= high, a volume >= 0, no infinite vwap or
    trade count."""
    o, h, lo, c = columns["open"], columns["high"], columns["low"], columns["close"]
    v = columns.get("volume", np.zeros(n))
    with np.errstate(invalid="ignore"):
        good = (
            np.isfinite(o)
            & np.isfinite(h)
            & np.isfinite(lo)
            & np.isfinite(c)
            & np.isfinite(v)
            & (lo <= o)
            & (o <= h)
            & (lo <= c)
            & (c <= h)
            & (v >= 0)
        )
    if not bool(good.all()):
        return False
    return not any(a is not None and bool(np.isinf(a).any()) for a in (columns.get("vwap"), columns.get("trade_count")))


def _sample_agrees(
    path: Path,
    index: dict[str, int],
    ts_name: str,
    epoch_ns: bool,
    sym: I32,
    symbols: list[str],
    ts: I64,
    columns: dict[str, F64],
    n: int,
) -> bool:
    """The row-by-row parser's reading of the first :data:`_SAMPLE` rows equals the fast one's."""
    row = -1
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        next(reader, None)
        for cells in reader:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue
            row += 1
            if row >= min(n, _SAMPLE):
                break
            text = cells[index[ts_name]]
            exact_ts = int(text) if epoch_ns else parse_timestamp(text)
            if exact_ts != int(ts[row]) or cells[index["symbol"]].strip() != symbols[int(sym[row])]:
                return False
            for name, values in columns.items():
                cell = cells[index[name]]
                if name in ("trade_count", "vwap") and cell == "":
                    if not math.isnan(values[row]):
                        return False
                elif float(cell) != float(values[row]):
                    return False
    return True


def _parse_yahoo(header: Sequence[str], rows: Any, file: str, symbol: str, errors: Errors, skip_null: bool) -> BarData:
    lower = [h.strip().lower().lstrip("\ufeff") for h in header]
    date_col = "date" if "date" in lower else "datetime"
    columns = {
        name: lower.index(name) for name in (date_col, "open", "high", "low", "close", "volume") if name in lower
    }
    i_d, i_o, i_h, i_l, i_c = (columns[k] for k in (date_col, "open", "high", "low", "close"))
    i_v = columns.get("volume")
    width = max(columns.values()) + 1
    cols = _Columns()
    report = LoadReport()
    daily = date_col == "date"
    for cells in rows:
        line = rows.line_num + 1  # the header was read before the reader began
        if not cells or (len(cells) == 1 and not cells[0].strip()):
            continue
        if cells[i_o].strip() == "null" or cells[i_c].strip() == "null":
            if skip_null:
                report.null_rows += 1
                continue
            raise BarFileError(
                file,
                f"Yahoo 'null' row (no prices for {cells[i_d].strip()}); pass --skip-null "
                "(skip_null=True) to skip such rows",
                row=line,
                column="open",
            )
        try:
            if len(cells) < width:
                raise ValueError
            ts = _parse_date(cells[i_d])
            o, h, lo, c = float(cells[i_o]), float(cells[i_h]), float(cells[i_l]), float(cells[i_c])
            v = float(cells[i_v]) if i_v is not None else 0.0
            if not (lo <= o <= h and lo <= c <= h and v >= 0) or h == _INF or lo == -_INF or v == _INF:
                raise ValueError
        except ValueError:
            err = _diagnose(cells, dict(columns), file, line, _parse_date)
            if errors == "raise":
                raise err from None
            report.skipped.append((line, err.reason if err.column is None else f"column {err.column}: {err.reason}"))
            continue
        cols.sym.append(0)
        cols.ts.append(ts)
        cols.o.append(o)
        cols.h.append(h)
        cols.l.append(lo)
        cols.c.append(c)
        cols.v.append(v)
        cols.vw.append(math.nan)
        cols.n.append(math.nan)
    if not len(cols.ts) and not report.skipped and not report.null_rows:
        raise BarFileError(file, "no bars in the file (only a header)")
    return cols.finish([symbol], "yahoo", report, intervals={symbol: DAY_NS} if daily else None)


def _parse_json(text: str, file: str, errors: Errors) -> BarData:
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise BarFileError(file, f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or "bars" not in doc:
        raise BarFileError(file, 'not Alpaca bars JSON: expected {"bars": {"SYMBOL": [...]}, ...}')
    bars = doc["bars"]
    if isinstance(bars, list):  # /v2/stocks/{symbol}/bars
        if not isinstance(doc.get("symbol"), str):
            raise BarFileError(file, 'a "bars" list needs the "symbol" key beside it')
        bars = {doc["symbol"]: bars}
    if bars is None:
        bars = {}
    if not isinstance(bars, dict):
        raise BarFileError(file, '"bars" must be an object of symbol -> list of bars')
    cols = _Columns()
    report = LoadReport()
    symbols: list[str] = []
    for symbol, items in bars.items():
        if not _SYMBOL_RE.match(symbol):
            raise BarFileError(file, f"{symbol!r} is not a valid symbol", column=f"bars.{symbol}")
        s = len(symbols)
        symbols.append(symbol)
        for i, item in enumerate(items or []):
            where = f"bars.{symbol}[{i}]"
            try:
                if not isinstance(item, dict):
                    raise BarFileError(file, "a bar must be an object", column=where)
                values = []
                for key in ("o", "h", "l", "c", "v"):
                    raw = item.get(key)
                    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
                        raise BarFileError(file, f"{raw!r} is not a number", column=f"{where}.{key}")
                    try:
                        values.append(_number(str(raw)))
                    except ValueError:
                        raise BarFileError(file, f"{raw!r} is not a number", column=f"{where}.{key}") from None
                o, h, lo, c, v = values
                if not (lo <= o <= h and lo <= c <= h):
                    raise BarFileError(
                        file,
                        f"inconsistent bar: low {lo} <= open {o}, close {c} <= high {h} does not hold",
                        column=where,
                    )
                if v < 0:
                    raise BarFileError(file, f"volume must not be negative, got {v}", column=f"{where}.v")
                try:
                    ts = parse_timestamp(str(item.get("t", "")))
                except ValueError as exc:
                    raise BarFileError(file, str(exc), column=f"{where}.t") from None
                n, vw = item.get("n"), item.get("vw")
            except BarFileError as err:
                if errors == "raise":
                    raise
                report.skipped.append((i, f"{err.column}: {err.reason}"))
                continue
            cols.sym.append(s)
            cols.ts.append(ts)
            cols.o.append(o)
            cols.h.append(h)
            cols.l.append(lo)
            cols.c.append(c)
            cols.v.append(v)
            cols.n.append(float(n) if isinstance(n, int | float) else math.nan)
            cols.vw.append(float(vw) if isinstance(vw, int | float) else math.nan)
    return cols.finish(symbols, "alpaca-json", report)
