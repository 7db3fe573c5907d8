"""Performance statistics of a backtest: plain typed data in, a :class:`Metrics` out. No I/O.

Input (filled by the backtester, or by :meth:`BacktestData.from_result` from a
``strategy_sdk.testing.BacktestResult``; nothing here imports the SDK):

* ``trades``: :class:`Trade` fills (symbol, ``"buy"``/``"sell"``, qty, price, fee, ``ts_ns``, order id);
* the equity curve as parallel sequences ``ts_ns`` / ``equity`` (float or Decimal, or numpy arrays),
  the account's value *after* each bar; the value before the first bar is ``initial_cash``.
  Several points with the same timestamp (one per symbol of a multi-symbol bar) count as one bar:
  the last of them is kept;
* ``prices``: per-symbol closes (:class:`PriceSeries`) for the benchmark and the price charts;
* ``initial_cash``.

Rules (all documented numbers are fractions: 0.0123 is 1.23 %):

* **Returns** are simple returns bar to bar of ``[initial_cash, *equity]``; after the account is worth
  nothing (equity <= 0) the later returns are 0 (nothing left to lose).
* **Annualisation** (``periods_per_year``) comes from the median spacing of the bars: spacing of
  20 hours up to 4 days is a *daily* bar, 252 per year; shorter spacing is an *intraday* bar of a
  390-minute trading day, ``252 * 390 min / spacing`` per year (1-minute bars: 98,280; 1-second
  bars: 5,896,800); 4 days and longer, ``365.25 days / spacing`` (weekly: 52.2). A single bar (or
  all bars at one instant) is treated as daily.
* ``annualised_return`` = ``(1 + total_return) ** (periods_per_year / bars) - 1`` (geometric, CAGR).
* ``volatility`` = sample standard deviation (ddof 1) of the returns * sqrt(periods_per_year).
* ``sharpe`` = mean excess return / sample std * sqrt(periods_per_year); the excess is over the
  per-bar equivalent ``(1 + risk_free) ** (1 / periods_per_year) - 1`` of the annual ``risk_free``
  (0 by default). ``sortino`` uses the downside deviation ``sqrt(mean(min(excess, 0) ** 2))`` over
  all bars instead of the std. Both are ``None`` when the denominator is 0 or there are < 2 returns.
* ``max_drawdown`` is the worst ``equity / running peak - 1`` (<= 0); its duration runs from that
  peak to the first bar back at the peak (``max_drawdown_recovered`` True), or to the last bar.
  ``calmar`` = ``annualised_return / |max_drawdown|`` (``None`` without a drawdown).
* **Round trips**: fills are matched FIFO per symbol into lots (longs and shorts); a round trip runs
  from a flat position back to flat (a fill that crosses zero closes one and opens the next, its
  fee split by quantity). Its P&L is the realised P&L of its matches less all its fees.
  ``win_rate`` = winners / round trips (``None`` without any); ``profit_factor`` = gross profit /
  gross loss of the round trips (``None`` without a losing one).
* ``exposure``: share of the bars during which any position is open (fills at a bar's timestamp
  count for that bar).
* ``turnover``: traded notional (sum of qty * price) / average equity over the whole backtest
  (**total**, not annualised); ``turnover_annualised`` scales it by ``periods_per_year / bars``.
* **Benchmark**: buy-and-hold of the traded symbols (all symbols in ``prices`` when nothing traded),
  equal weight, the same ``initial_cash``, bought at each symbol's first close without fees, valued
  at the last close at or before each bar (cash before a symbol's first price).
* **Per symbol**: realised P&L (FIFO), unrealised P&L of the open lots at the symbol's last price
  (the last close in ``prices``, else the last fill), fees, ``net = realised + unrealised - fees``.

:func:`to_json` keys (stable; numbers are JSON numbers, ``None`` where undefined; durations in
seconds; timestamps in ns)::

    bars, periods_per_year, start_ns, end_ns, initial_cash, final_equity,
    total_return, annualised_return, volatility, sharpe, sortino,
    max_drawdown, max_drawdown_duration_s, max_drawdown_recovered, calmar,
    round_trips, win_rate, profit_factor, fills, exposure, turnover, turnover_annualised,
    traded_notional, fees, risk_free,
    benchmark: {symbols, total_return, annualised_return, volatility, sharpe, sortino,
                max_drawdown, max_drawdown_duration_s, max_drawdown_recovered, calmar} | null,
    per_symbol: [{symbol, fills, round_trips, bought_qty, sold_qty, position, realised_pnl,
                  unrealised_pnl, fees, net_pnl}, ...]   (sorted by symbol)
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "BacktestData",
    "Metrics",
    "PriceSeries",
    "ReturnStats",
    "RoundTrip",
    "SymbolPnL",
    "Trade",
    "benchmark_symbols",
    "compute",
    "compute_data",
    "equity_curves",
    "equity_drawdown",
    "periods_per_year",
    "round_trips",
    "to_json",
]

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
Number = float | int | Decimal

NS_PER_S = 1_000_000_000
MINUTE_NS = 60 * NS_PER_S
DAY_NS = 86_400 * NS_PER_S
TRADING_DAYS = 252
TRADING_MINUTES = 390
_ZERO = Decimal(0)


# Input ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Trade:
    """One fill: ``side`` is ``"buy"`` or ``"sell"``; ``qty`` positive."""

    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    fee: Decimal = _ZERO
    ts_ns: int = 0
    order_id: str = ""  # the strategy's client order id


@dataclass(frozen=True, slots=True)
class PriceSeries:
    """Closes of one symbol, parallel sequences sorted by time."""

    ts_ns: Sequence[int] | IntArray
    close: Sequence[Number] | FloatArray


@dataclass(frozen=True, slots=True)
class BacktestData:
    """Everything :func:`compute` and :func:`desk.backtest.report.render_html` need."""

    trades: Sequence[Trade]
    ts_ns: Sequence[int] | IntArray
    equity: Sequence[Number] | FloatArray
    prices: Mapping[str, PriceSeries]
    initial_cash: Number
    name: str = ""  # shown as the report's title (a strategy's name: member text, escaped)
    risk_free: float = 0.0

    @classmethod
    def from_result(
        cls,
        result: Any,
        bars: Iterable[Any],
        *,
        initial_cash: Number = Decimal(100000),
        name: str = "",
        risk_free: float = 0.0,
    ) -> BacktestData:
        """From a ``strategy_sdk.testing.BacktestResult`` and the bars it ran on (duck-typed:
        fills with symbol/side/qty/price/fee/ts_ns/client_order_id, ``equity_curve`` of
        ``(ts_ns, equity)``, bars with symbol/start_ns/close)."""
        trades = [Trade(f.symbol, f.side, f.qty, f.price, f.fee, f.ts_ns, f.client_order_id) for f in result.fills]
        curve = result.equity_curve
        ts: Sequence[int] | IntArray
        eq: Sequence[Number] | FloatArray
        if hasattr(curve, "ts") and hasattr(curve, "values"):  # the backtester's EquityCurve: its arrays as they are
            ts = np.array(curve.ts, dtype=np.int64)
            eq = np.array(curve.values, dtype=np.float64)
        else:
            ts = [int(t) for t, _ in curve]
            eq = [e for _, e in curve]
        return cls(trades, ts, eq, _closes(bars), initial_cash, name, risk_free)


def _closes(bars: Iterable[Any]) -> dict[str, PriceSeries]:
    """Each symbol's closes: from a ``desk.data.BarData``'s columns (no Bar objects), else bar by bar."""
    if all(hasattr(bars, name) for name in ("symbols", "sym", "ts_ns", "close")):
        data: Any = bars
        out: dict[str, PriceSeries] = {}
        for index, symbol in enumerate(data.symbols):
            mask = data.sym == index
            if mask.any():
                out[symbol] = PriceSeries(data.ts_ns[mask], data.close[mask])
        return out
    closes: dict[str, tuple[list[int], list[Number]]] = {}
    for bar in bars:
        t, c = closes.setdefault(bar.symbol, ([], []))
        t.append(int(bar.start_ns))
        c.append(bar.close)
    return {s: PriceSeries(t, c) for s, (t, c) in closes.items()}


# Output ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ReturnStats:
    """Statistics of one equity curve (the strategy's or the benchmark's)."""

    total_return: float
    annualised_return: float | None
    volatility: float | None
    sharpe: float | None
    sortino: float | None
    max_drawdown: float
    max_drawdown_duration_ns: int
    max_drawdown_recovered: bool
    calmar: float | None


@dataclass(frozen=True, slots=True)
class RoundTrip:
    symbol: str
    direction: str  # "long" or "short"
    open_ns: int
    close_ns: int
    pnl: float  # realised less fees


@dataclass(frozen=True, slots=True)
class SymbolPnL:
    symbol: str
    fills: int
    round_trips: int
    bought_qty: float
    sold_qty: float
    position: float
    realised_pnl: float
    unrealised_pnl: float
    fees: float
    net_pnl: float


@dataclass(frozen=True, slots=True)
class Metrics:
    bars: int
    periods_per_year: float
    start_ns: int
    end_ns: int
    initial_cash: float
    final_equity: float
    strategy: ReturnStats
    round_trips: int
    win_rate: float | None
    profit_factor: float | None
    fills: int
    exposure: float
    turnover: float | None
    turnover_annualised: float | None
    traded_notional: float
    fees: float
    risk_free: float
    benchmark: ReturnStats | None
    benchmark_symbols: tuple[str, ...]
    per_symbol: tuple[SymbolPnL, ...] = field(default_factory=tuple)


# Helpers ---------------------------------------------------------------------------------------------
def as_floats(values: Sequence[Number] | FloatArray) -> FloatArray:
    if isinstance(values, np.ndarray):
        return values.astype(np.float64, copy=False)
    return np.fromiter((float(v) for v in values), dtype=np.float64, count=len(values))


def as_ints(values: Sequence[int] | IntArray) -> IntArray:
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False)
    return np.fromiter(values, dtype=np.int64, count=len(values))


def _decimal(x: Any) -> Decimal:
    return x if isinstance(x, Decimal) else Decimal(str(x))


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _last_per_timestamp(ts: IntArray, values: FloatArray) -> tuple[IntArray, FloatArray]:
    """Keep the last point of each run of equal timestamps."""
    if len(ts) < 2:
        return ts, values
    keep = np.empty(len(ts), dtype=bool)
    np.not_equal(ts[1:], ts[:-1], out=keep[:-1])
    keep[-1] = True
    if keep.all():
        return ts, values
    return ts[keep], values[keep]


def periods_per_year(ts_ns: Sequence[int] | IntArray) -> float:
    """Bars per year from the median spacing of ``ts_ns`` (see the module docstring)."""
    ts = as_ints(ts_ns)
    if len(ts) < 2:
        return float(TRADING_DAYS)
    spacing = float(np.median(np.diff(ts)))
    if spacing <= 0:
        return float(TRADING_DAYS)
    if spacing < 20 * 3600 * NS_PER_S:
        return TRADING_DAYS * TRADING_MINUTES * MINUTE_NS / spacing
    if spacing < 4 * DAY_NS:
        return float(TRADING_DAYS)
    return 365.25 * DAY_NS / spacing


def _returns(values: FloatArray) -> FloatArray:
    """Simple returns of ``values`` (which start with the initial cash); 0 once nothing is left."""
    prev = values[:-1]
    out = np.zeros(len(values) - 1, dtype=np.float64)
    alive = prev > 0
    np.divide(values[1:], prev, out=out, where=alive)
    out[alive] -= 1.0
    return out


def equity_drawdown(values: FloatArray) -> FloatArray:
    """``values / running peak - 1`` (0 where the peak is not positive)."""
    peak = np.maximum.accumulate(values)
    dd = np.zeros(len(values), dtype=np.float64)
    np.divide(values, peak, out=dd, where=peak > 0)
    dd[peak > 0] -= 1.0
    return dd


def _stats(ts: IntArray, values: FloatArray, ppy: float, risk_free: float) -> ReturnStats:
    """``values`` = [initial, after bar 1, ...]; ``ts`` the bars' timestamps (len(values) - 1)."""
    initial, final = float(values[0]), float(values[-1])
    n = len(values) - 1
    total = final / initial - 1.0 if initial > 0 else 0.0
    annualised: float | None = None
    if n > 0 and 1.0 + total >= 0:
        try:
            annualised = _finite((1.0 + total) ** (ppy / n) - 1.0)
        except OverflowError:
            annualised = None
    returns = _returns(values)
    rf = (1.0 + risk_free) ** (1.0 / ppy) - 1.0
    excess = returns - rf
    vol = sharpe = sortino = None
    if n >= 2:
        std = float(np.std(returns, ddof=1))
        # float noise: a flat curve can leave ~1e-19 instead of 0
        if std > 1e-15 * max(1.0, float(np.abs(returns).max())):
            vol = std * math.sqrt(ppy)
            sharpe = _finite(float(excess.mean()) / std * math.sqrt(ppy))
        else:
            vol = 0.0
        downside = math.sqrt(float(np.mean(np.minimum(excess, 0.0) ** 2)))
        if downside > 1e-15:
            sortino = _finite(float(excess.mean()) / downside * math.sqrt(ppy))
    dd = equity_drawdown(values)
    trough = int(np.argmin(dd))
    mdd = float(dd[trough])
    duration, recovered = 0, True
    if mdd < 0:
        # timestamps of values: the initial cash sits at the first bar's time
        times = np.concatenate((ts[:1], ts))
        peak_value = float(np.max(values[: trough + 1]))
        peak_at = int(np.flatnonzero(values[: trough + 1] >= peak_value)[-1])
        back = np.flatnonzero(values[trough:] >= peak_value)
        recovered = len(back) > 0
        end = trough + int(back[0]) if recovered else len(values) - 1
        duration = int(times[end] - times[peak_at])
    calmar = None if mdd >= 0 or annualised is None else _finite(annualised / abs(mdd))
    return ReturnStats(total, annualised, vol, sharpe, sortino, mdd, duration, recovered, calmar)


