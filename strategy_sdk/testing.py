"""Backtest a strategy in-process, without NATS: for members' own unit tests.

:func:`run_backtest` feeds a list of bars to a :class:`~strategy_sdk.Strategy` and simulates the
desk around it, one event at a time exactly like the live runner:

* **Market orders fill at the open of the next bar of their symbol** (never at the bar that made
  the decision, so no look-ahead), adjusted by ``slippage_bps`` against the strategy.
* **Limit orders** fill on a later bar that trades through the limit: a buy when ``low <= limit``
  at ``min(limit, open)``, a sell when ``high >= limit`` at ``max(limit, open)``. **Stop** orders
  trigger when the bar reaches the stop and fill at ``max(stop, open)`` (buy) / ``min(stop, open)``
  (sell) plus slippage; **stop-limit** orders become limit orders once triggered.
* ``ioc`` / ``fok`` orders that cannot fill on the next bar expire; ``day`` and ``gtc`` orders stay
  open until filled or cancelled (a backtest has no sessions). Orders fill completely.
* Buys that would spend more than the free cash (cash minus open buy orders) are refused with
  reason ``INSUFFICIENT_BUYING_POWER``; selling more than held is refused with
  ``SHORT_NOT_ALLOWED`` unless ``allow_short=True`` — as the desk's router does by default.
* ``fee_bps`` charges that share of each fill's value. ``on_fill`` and ``on_order_update`` fire
  as they would live (a ``new`` update after each accepted order, then fills, cancels, expiries).
* An exception in a hook is counted in ``result.errors`` (with the messages in
  ``result.error_messages``) and the backtest goes on, as live; one in ``on_start`` is raised.

Example (a pytest test)::

    from decimal import Decimal
    from strategy_sdk import Strategy
    from strategy_sdk.testing import make_bars, run_backtest

    class BuyOnce(Strategy):
        async def on_bar(self, bar):
            if self.position(bar.symbol) == 0 and not self.open_orders:
                await self.buy(bar.symbol, 10)

    def test_buy_once_fills_at_the_next_open():
        bars = make_bars("AAPL", ["100", "101", "102"])   # closes; open = previous close
        result = run_backtest(BuyOnce(), bars)
        assert result.positions == {"AAPL": Decimal(10)}
        assert result.fills[0].price == Decimal("100")  # the second bar's open
        assert result.cash == Decimal("100000") - 10 * Decimal("100")

Bars may be :class:`~strategy_sdk.Bar` objects, dicts or CSV rows (``symbol, open, high, low, close,
volume`` and ``timestamp`` (ISO 8601) or ``start_ns``); see :func:`to_bar` and :func:`bars_from_csv`.
"""

from __future__ import annotations

import asyncio
import csv
import logging
import random
import threading
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from desk.bus.decimals import fmt
from desk.core.ids import order_id_for
from desk.core.orders import ORDER_TYPE_WORDS, TIME_IN_FORCE_WORDS
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from strategy_sdk.models import Bar, CancelResult, Fill, OrderResult, OrderUpdate
from strategy_sdk.orders import Account
from strategy_sdk.strategy import Strategy, StrategyContext, call_hook

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
_PRICE_PLACES = Decimal("0.0001")
_QTY_PLACES = Decimal("0.000001")


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


def make_bars(symbol: str, closes: Sequence[Decimal | int | str], *, interval_s: int = 60,
              start_ns: int = 1_767_000_000 * 1_000_000_000) -> list[Bar]:
    """Handmade bars from closes: each bar opens at the previous close (the first at its own close),
    high/low are the max/min of open and close."""
    bars: list[Bar] = []
    previous: Decimal | None = None
    for i, raw in enumerate(closes):
        close = Decimal(raw)
        open_ = close if previous is None else previous
        bars.append(Bar(symbol, open_, max(open_, close), min(open_, close), close, Decimal(100),
                        start_ns + i * interval_s * 1_000_000_000, interval_s * 1_000_000_000, source="test"))
        previous = close
    return bars


