"""Backtest a strategy in-process, without NATS, on the desk's own engine (desk.core).

:func:`run_backtest` feeds bars to a :class:`~strategy_sdk.Strategy` and runs, around it, the same
pure code the live desk runs: the router's validation (:func:`desk.core.orders.validate_order`) and
pre-trade risk (:class:`~desk.core.risk.VirtualAccount` with ``Limits.resolve(config risk, the
router's defaults)``), and the sim venue's matching (:class:`~desk.core.matching.SimEngine` with
:class:`~desk.core.matching.SimConfig`, whose defaults are the gateway's ``SIM_*`` defaults). So a
backtest cannot disagree with the desk's simulator on how an order fills:

* Each bar becomes exactly the tick the ``replay`` feed would publish for it
  (:func:`desk.core.marketdata.replay_tick`): the bar, a quote around its close (about 2 bps
  spread, 100 a side) and a trade of 100 at the close, the last two stamped at the bar's end. The
  engine sees them in the live order (bar, quote, trade), the router's last price becomes the trade
  price, and the strategy's ``on_bar`` runs; the reports the bar caused (a resting order filled or
  expired by it) reach the strategy (``on_order_update`` / ``on_fill``) after that ``on_bar``, as on
  the desk, where the bar reaches the strategy and the venue at once and the venue's reports follow.
* An order sent from a hook is validated and risk-checked as by the router (refusals come back as
  ``OrderResult(accepted=False, reason=...)``: ``INSUFFICIENT_BUYING_POWER``, ``SHORT_NOT_ALLOWED``
  unless ``allow_short``, ``MAX_ORDER_NOTIONAL``, ``MAX_POSITION_NOTIONAL``, ``RATE_LIMIT`` per 60 s
  of bar time, ``UNKNOWN_SYMBOL`` before the symbol's first bar...), then reaches the engine at once,
  as a live order arriving before the next tick: **a market buy fills at the current ask moved up
  by ``slippage_bps``** (a sell at the bid moved down), **a marketable limit at
  ``min(limit, ask + slippage)``**, each fill paying ``max(fee_min, qty * fee_per_share + qty *
  price * fee_bps / 10000)``. **Liquidity is limited**: each update offers ``participation`` x its
  size (after a tick, the trade's 100 shares; the next bar, its volume), so a larger order fills
  partially and its DAY/GTC remainder rests and fills on later bars at their open (IOC remainders
  are canceled, FOK orders fill whole or not at all). Resting limit, stop and stop-limit orders fill
  as in the sim venue (docs in :mod:`desk.core.matching`); DAY orders expire at the first update of
  a later UTC date.
* Reports are delivered between hooks (never inside ``await self.buy(...)``), as live.
* An exception in a hook is counted in ``result.errors`` (with the messages in
  ``result.error_messages``) and the backtest goes on, as live; one in ``on_start`` is raised.

``config`` is the strategy's ``config.json``: its ``symbols`` (only their bars are fed; all bars when
it names none), ``initial_cash`` and ``risk`` apply as on the desk; keyword arguments override them.

Example (a pytest test)::

    from decimal import Decimal
    from strategy_sdk import Strategy
    from strategy_sdk.testing import make_bars, run_backtest

    class BuyOnce(Strategy):
        async def on_bar(self, bar):
            if self.position(bar.symbol) == 0 and not self.open_orders:
                await self.buy(bar.symbol, 10)

    def test_buy_once_fills_at_the_ask_plus_slippage():
        bars = make_bars("AAPL", ["100", "101", "102"])
        result = run_backtest(BuyOnce(), bars, slippage_bps=0, fee_bps=0)
        assert result.positions == {"AAPL": Decimal(10)}
        assert result.fills[0].price == Decimal("100.01")  # the first bar's ask (close + 1 cent)

Bars may be :class:`~strategy_sdk.Bar` objects, dicts or CSV rows (``symbol, open, high, low, close,
volume`` and ``timestamp`` (ISO 8601) or ``start_ns``); see :func:`to_bar` and :func:`bars_from_csv`.
A bar without ``interval_ns`` gets the replay feed's: the smallest gap between its symbol's bars
(over the whole list; for an iterator, the smallest gap so far, one minute for the first bar).

Speed: while no order of a symbol rests, the engine is not fed that symbol's ticks; the latest one
is fed right before the next order on it (the engine's market state is overwritten by every update,
so the result is the same; ``feed_every_tick=True`` feeds them all). The equity curve is kept in
arrays (``result.equity_curve`` reads them as ``(ts_ns, Decimal)`` pairs through ``float``;
``result.final_equity`` is exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import gc
import inspect
import itertools
import logging
import random
import threading
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, overload

from desk.bus import subjects
from desk.bus.decimals import dec
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.marketdata import DEFAULT_INTERVAL_NS, REPLAY_SIZE, infer_intervals, quote_prices
from desk.core.matching import SimConfig, SimEngine
from desk.core.orders import (
    ORDER_TYPE_WORDS,
    TIME_IN_FORCE_WORDS,
    Report,
    ValidOrder,
    refusal,
    reject_reason,
    side_name,
    status_name,
    validate_cancel,
    validate_order,
)
from desk.core.risk import DEFAULT_INITIAL_CASH, DEFAULT_LIMITS, Limits, VirtualAccount
from desk.v1 import executions_pb2, orders_pb2, strategy_pb2
from strategy_sdk.models import Bar, CancelResult, Fill, OrderResult, OrderUpdate
from strategy_sdk.orders import Account
from strategy_sdk.strategy import Strategy, StrategyContext, call_hook, history_size

__all__ = [
    "BacktestOrder",
    "BacktestResult",
    "bars_from_csv",
    "make_bars",
    "random_walk_bars",
    "run_backtest",
    "run_backtest_async",
    "to_bar",
]

_BPS = Decimal(10000)
REPLAY_SIZE_DECIMAL = Decimal(REPLAY_SIZE)
RETAIN_FINAL = 1024  # final orders the engine keeps (SimEngine retain_final)
GC_YOUNG_THRESHOLD = 100_000  # allocations between young collections during a run (Python: 700)


# Bars in ----------------------------------------------------------------------------------------------
def to_bar(row: Bar | Mapping[str, Any], symbol: str | None = None) -> Bar:
    """A :class:`Bar` from a Bar, a dict or a CSV row (numbers as str/int/Decimal)."""
    if isinstance(row, Bar):
        return row
    sym = str(row.get("symbol") or symbol or "")
    if not sym:
        raise ValueError(f"bar without a symbol: {dict(row)!r}")

    def num(key: str, default: str | None = None) -> Decimal:
        value = row.get(key, default)
        if value is None or value == "":
            if default is None:
                raise ValueError(f"bar {dict(row)!r} has no {key}")
            value = default
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)

    close = num("close")
    start_ns = row.get("start_ns")
    if start_ns in (None, "") and row.get("timestamp"):
        ts = row["timestamp"]
        moment = ts if isinstance(ts, datetime) else datetime.fromisoformat(str(ts))
        if moment.tzinfo is None:  # naive means UTC, as for the replay feed and desk.data
            moment = moment.replace(tzinfo=UTC)
        start_ns = int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    return Bar(
        symbol=sym,
        open=num("open", str(close)),
        high=num("high", str(close)),
        low=num("low", str(close)),
        close=close,
        volume=num("volume", "0"),
        start_ns=int(start_ns or 0),
        interval_ns=int(row.get("interval_ns") or 0),
    )


def bars_from_csv(path: str | Path, symbol: str | None = None) -> list[Bar]:
    """Bars from a CSV file with a header row (columns as for :func:`to_bar`)."""
    with open(path, newline="") as f:
        return [to_bar(row, symbol) for row in csv.DictReader(f)]


def make_bars(
    symbol: str,
    closes: Sequence[Decimal | int | str],
    *,
    interval_s: int = 60,
    start_ns: int = 1_767_000_000 * 1_000_000_000,
) -> list[Bar]:
    """Handmade bars from closes: each bar opens at the previous close (the first at its own close),
    high/low are the max/min of open and close."""
    bars: list[Bar] = []
    previous: Decimal | None = None
    for i, raw in enumerate(closes):
        close = Decimal(raw)
        open_ = close if previous is None else previous
        bars.append(
            Bar(
                symbol,
                open_,
                max(open_, close),
                min(open_, close),
                close,
                Decimal(100),
                start_ns + i * interval_s * 1_000_000_000,
                interval_s * 1_000_000_000,
                source="test",
            )
        )
        previous = close
    return bars


def random_walk_bars(
    symbols: Sequence[str], count: int, *, seed: int = 7, start: str = "100", step_bps: int = 50
) -> list[Bar]:
    """``count`` bars per symbol of a seeded random walk, interleaved by time (like a live feed)."""
    rng = random.Random(seed)
    prices = {s: Decimal(start) for s in symbols}
    bars: list[Bar] = []
    t0 = 1_767_000_000 * 1_000_000_000
    for i in range(count):
        for s in symbols:
            open_ = prices[s]
            move = Decimal(rng.randint(-step_bps, step_bps)) / _BPS
            close = (open_ * (1 + move)).quantize(Decimal("0.01"))
            wick = Decimal(rng.randint(0, step_bps // 2)) / _BPS
            high = (max(open_, close) * (1 + wick)).quantize(Decimal("0.01"))
            low = (min(open_, close) * (1 - wick)).quantize(Decimal("0.01"))
            bars.append(
                Bar(
                    s,
                    open_,
                    high,
                    low,
                    close,
                    Decimal(rng.randint(100, 1000)),
                    t0 + i * 1_000_000_000,
                    1_000_000_000,
                    source="synthetic",
                )
            )
            prices[s] = close
    return bars


# Results ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class BacktestOrder:
    """One order the strategy sent, with the desk's answer and where it ended."""

    client_order_id: str
    order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    accepted: bool
    reason: str = ""
    status: str = "new"
    filled_qty: Decimal = Decimal(0)
    avg_price: Decimal | None = None
    placed_at: int = -1  # index of the bar being processed when it was sent (-1: on_start)
    triggered: bool = False