# Round trips and per-symbol P&L ------------------------------------------------------------------------------
@dataclass
class _Book:
    lots: deque[list[Decimal]] = field(default_factory=deque)  # [signed qty, price], FIFO
    position: Decimal = _ZERO
    realised: Decimal = _ZERO
    fees: Decimal = _ZERO
    bought: Decimal = _ZERO
    sold: Decimal = _ZERO
    fills: int = 0
    notional: Decimal = _ZERO
    trip_pnl: Decimal = _ZERO
    trip_open_ns: int = 0
    trips: list[RoundTrip] = field(default_factory=list)
    last_price: Decimal = _ZERO


def _book_fill(book: _Book, trade: Trade) -> None:
    qty, price, fee = _decimal(trade.qty), _decimal(trade.price), _decimal(trade.fee)
    sign = 1 if trade.side == "buy" else -1
    book.fills += 1
    book.fees += fee
    book.notional += qty * price
    book.last_price = price
    if sign > 0:
        book.bought += qty
    else:
        book.sold += qty
    remaining = qty
    if book.position == 0:
        book.trip_open_ns, book.trip_pnl = trade.ts_ns, _ZERO
    # close against opposite lots, FIFO
    while remaining > 0 and book.lots and (book.lots[0][0] > 0) != (sign > 0):
        lot = book.lots[0]
        take = min(remaining, abs(lot[0]))
        pnl = take * (price - lot[1]) * (1 if lot[0] > 0 else -1)
        book.realised += pnl
        book.trip_pnl += pnl
        lot[0] += take * sign
        remaining -= take
        if lot[0] == 0:
            book.lots.popleft()
    closing = qty - remaining
    book.position += qty * sign
    if closing > 0 and book.position * sign >= 0 and not book.lots:
        # back to flat (or through it): the trip ends here, with its share of this fee
        share = fee * closing / qty if qty else fee
        book.trip_pnl -= share
        direction = "long" if sign < 0 else "short"
        book.trips.append(RoundTrip(trade.symbol, direction, book.trip_open_ns, trade.ts_ns, float(book.trip_pnl)))
        book.trip_open_ns, book.trip_pnl = trade.ts_ns, -(fee - share)
    else:
        book.trip_pnl -= fee
    if remaining > 0:
        book.lots.append([remaining * sign, price])