def random_walk_bars(symbols: Sequence[str], count: int, *, seed: int = 7, start: str = "100",
                     step_bps: int = 50) -> list[Bar]:
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
            bars.append(Bar(s, open_, high, low, close, Decimal(rng.randint(100, 1000)),
                            t0 + i * 1_000_000_000, 1_000_000_000, source="synthetic"))
            prices[s] = close
    return bars


# Results ------------------------------------------------------------------------------------------------
@dataclass
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
    placed_at: int = -1          # index of the bar being processed when it was sent (-1: on_start)
    triggered: bool = False


@dataclass
class BacktestResult:
    """What happened: fills, orders, final books, equity after every bar, hook errors."""

    fills: list[Fill]
    orders: list[BacktestOrder]
    updates: list[OrderUpdate]
    positions: dict[str, Decimal]
    cash: Decimal
    equity_curve: list[tuple[int, Decimal]]
    errors: int
    error_messages: list[str] = field(default_factory=list)

    @property
    def final_equity(self) -> Decimal:
        return self.equity_curve[-1][1] if self.equity_curve else self.cash


# The simulated desk -------------------------------------------------------------------------------------------
class _SimDesk:
    """Router + venue for one strategy; reports go to a queue dispatched between hooks."""

    def __init__(self, strategy_id: str, member_id: str, account: Account, *, fee_bps: Decimal,
                 slippage_bps: Decimal, allow_short: bool) -> None:
        self.strategy_id = strategy_id
        self.member_id = member_id
        self.account = account
        self.fee_bps = fee_bps
        self.slippage_bps = slippage_bps
        self.allow_short = allow_short
        self.orders: dict[str, BacktestOrder] = {}
        self.order_list: list[BacktestOrder] = []
        self.reports: deque[executions_pb2.ExecutionReport] = deque()
        self.last_price: dict[str, Decimal] = {}
        self.bar_index = -1
        self.bar_ns = 0
        self._exec_seq = 0

    # OrderGateway -------------------------------------------------------------------------------------
    async def submit(self, request: orders_pb2.OrderRequest) -> OrderResult:
        cid = request.client_order_id
        order_id = order_id_for(self.strategy_id, cid)
        if cid in self.orders and self.orders[cid].accepted:
            return OrderResult(True, order_id, cid, duplicate=True)
        order = BacktestOrder(
            client_order_id=cid, order_id=order_id, symbol=request.symbol,
            side="buy" if request.side == common_pb2.SIDE_BUY else "sell",
            type=ORDER_TYPE_WORDS[request.type], time_in_force=TIME_IN_FORCE_WORDS[request.time_in_force],
            qty=Decimal(request.qty) if request.qty else None,
            notional=Decimal(request.notional) if request.notional else None,
            limit_price=Decimal(request.limit_price) if request.limit_price else None,
            stop_price=Decimal(request.stop_price) if request.stop_price else None,
            accepted=False, placed_at=self.bar_index,
        )
        reason, message = self._risk(order)
        self.order_list.append(order)
        if reason:
            order.reason, order.status = reason, "rejected"
            return OrderResult(False, order_id, cid, reason, message)
        order.accepted = True
        self.orders[cid] = order
        self._report(order, executions_pb2.EXEC_TYPE_NEW, executions_pb2.ORDER_STATUS_NEW)
        return OrderResult(True, order_id, cid)

    async def cancel(self, client_order_id: str) -> CancelResult:
        order = self.orders.get(client_order_id)
        if order is None:
            return CancelResult(False, "", client_order_id, "UNKNOWN_ORDER", "no such order")
        if order.status in ("filled", "canceled", "expired", "rejected"):
            return CancelResult(False, order.order_id, client_order_id, "ORDER_CLOSED", f"order is {order.status}")
        order.status = "canceled"
        self._report(order, executions_pb2.EXEC_TYPE_CANCELED, executions_pb2.ORDER_STATUS_CANCELED, text="canceled")
        return CancelResult(True, order.order_id, client_order_id)

    # Risk ------------------------------------------------------------------------------------------------------------
    def _open(self) -> list[BacktestOrder]:
        return [o for o in self.orders.values() if o.status in ("new", "partially_filled")]

    def _estimate(self, order: BacktestOrder) -> Decimal | None:
        if order.notional is not None:
            return order.notional
        price = order.limit_price or order.stop_price or self.last_price.get(order.symbol)
        return None if price is None or order.qty is None else order.qty * price

    def _risk(self, order: BacktestOrder) -> tuple[str, str]:
        if order.side == "buy":
            cost = self._estimate(order)
            if cost is None:
                return "", ""
            reserved = sum((self._estimate(o) or Decimal(0)) for o in self._open() if o.side == "buy")
            free = self.account.cash - reserved
            if cost > free:
                return "INSUFFICIENT_BUYING_POWER", f"order needs {fmt(cost)}, free cash is {fmt(free)}"
            return "", ""
        if not self.allow_short and order.qty is not None:
            held = self.account.position(order.symbol)
            selling = sum((o.qty or Decimal(0)) - o.filled_qty for o in self._open()
                          if o.side == "sell" and o.symbol == order.symbol)
            if order.qty > held - selling:
                return "SHORT_NOT_ALLOWED", f"selling {fmt(order.qty)} with {fmt(held - selling)} available"
        return "", ""

    # Matching ---------------------------------------------------------------------------------------------------
    def _slip(self, price: Decimal, side: str) -> Decimal:
        factor = 1 + self.slippage_bps / _BPS if side == "buy" else 1 - self.slippage_bps / _BPS
        return (price * factor).quantize(_PRICE_PLACES)

    def _fill_price(self, order: BacktestOrder, bar: Bar) -> Decimal | None:
        buy = order.side == "buy"
        if order.type in ("stop", "stop_limit") and not order.triggered:
            assert order.stop_price is not None
            if (buy and bar.high >= order.stop_price) or (not buy and bar.low <= order.stop_price):
                order.triggered = True
            else:
                return None
            if order.type == "stop":
                base = max(order.stop_price, bar.open) if buy else min(order.stop_price, bar.open)
                return self._slip(base, order.side)
        if order.type == "market":
            return self._slip(bar.open, order.side)
        assert order.limit_price is not None
        if buy and bar.low <= order.limit_price:
            return min(order.limit_price, bar.open)
        if not buy and bar.high >= order.limit_price:
            return max(order.limit_price, bar.open)
        return None

    def match(self, bar: Bar) -> None:
        for order in [o for o in self._open() if o.symbol == bar.symbol and o.placed_at < self.bar_index]:
            price = self._fill_price(order, bar)
            if price is None:
                if order.time_in_force in ("ioc", "fok"):
                    order.status = "expired"
                    self._report(order, executions_pb2.EXEC_TYPE_EXPIRED, executions_pb2.ORDER_STATUS_EXPIRED,
                                 text=f"{order.time_in_force} order could not fill")
                continue
            qty = order.qty if order.qty is not None else (
                (order.notional or Decimal(0)) / price).quantize(_QTY_PLACES, ROUND_DOWN)
            fee = (qty * price * self.fee_bps / _BPS).quantize(_PRICE_PLACES)
            order.status, order.filled_qty, order.avg_price = "filled", qty, price
            self._report(order, executions_pb2.EXEC_TYPE_FILL, executions_pb2.ORDER_STATUS_FILLED,
                         fill_qty=qty, fill_price=price, fee=fee)

    def _report(self, order: BacktestOrder, exec_type: int, status: int, *, fill_qty: Decimal | None = None,
                fill_price: Decimal | None = None, fee: Decimal | None = None, text: str = "") -> None:
        self._exec_seq += 1
        leaves = Decimal(0) if status != executions_pb2.ORDER_STATUS_NEW else (order.qty or Decimal(0))
        self.reports.append(executions_pb2.ExecutionReport(
            execution_id=f"bt-{self._exec_seq}", order_id=order.order_id, client_order_id=order.client_order_id,
            strategy_id=self.strategy_id, member_id=self.member_id, exec_type=exec_type, status=status,  # type: ignore[arg-type]
            symbol=order.symbol, side=common_pb2.SIDE_BUY if order.side == "buy" else common_pb2.SIDE_SELL,
            order_qty=fmt(order.qty), limit_price=fmt(order.limit_price), stop_price=fmt(order.stop_price),
            fill_qty=fmt(fill_qty), fill_price=fmt(fill_price), cum_qty=fmt(order.filled_qty),
            avg_price=fmt(order.avg_price), leaves_qty=fmt(leaves), fee=fmt(fee), venue="backtest", text=text,
            event_ns=self.bar_ns, report_ns=self.bar_ns, notional=fmt(order.notional),
        ))