class EquityCurve(Sequence[tuple[int, Decimal]]):
    """The equity after every bar, kept in two arrays (int64 ns, float64) and read as
    ``(ts_ns, Decimal)`` pairs (the Decimal of the float's shortest repr); ``final`` is exact."""

    def __init__(self) -> None:
        self.ts = array("q")
        self.values = array("d")
        self.final: Decimal | None = None

    def append(self, ts_ns: int, equity: float) -> None:
        self.ts.append(ts_ns)
        self.values.append(equity)

    def __len__(self) -> int:
        return len(self.ts)

    @overload
    def __getitem__(self, index: int) -> tuple[int, Decimal]: ...

    @overload
    def __getitem__(self, index: slice) -> list[tuple[int, Decimal]]: ...

    def __getitem__(self, index: int | slice) -> tuple[int, Decimal] | list[tuple[int, Decimal]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("equity curve index out of range")
        if index == len(self) - 1 and self.final is not None:
            return self.ts[index], self.final
        return self.ts[index], Decimal(repr(self.values[index]))

    def __iter__(self) -> Iterator[tuple[int, Decimal]]:
        for i in range(len(self)):
            yield self[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Sequence):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        return f"EquityCurve({len(self)} points, final={self.final})"


@dataclass(repr=False)
class BacktestResult:
    """What happened: fills, orders, final books, equity after every bar, hook errors."""

    fills: list[Fill]
    orders: list[BacktestOrder]
    updates: list[OrderUpdate]
    positions: dict[str, Decimal]
    cash: Decimal
    equity_curve: Sequence[tuple[int, Decimal]]
    errors: int
    error_messages: list[str] = field(default_factory=list)
    #: With ``record_reports=True``: every report of the venue, in order, serialized (a protobuf message
    #: costs kilobytes; bytes do not).
    raw_reports: list[bytes] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        # A summary, not every order: asyncio.run formats its task (and so this result) on the way out
        # (Python 3.11's signal.getsignal -> enum error message), which for a long run took seconds.
        return (
            f"BacktestResult({len(self.orders)} orders, {len(self.fills)} fills, {len(self.equity_curve)} bars, "
            f"positions={self.positions!r}, cash={self.cash}, final_equity={self.final_equity}, "
            f"errors={self.errors})"
        )

    @property
    def reports(self) -> list[executions_pb2.ExecutionReport]:
        """The venue's execution reports, in order (decoded from :attr:`raw_reports`)."""
        return [executions_pb2.ExecutionReport.FromString(raw) for raw in self.raw_reports]

    @property
    def final_equity(self) -> Decimal:
        """The equity after the last bar, exact."""
        final = getattr(self.equity_curve, "final", None)
        if isinstance(final, Decimal):
            return final
        return self.equity_curve[-1][1] if self.equity_curve else self.cash


# The desk around the strategy ---------------------------------------------------------------------------------
def _order_record(request: orders_pb2.OrderRequest, order_id: str, placed_at: int) -> BacktestOrder:
    def number(text: str) -> Decimal | None:
        try:
            return dec(text) if text else None
        except ArithmeticError:
            return None

    return BacktestOrder(
        client_order_id=request.client_order_id,
        order_id=order_id,
        symbol=request.symbol,
        side=side_name(request.side),
        type=ORDER_TYPE_WORDS.get(request.type, ""),
        time_in_force=TIME_IN_FORCE_WORDS.get(request.time_in_force, ""),
        qty=number(request.qty),
        notional=number(request.notional),
        limit_price=number(request.limit_price),
        stop_price=number(request.stop_price),
        accepted=False,
        placed_at=placed_at,
    )


class _Desk:
    """The router (validation, idempotency, risk) and the sim venue for one strategy, in process.

    Implements the SDK's ``OrderGateway``; the venue's reports are applied to the router's
    :class:`VirtualAccount` at once and queued for the strategy, which gets them between hooks.
    """

    def __init__(
        self,
        strategy_id: str,
        member_id: str,
        *,
        initial_cash: Decimal,
        limits: Limits,
        sim_config: SimConfig,
        feed_every_tick: bool,
        record_reports: bool = False,
    ) -> None:
        self.strategy_id = strategy_id
        self.member_id = member_id
        self.limits = limits
        self.now_ns = 0
        # The engine forgets all but its latest final orders: the records here keep what a result needs.
        self.engine = SimEngine(sim_config, clock=lambda: self.now_ns, retain_final=RETAIN_FINAL)
        self.account = VirtualAccount(strategy_id, initial_cash, clock=lambda: self.now_ns / 1e9)
        self.feed_every_tick = feed_every_tick
        self.prices: dict[str, Decimal] = {}  # the router's DESK_PRICES: the last trade price
        self.pending: dict[str, tuple[Bar, int]] = {}  # a symbol's latest tick not fed to the engine
        self.accepted: set[str] = set()  # DESK_ORDER_IDS: client order ids of accepted orders
        self.orders: dict[str, BacktestOrder] = {}  # by order id
        self.order_list: list[BacktestOrder] = []
        self.queue: deque[Report] = deque()  # the engine's reports as plain objects: no wire in between
        self.all_reports: list[bytes] = []
        self.record_reports = record_reports
        self.bar_index = -1
        self._subject = subjects.order_submit(strategy_id)
        self._cancel_subject = subjects.order_cancel(strategy_id)

    # market data ------------------------------------------------------------------------------------
    def on_bar(self, bar: Bar, interval_ns: int) -> None:
        """The marketdata service publishes ``bar``'s tick: the engine sees it (now, or lazily)."""
        self.now_ns = bar.start_ns + interval_ns
        symbol = bar.symbol
        # The tick's quote and trade are stamped at the bar's end, its latest (and latest-dated) update.
        if self.feed_every_tick or self.engine.update_matters(symbol, self.now_ns):
            self.pending.pop(symbol, None)
            self._feed(bar, interval_ns)
        else:
            self.pending[symbol] = (bar, interval_ns)
        self.prices[symbol] = bar.close  # the router's last price: the tick's trade price (the close)

    def _feed(self, bar: Bar, interval_ns: int) -> None:
        """The engine sees ``bar``'s replay tick (:func:`desk.core.marketdata.replay_tick`: the bar, the
        quote around its close, the trade at its close) as numbers, without building the messages."""
        engine = self.engine
        symbol, close = bar.symbol, bar.close
        end = bar.start_ns + interval_ns
        bid, ask = quote_prices(close)
        reports = engine.bar_update_local(symbol, bar.open, bar.high, bar.low, close, bar.volume, bar.start_ns)
        if reports:
            self._reports(reports)
        reports = engine.quote_update_local(symbol, bid, ask, REPLAY_SIZE_DECIMAL, REPLAY_SIZE_DECIMAL, end)
        if reports:
            self._reports(reports)
        reports = engine.trade_update_local(symbol, close, REPLAY_SIZE_DECIMAL, end)
        if reports:
            self._reports(reports)

    def _catch_up(self, symbol: str) -> None:
        """Feed ``symbol``'s latest tick, skipped while nothing of it rested, before an order on it."""
        pending = self.pending.pop(symbol, None)
        if pending is not None:
            self._feed(*pending)

    def _reports(self, reports: list[Report]) -> None:
        for report in reports:
            self.account.apply(report)  # the router follows desk.exec.*
            self.queue.append(report)  # the strategy's own subscription
            if self.record_reports:
                self.all_reports.append(report.to_proto().SerializeToString())
            record = self.orders.get(report.order_id)
            order = self.engine.get(report.order_id)
            if record is None and order is not None and order.parent_order_id and not order.replaces:
                record = self._leg_record(report)  # an exit the venue placed for a bracket / OTO / OCO
            if record is not None and order is not None:
                record.status = status_name(order.status)
                record.filled_qty = order.cum_qty
                record.avg_price = order.avg_price
                record.triggered = order.triggered

    def _leg_record(self, report: Report) -> BacktestOrder:
        def number(text: str) -> Decimal | None:
            return dec(text) if text else None

        record = BacktestOrder(
            client_order_id=report.client_order_id,
            order_id=report.order_id,
            symbol=report.symbol,
            side=side_name(report.side),
            type=ORDER_TYPE_WORDS.get(report.type, ""),
            time_in_force=TIME_IN_FORCE_WORDS.get(report.time_in_force, ""),
            qty=number(report.order_qty),
            notional=None,
            limit_price=number(report.limit_price),
            stop_price=number(report.stop_price),
            accepted=True,
            placed_at=self.bar_index,
        )
        self.orders[report.order_id] = record
        self.order_list.append(record)
        return record

    # OrderGateway ---------------------------------------------------------------------------------------
    async def submit(self, request: orders_pb2.OrderRequest) -> OrderResult:
        cid = request.client_order_id
        order_id = ""
        try:
            order = validate_order(request, self._subject)
            order_id = order.order_id
            if cid in self.accepted:
                return OrderResult(True, order_id, cid, duplicate=True)
            self._route(order, order_id, request)
        except DeskError as err:
            if not order_id and cid:
                order_id = order_id_for(self.strategy_id, cid)
            record = _order_record(request, order_id, self.bar_index)
            record.reason, record.status = _reason(err.code), "rejected"
            self.order_list.append(record)
            return OrderResult(False, order_id, cid, record.reason, err.message)
        return OrderResult(True, order_id, cid)

    def _route(self, order: ValidOrder, order_id: str, request: orders_pb2.OrderRequest) -> None:
        if order.symbol not in self.prices:
            raise refusal("UNKNOWN_SYMBOL", f"symbol {order.symbol!r} has no market data on the desk")
        if order.replaces:  # the router's check: the order replaced is known (a final one: ORDER_CLOSED)
            replaced = order_id_for(self.strategy_id, order.replaces)
            known = self.account.is_open(replaced) or self.account.is_closed(replaced)
            if not known and order.replaces not in self.accepted:
                raise refusal("UNKNOWN_ORDER", f"no order {order.replaces} for strategy {self.strategy_id} to replace")
        reservation = self.account.check(order, self.limits, self.prices.get(order.symbol))
        self.account.reserve(order_id, reservation, by_notional=order.notional is not None)
        self.accepted.add(order.client_order_id)
        record = _order_record(request, order_id, self.bar_index)
        record.accepted = True
        self.orders[order_id] = record
        self.order_list.append(record)
        routed = orders_pb2.RoutedOrder(
            order_id=order_id,
            strategy_id=order.strategy_id,
            member_id=self.member_id,
            routed_ns=self.now_ns,
            new_order=request,
        )
        self._catch_up(order.symbol)
        self._reports(self.engine.submit_local(routed))

    async def cancel(self, client_order_id: str) -> CancelResult:
        request = orders_pb2.CancelRequest(strategy_id=self.strategy_id, client_order_id=client_order_id)
        try:
            order_id = validate_cancel(request, self._cancel_subject)
            if self.account.is_closed(order_id):
                raise refusal("ORDER_CLOSED", f"order {client_order_id} is already final")
            if not self.account.is_open(order_id) and client_order_id not in self.accepted:
                raise refusal("UNKNOWN_ORDER", f"no order {client_order_id} for strategy {self.strategy_id}")
        except DeskError as err:
            known = order_id_for(self.strategy_id, client_order_id) if client_order_id else ""
            return CancelResult(False, known, client_order_id, _reason(err.code), err.message)
        routed = orders_pb2.RoutedOrder(
            order_id=order_id,
            strategy_id=self.strategy_id,
            member_id=self.member_id,
            routed_ns=self.now_ns,
            cancel=request,
        )
        self._reports(self.engine.cancel_local(routed))
        return CancelResult(True, order_id, client_order_id)


def _reason(code: str) -> str:
    return orders_pb2.RejectReason.Name(reject_reason(code)).removeprefix("REJECT_REASON_")


def _risk_limits(risk: Any) -> strategy_pb2.RiskLimits:
    """A config.json ``risk`` object as the orchestrator puts it in the spec (lenient: what the
    orchestrator would refuse is left to ``Limits.resolve``'s defaults)."""
    limits = strategy_pb2.RiskLimits()
    if not isinstance(risk, Mapping):
        return limits
    for key in ("max_order_notional", "max_position_notional"):
        if risk.get(key) is not None:
            setattr(limits, key, str(risk[key]))
    per_minute = risk.get("max_orders_per_minute")
    if isinstance(per_minute, int) and not isinstance(per_minute, bool) and 0 < per_minute < 2**32:
        limits.max_orders_per_minute = per_minute
    limits.allow_short = risk.get("allow_short") is True
    return limits


def _initial_cash(value: Any) -> Decimal:
    """As the router reads ``StrategySpec.initial_cash``: a positive number, else the default."""
    try:
        cash = Decimal(str(value)) if value not in (None, "") else Decimal(0)
    except ArithmeticError:
        return DEFAULT_INITIAL_CASH
    return cash if cash.is_finite() and cash > 0 else DEFAULT_INITIAL_CASH


def _intervals(bars: Iterable[Bar | Mapping[str, Any]]) -> Callable[[Bar], int]:
    """Each bar's length: its own, else the replay feed's inference (see the module docstring)."""
    if isinstance(bars, Sequence):
        inferred = infer_intervals((b.symbol, b.start_ns) for b in map(to_bar, bars) if not b.interval_ns)

        def known(bar: Bar) -> int:
            return bar.interval_ns or inferred.get(bar.symbol, DEFAULT_INTERVAL_NS)

        return known
    last: dict[str, int] = {}
    gaps: dict[str, int] = {}

    def running(bar: Bar) -> int:
        if bar.interval_ns:
            return bar.interval_ns
        previous = last.get(bar.symbol)
        if previous is not None and bar.start_ns > previous:
            gap = bar.start_ns - previous
            gaps[bar.symbol] = min(gaps.get(bar.symbol, gap), gap)
        last[bar.symbol] = bar.start_ns
        return gaps.get(bar.symbol, DEFAULT_INTERVAL_NS)

    return running


def _numbered_ids(strategy_id: str) -> Callable[[], str]:
    """Client order ids ``<strategy_id[:20]>-bt<n>`` (n from 1): the same for every run of a backtest."""
    counter = itertools.count(1)
    prefix = f"{strategy_id[:20]}-bt"
    return lambda: f"{prefix}{next(counter)}"


def _overrides(instance: Strategy, hook: str) -> bool:
    """Whether ``instance``'s ``hook`` is something other than the base class's no-op."""
    return getattr(getattr(instance, hook), "__func__", None) is not getattr(Strategy, hook)


@contextlib.contextmanager
def _long_run_gc() -> Iterator[None]:
    """A run makes millions of short-lived objects (bars, reports) while its results grow, and the cyclic
    collector would rescan the growing results again and again: the objects that exist before the run
    (modules, the data) are frozen out of collections and the youngest generation is collected less
    often, for the run only (measured: about 10% of a 1M-bar run)."""
    freeze = gc.isenabled() and gc.get_freeze_count() == 0
    threshold = gc.get_threshold()
    if freeze:
        gc.freeze()
    gc.set_threshold(max(threshold[0], GC_YOUNG_THRESHOLD), *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        if freeze:
            gc.unfreeze()


def _sim_model(
    sim_config: SimConfig | None, fee_bps: Decimal | int | str | None, slippage_bps: Decimal | int | str | None
) -> SimConfig:
    """The venue model: ``sim_config`` (default: the sim gateway's ``SIM_*`` defaults), fee and slippage
    overridden when given."""
    sim = sim_config or SimConfig()
    if fee_bps is not None:
        sim = dataclasses.replace(sim, fee_bps=Decimal(fee_bps))
    if slippage_bps is not None:
        sim = dataclasses.replace(sim, slippage_bps=Decimal(slippage_bps))
    return sim


class _Run:
    """One backtest: the strategy attached to an in-process desk, the bars replayed through it."""

    def __init__(self, instance: Strategy, desk: _Desk, context: StrategyContext, symbols: frozenset[str]) -> None:
        self.instance = instance
        self.desk = desk
        self.context = context
        self.account = context.account
        self.symbols = symbols
        self.fills: list[Fill] = []
        self.updates: list[OrderUpdate] = []
        self.messages: list[str] = []
        self.equity = EquityCurve()
        # A hook the strategy does not override is the base class's no-op: not calling it changes nothing.
        self.fill_hook = _overrides(instance, "on_fill")
        self.update_hook = _overrides(instance, "on_order_update")

    def failed(self, name: str, exc: Exception) -> None:
        context = self.context
        context.errors += 1
        context.last_error = f"{name}: {exc!r}"
        self.messages.append(context.last_error)
        context.log.error("strategy.hook_failed in %s: %r", name, exc, exc_info=exc)

    async def safe(self, name: str, *args: Any) -> None:
        try:
            await call_hook(getattr(self.instance, name), *args)
        except Exception as exc:  # noqa: BLE001 - a hook's error is counted and logged; the run goes on, as live
            self.failed(name, exc)

    async def drain(self) -> None:
        """The venue's queued reports, booked by the strategy's account and handed to its hooks."""
        queue, apply = self.desk.queue, self.account.apply
        while queue:
            booked = apply(queue.popleft())
            if booked is None:
                continue
            fill, update = booked
            if fill is not None:
                self.fills.append(fill)
                if self.fill_hook:
                    await self.safe("on_fill", fill)
            self.updates.append(update)
            if self.update_hook:
                await self.safe("on_order_update", update)

    async def replay(self, bars: Iterable[Bar | Mapping[str, Any]]) -> tuple[int, Decimal]:
        """Every bar: the desk sees its tick, then ``on_bar``, then the reports; the equity after it.
        Returns the number of bars and the final equity (exact)."""
        account, desk, queue, symbols = self.account, self.desk, self.desk.queue, self.symbols
        on_bar = self.instance.on_bar
        bar_is_async = inspect.iscoroutinefunction(on_bar)
        interval_of = _intervals(bars)
        # Equity = cash + the held symbols at their last price; recomputed only from symbols with positions.
        held: list[tuple[str, Decimal]] = []
        value = account.cash
        value_f = float(value)
        books_changed = False
        prices, desk_bar = desk.prices, desk.on_bar
        # StrategyContext.record_bar, inlined (a call per bar): each symbol's recent bars for history()
        history, history_size = self.context.bars, self.context.history_size
        ts_append, value_append = self.equity.ts.append, self.equity.values.append
        index = -1
        for raw in bars:
            bar = raw if type(raw) is Bar else to_bar(raw)
            if symbols and bar.symbol not in symbols:
                continue
            index += 1
            desk.bar_index = index
            desk_bar(bar, bar.interval_ns or interval_of(bar))  # interval_of gives a bar's own interval first
            kept = history.get(bar.symbol)
            if kept is None:
                kept = history[bar.symbol] = deque(maxlen=history_size)
            kept.append(bar)
            try:
                if bar_is_async:
                    await on_bar(bar)
                else:
                    await call_hook(on_bar, bar)
            except Exception as exc:  # noqa: BLE001 - as in safe()
                self.failed("on_bar", exc)
            if queue:
                await self.drain()
                books_changed = True
            if books_changed:
                held = [(s, q) for s, q in account.positions.items() if q]
                books_changed = False
                if not held:
                    value = account.cash
                    value_f = float(value)
            if held:
                value = account.cash
                for s, q in held:
                    value += q * prices[s]
                value_f = float(value)
            ts_append(bar.start_ns)
            value_append(value_f)
        return index + 1, value

    async def run(self, bars: Iterable[Bar | Mapping[str, Any]]) -> BacktestResult:
        await call_hook(self.instance.on_start)
        await self.drain()
        with _long_run_gc():
            count, value = await self.replay(bars)
        self.equity.final = value if count else None
        self.desk.bar_index = count
        await self.safe("on_stop")
        await self.drain()
        account = self.account
        return BacktestResult(
            fills=self.fills,
            orders=self.desk.order_list,
            updates=self.updates,
            positions={s: q for s, q in account.positions.items() if q != 0},
            cash=account.cash,
            equity_curve=self.equity,
            errors=self.context.errors,
            error_messages=self.messages,
            raw_reports=self.desk.all_reports,
        )


async def run_backtest_async(
    strategy: Strategy | type[Strategy],
    bars: Iterable[Bar | Mapping[str, Any]],
    *,
    initial_cash: Decimal | int | str | None = None,
    fee_bps: Decimal | int | str | None = None,
    slippage_bps: Decimal | int | str | None = None,
    allow_short: bool | None = None,
    config: dict[str, Any] | None = None,
    strategy_id: str = "backtest",
    member_id: str = "",
    sim_config: SimConfig | None = None,
    risk_defaults: Limits = DEFAULT_LIMITS,
    feed_every_tick: bool = False,
    record_reports: bool = False,
) -> BacktestResult:
    """:func:`run_backtest` for code already inside an event loop."""
    config = dict(config or {})
    instance = strategy() if isinstance(strategy, type) else strategy
    cash = _initial_cash(config.get("initial_cash") if initial_cash is None else initial_cash)
    risk = _risk_limits(config.get("risk"))
    if allow_short is not None:
        risk.allow_short = allow_short
    desk = _Desk(
        strategy_id,
        member_id,
        initial_cash=cash,
        limits=Limits.resolve(risk, risk_defaults),
        sim_config=_sim_model(sim_config, fee_bps, slippage_bps),
        feed_every_tick=feed_every_tick,
        record_reports=record_reports,
    )
    context = StrategyContext(
        strategy_id=strategy_id,
        member_id=member_id,
        config=config,
        account=Account(cash=cash),
        gateway=desk,
        log=logging.getLogger(f"strategy.{strategy_id}"),
        history_size=history_size(config),
        new_client_order_id=_numbered_ids(strategy_id),
    )
    instance.attach(context)
    symbols = frozenset(str(s) for s in config.get("symbols") or [])
    return await _Run(instance, desk, context, symbols).run(bars)


def run_backtest(
    strategy: Strategy | type[Strategy],
    bars: Iterable[Bar | Mapping[str, Any]],
    *,
    initial_cash: Decimal | int | str | None = None,
    fee_bps: Decimal | int | str | None = None,
    slippage_bps: Decimal | int | str | None = None,
    allow_short: bool | None = None,
    config: dict[str, Any] | None = None,
    strategy_id: str = "backtest",
    member_id: str = "",
    sim_config: SimConfig | None = None,
    risk_defaults: Limits = DEFAULT_LIMITS,
    feed_every_tick: bool = False,
    record_reports: bool = False,
) -> BacktestResult:
    """Run ``strategy`` (an instance or a class) over ``bars`` on the desk's engine.

    ``initial_cash`` defaults to ``config["initial_cash"]``, then the router's default (100000);
    the risk limits are ``config["risk"]`` over ``risk_defaults`` (the router's defaults), with
    ``allow_short`` overriding the config's; the venue model is ``sim_config`` (default: the sim
    gateway's ``SIM_*`` defaults) with ``fee_bps`` / ``slippage_bps`` overriding its own.
    ``record_reports=True`` keeps the venue's execution reports (``result.reports``);
    ``feed_every_tick=True`` feeds the engine every tick (slower, same results). See the module
    docstring for the rules.
    """
    coro = run_backtest_async(
        strategy,
        bars,
        initial_cash=initial_cash,
        fee_bps=fee_bps,
        slippage_bps=slippage_bps,
        allow_short=allow_short,
        config=config,
        strategy_id=strategy_id,
        member_id=member_id,
        sim_config=sim_config,
        risk_defaults=risk_defaults,
        feed_every_tick=feed_every_tick,
        record_reports=record_reports,
    )
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    # Called from inside an event loop (an async test): run on a private loop in a thread.
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = asyncio.run(coro)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=target, name="backtest")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    result: BacktestResult = box["result"]
    return result