@dataclass
class _Ledger:
    books: dict[str, _Book]
    fill_ts: IntArray  # fills in time order
    exposed: npt.NDArray[np.bool_]  # any position open after each fill
    notional: Decimal
    fees: Decimal


def _ledger(trades: Sequence[Trade]) -> _Ledger:
    """Book every fill in time order (stable: same-time fills keep their order), in one pass."""
    books: dict[str, _Book] = {}
    ordered = sorted(trades, key=lambda t: t.ts_ns)
    fill_ts = np.empty(len(ordered), dtype=np.int64)
    exposed = np.empty(len(ordered), dtype=bool)
    open_count = 0
    notional = fees = _ZERO
    for i, trade in enumerate(ordered):
        book = books.get(trade.symbol)
        if book is None:
            book = books[trade.symbol] = _Book()
        was_open = book.position != 0
        _book_fill(book, trade)
        open_count += (book.position != 0) - was_open
        fill_ts[i], exposed[i] = trade.ts_ns, open_count > 0
    for book in books.values():
        notional += book.notional
        fees += book.fees
    return _Ledger(books, fill_ts, exposed, notional, fees)


def round_trips(trades: Sequence[Trade]) -> list[RoundTrip]:
    """Every completed round trip (flat to flat), FIFO-matched per symbol, in closing order per symbol."""
    return [t for book in _ledger(trades).books.values() for t in book.trips]