async def run_backtest_async(
    strategy: Strategy | type[Strategy],
    bars: Iterable[Bar | Mapping[str, Any]],
    *,
    initial_cash: Decimal | int | str = Decimal(100000),
    fee_bps: Decimal | int | str = 0,
    slippage_bps: Decimal | int | str = 0,
    allow_short: bool = False,
    config: dict[str, Any] | None = None,
    strategy_id: str = "backtest",
    member_id: str = "",
) -> BacktestResult:
    """:func:`run_backtest` for code already inside an event loop."""
    instance = strategy() if isinstance(strategy, type) else strategy
    account = Account(cash=Decimal(initial_cash))
    desk = _SimDesk(strategy_id, member_id, account, fee_bps=Decimal(fee_bps), slippage_bps=Decimal(slippage_bps),
                    allow_short=allow_short)
    context = StrategyContext(strategy_id=strategy_id, member_id=member_id, config=dict(config or {}),
                              account=account, gateway=desk, log=logging.getLogger(f"strategy.{strategy_id}"))
    instance.attach(context)
    fills: list[Fill] = []
    updates: list[OrderUpdate] = []
    messages: list[str] = []
    equity: list[tuple[int, Decimal]] = []

    async def safe(name: str, *args: Any) -> None:
        try:
            await call_hook(getattr(instance, name), *args)
        except Exception as exc:
            context.errors += 1
            context.last_error = f"{name}: {exc!r}"
            messages.append(context.last_error)
            context.log.error("strategy.hook_failed in %s: %r", name, exc, exc_info=exc)

    async def drain() -> None:
        while desk.reports:
            booked = account.apply(desk.reports.popleft())
            if booked is None:
                continue
            fill, update = booked
            if fill is not None:
                fills.append(fill)
                await safe("on_fill", fill)
            updates.append(update)
            await safe("on_order_update", update)

    await call_hook(instance.on_start)
    await drain()
    for index, raw in enumerate(bars):
        bar = to_bar(raw)
        desk.bar_index, desk.bar_ns = index, bar.start_ns
        desk.match(bar)
        await drain()
        desk.last_price[bar.symbol] = bar.close
        await safe("on_bar", bar)
        await drain()
        value = sum((q * desk.last_price.get(s, Decimal(0)) for s, q in account.positions.items()), Decimal(0))
        equity.append((bar.start_ns, account.cash + value))
    desk.bar_index += 1
    await safe("on_stop")
    await drain()
    return BacktestResult(
        fills=fills, orders=desk.order_list, updates=updates,
        positions={s: q for s, q in account.positions.items() if q != 0}, cash=account.cash,
        equity_curve=equity, errors=context.errors, error_messages=messages,
    )


def run_backtest(
    strategy: Strategy | type[Strategy],
    bars: Iterable[Bar | Mapping[str, Any]],
    *,
    initial_cash: Decimal | int | str = Decimal(100000),
    fee_bps: Decimal | int | str = 0,
    slippage_bps: Decimal | int | str = 0,
    allow_short: bool = False,
    config: dict[str, Any] | None = None,
    strategy_id: str = "backtest",
    member_id: str = "",
) -> BacktestResult:
    """Run ``strategy`` (an instance or a class) over ``bars``; see the module docstring for the rules."""
    coro = run_backtest_async(
        strategy, bars, initial_cash=initial_cash, fee_bps=fee_bps, slippage_bps=slippage_bps,
        allow_short=allow_short, config=config, strategy_id=strategy_id, member_id=member_id,
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