def _exposure(ledger: _Ledger, bar_ts: IntArray) -> float:
    """Share of the bars with a position open after the last fill at or before the bar."""
    if len(ledger.fill_ts) == 0 or len(bar_ts) == 0:
        return 0.0
    idx = np.searchsorted(ledger.fill_ts, bar_ts, side="right") - 1
    held = np.zeros(len(bar_ts), dtype=bool)
    valid = idx >= 0
    held[valid] = ledger.exposed[idx[valid]]
    return float(held.mean())


def _benchmark(
    symbols: Sequence[str], prices: Mapping[str, PriceSeries], bar_ts: IntArray, initial: float
) -> FloatArray | None:
    usable = [s for s in symbols if s in prices and len(prices[s].ts_ns) > 0]
    if not usable or len(bar_ts) == 0:
        return None
    slice_cash = initial / len(usable)
    total = np.zeros(len(bar_ts), dtype=np.float64)
    for s in usable:
        ts, close = as_ints(prices[s].ts_ns), as_floats(prices[s].close)
        idx = np.searchsorted(ts, bar_ts, side="right") - 1
        first = float(close[0])
        if first <= 0:
            total += slice_cash
            continue
        value = np.full(len(bar_ts), slice_cash)
        valid = idx >= 0
        value[valid] = slice_cash / first * close[idx[valid]]
        total += value
    return np.concatenate(([initial], total))


def equity_curves(
    ts_ns: Sequence[int] | IntArray,
    equity: Sequence[Number] | FloatArray,
    initial_cash: Number,
    symbols: Sequence[str],
    prices: Mapping[str, PriceSeries],
) -> tuple[IntArray, FloatArray, FloatArray | None]:
    """The bars' timestamps (one per instant), ``[initial_cash, *equity]`` and the benchmark's
    values likewise (``None`` without prices for ``symbols``), as :func:`compute` uses them."""
    ts, eq = _last_per_timestamp(as_ints(ts_ns), as_floats(equity))
    if len(ts) != len(eq):
        raise ValueError(f"ts_ns has {len(ts)} points, equity {len(eq)}")
    initial = float(initial_cash)
    return ts, np.concatenate(([initial], eq)), _benchmark(symbols, prices, ts, initial)


def benchmark_symbols(trades: Sequence[Trade], prices: Mapping[str, PriceSeries]) -> list[str]:
    """The traded symbols that have prices, or every symbol with prices when nothing traded."""
    traded = sorted({t.symbol for t in trades}) or sorted(prices)
    return [s for s in traded if s in prices and len(prices[s].ts_ns) > 0]


# The whole thing ------------------------------------------------------------------------------------------------
def compute(
    trades: Sequence[Trade],
    ts_ns: Sequence[int] | IntArray,
    equity: Sequence[Number] | FloatArray,
    prices: Mapping[str, PriceSeries] | None = None,
    initial_cash: Number = 100000,
    *,
    risk_free: float = 0.0,
) -> Metrics:
    """All the statistics of one backtest (see the module docstring for every rule)."""
    if len(ts_ns) != len(equity):
        raise ValueError(f"ts_ns has {len(ts_ns)} points, equity {len(equity)}")
    prices = prices or {}
    traded = benchmark_symbols(trades, prices)
    ts, values, bench_values = equity_curves(ts_ns, equity, initial_cash, traded, prices)
    initial = float(values[0])
    ppy = periods_per_year(ts)
    bars = len(ts)
    stats = _stats(ts, values, ppy, risk_free)

    ledger = _ledger(trades)
    books = ledger.books
    trips = [t for book in books.values() for t in book.trips]
    wins = sum(t.pnl for t in trips if t.pnl > 0)
    losses = -sum(t.pnl for t in trips if t.pnl < 0)
    win_rate = sum(1 for t in trips if t.pnl > 0) / len(trips) if trips else None
    profit_factor = wins / losses if losses > 0 else None

    notional, fees = float(ledger.notional), float(ledger.fees)
    avg_equity = float(values.mean())
    turnover = notional / avg_equity if avg_equity > 0 else None
    turnover_ann = turnover * ppy / bars if turnover is not None and bars > 0 else None

    per_symbol = []
    for symbol in sorted(books):
        book = books[symbol]
        series = prices.get(symbol)
        last = _decimal(series.close[-1]) if series is not None and len(series.close) else book.last_price
        unrealised = sum((lot[0] * (last - lot[1]) for lot in book.lots), _ZERO)
        per_symbol.append(
            SymbolPnL(
                symbol,
                book.fills,
                len(book.trips),
                float(book.bought),
                float(book.sold),
                float(book.position),
                float(book.realised),
                float(unrealised),
                float(book.fees),
                float(book.realised + unrealised - book.fees),
            )
        )

    bench = _stats(ts, bench_values, ppy, risk_free) if bench_values is not None else None
    return Metrics(
        bars=bars,
        periods_per_year=ppy,
        start_ns=int(ts[0]) if bars else 0,
        end_ns=int(ts[-1]) if bars else 0,
        initial_cash=initial,
        final_equity=float(values[-1]),
        strategy=stats,
        round_trips=len(trips),
        win_rate=win_rate,
        profit_factor=profit_factor,
        fills=len(trades),
        exposure=_exposure(ledger, ts),
        turnover=turnover,
        turnover_annualised=turnover_ann,
        traded_notional=notional,
        fees=fees,
        risk_free=risk_free,
        benchmark=bench,
        benchmark_symbols=tuple(traded) if bench is not None else (),
        per_symbol=tuple(per_symbol),
    )


def compute_data(data: BacktestData) -> Metrics:
    """:func:`compute` of a :class:`BacktestData`."""
    return compute(data.trades, data.ts_ns, data.equity, data.prices, data.initial_cash, risk_free=data.risk_free)


def _stats_json(stats: ReturnStats) -> dict[str, Any]:
    return {
        "total_return": stats.total_return,
        "annualised_return": stats.annualised_return,
        "volatility": stats.volatility,
        "sharpe": stats.sharpe,
        "sortino": stats.sortino,
        "max_drawdown": stats.max_drawdown,
        "max_drawdown_duration_s": stats.max_drawdown_duration_ns / NS_PER_S,
        "max_drawdown_recovered": stats.max_drawdown_recovered,
        "calmar": stats.calmar,
    }


def to_json(metrics: Metrics) -> dict[str, Any]:
    """The metrics as a JSON-ready dict with the stable keys listed in the module docstring."""
    out: dict[str, Any] = {
        "bars": metrics.bars,
        "periods_per_year": metrics.periods_per_year,
        "start_ns": metrics.start_ns,
        "end_ns": metrics.end_ns,
        "initial_cash": metrics.initial_cash,
        "final_equity": metrics.final_equity,
    }
    out.update(_stats_json(metrics.strategy))
    out.update(
        {
            "round_trips": metrics.round_trips,
            "win_rate": metrics.win_rate,
            "profit_factor": metrics.profit_factor,
            "fills": metrics.fills,
            "exposure": metrics.exposure,
            "turnover": metrics.turnover,
            "turnover_annualised": metrics.turnover_annualised,
            "traded_notional": metrics.traded_notional,
            "fees": metrics.fees,
            "risk_free": metrics.risk_free,
            "benchmark": None
            if metrics.benchmark is None
            else {"symbols": list(metrics.benchmark_symbols), **_stats_json(metrics.benchmark)},
            "per_symbol": [
                {
                    "symbol": p.symbol,
                    "fills": p.fills,
                    "round_trips": p.round_trips,
                    "bought_qty": p.bought_qty,
                    "sold_qty": p.sold_qty,
                    "position": p.position,
                    "realised_pnl": p.realised_pnl,
                    "unrealised_pnl": p.unrealised_pnl,
                    "fees": p.fees,
                    "net_pnl": p.net_pnl,
                }
                for p in metrics.per_symbol
            ],
        }
    )
    return out
