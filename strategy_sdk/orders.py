"""Order arguments in, ``OrderRequest`` out, and the strategy's own books from its execution reports.

Pure logic, no I/O: the live runner and the backtest (:mod:`strategy_sdk.testing`) share it.

Numbers: quantities and prices may be given as :class:`~decimal.Decimal`, ``int`` or ``str``.
A ``float`` is accepted too, converted through ``str()`` (so ``0.1`` means ``Decimal("0.1")``, not
the binary fraction) with a one-time warning, because a float price is usually a bug waiting to
happen; no float arithmetic is ever done on it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from sys import intern
from typing import Any

from desk.bus import subjects
from desk.bus.decimals import ABSURD, dec, fmt
from desk.bus.errors import DeskError
from desk.core.orders import (
    FINAL_STATUSES,
    ORDER_CLASSES,
    ORDER_TYPE_WORDS,
    ORDER_TYPES,
    SIDES,
    TIME_IN_FORCE_WORDS,
    TIMES_IN_FORCE,
    AnyReport,
    needs_limit_price,
    needs_stop_price,
    side_name,
    validate_order,
)
from desk.v1 import common_pb2, executions_pb2, orders_pb2
from strategy_sdk.models import Fill, OpenOrder, OrderUpdate

log = logging.getLogger("strategy_sdk")

Number = Decimal | int | str | float

_float_warned = False


def to_decimal(field_name: str, value: Number | None, *, required: bool = False) -> Decimal | None:
    """``value`` as a positive finite Decimal, or ValueError naming ``field_name``."""
    global _float_warned
    if value is None:
        if required:
            raise ValueError(f"{field_name} is required")
        return None
    if isinstance(value, bool):
        raise ValueError(f"{field_name} must be a number, got {value!r}")  # noqa: TRY004 - one error type for bad orders
    if isinstance(value, float):
        if not _float_warned:
            _float_warned = True
            log.warning("order.float_argument: %s=%r converted via str(); prefer Decimal or str", field_name, value)
        value = str(value)
    if not isinstance(value, (Decimal, int, str)):
        raise ValueError(  # noqa: TRY004 - one error type for bad order arguments
            f"{field_name} must be a Decimal, int or str, got {type(value).__name__}"
        )
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValueError(f"{field_name} {value!r} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise ValueError(f"{field_name} must be a positive finite number, got {value!r}")
    if number > ABSURD:
        raise ValueError(f"{field_name} {value!r} is larger than the limit {fmt(ABSURD)}")
    return number


def new_client_order_id(strategy_id: str) -> str:
    """A fresh id matching ``[A-Za-z0-9_-]{1,64}``: ``<strategy_id[:20]>-<24 hex digits>``."""
    return f"{strategy_id[:20]}-{uuid.uuid4().hex[:24]}"


def _choice(field_name: str, value: str, choices: Mapping[str, Any]) -> Any:
    key = value.lower() if isinstance(value, str) else value
    if key not in choices:
        raise ValueError(f"{field_name} must be one of {', '.join(choices)}; got {value!r}")
    return choices[key]


def build_order_request(
    strategy_id: str,
    symbol: str,
    side: str,
    qty: Number | None = None,
    notional: Number | None = None,
    type: str = "market",
    limit_price: Number | None = None,
    stop_price: Number | None = None,
    time_in_force: str = "day",
    client_order_id: str | None = None,
    extended_hours: bool = False,
    *,
    trail_price: Number | None = None,
    trail_percent: Number | None = None,
    order_class: str | None = None,
    take_profit: Number | None = None,
    stop_loss: Number | None = None,
    stop_loss_limit: Number | None = None,
    replaces: str | None = None,
) -> orders_pb2.OrderRequest:
    """Validate the arguments once, here (ValueError with a clear message), and build the request.

    ``order_class`` defaults to "bracket" when both ``take_profit`` and ``stop_loss`` are given, "oto"
    when one is, else "simple"; the advanced fields are checked by the router's own rules
    (:func:`desk.core.orders.validate_order`)."""
    request = _simple_request(
        strategy_id,
        symbol,
        side,
        qty,
        notional,
        type,
        limit_price,
        stop_price,
        time_in_force,
        client_order_id,
        extended_hours,
        oco=order_class == "oco",
    )
    exits = (take_profit is not None) + (stop_loss is not None)
    klass = order_class if order_class is not None else {0: "simple", 1: "oto", 2: "bracket"}[exits]
    request.order_class = _choice("order_class", klass, ORDER_CLASSES)
    request.trail_price = fmt(to_decimal("trail_price", trail_price))
    request.trail_percent = fmt(to_decimal("trail_percent", trail_percent))
    request.take_profit_limit_price = fmt(to_decimal("take_profit", take_profit))
    request.stop_loss_stop_price = fmt(to_decimal("stop_loss", stop_loss))
    request.stop_loss_limit_price = fmt(to_decimal("stop_loss_limit", stop_loss_limit))
    request.replaces = replaces or ""
    advanced = request.order_class or request.type == common_pb2.ORDER_TYPE_TRAILING_STOP or request.replaces
    if advanced or request.trail_price or request.trail_percent:
        try:
            validate_order(request, subjects.order_submit(strategy_id))
        except DeskError as err:
            raise ValueError(err.message) from None
    return request


def _simple_request(
    strategy_id: str,
    symbol: str,
    side: str,
    qty: Number | None,
    notional: Number | None,
    type: str,
    limit_price: Number | None,
    stop_price: Number | None,
    time_in_force: str,
    client_order_id: str | None,
    extended_hours: bool,
    *,
    oco: bool,
) -> orders_pb2.OrderRequest:
    """The fields every order has, checked (an OCO's limit price may be left to its take-profit)."""
    if not isinstance(symbol, str) or not subjects.SYMBOL_RE.match(symbol):
        raise ValueError(f"symbol must match {subjects.SYMBOL_RE.pattern} (upper case), got {symbol!r}")
    side_value = _choice("side", side, SIDES)
    type_value = _choice("type", type, ORDER_TYPES)
    tif_value = _choice("time_in_force", time_in_force, TIMES_IN_FORCE)
    qty_d = to_decimal("qty", qty)
    notional_d = to_decimal("notional", notional)
    if (qty_d is None) == (notional_d is None):
        raise ValueError("give exactly one of qty and notional")
    if notional_d is not None and type_value != common_pb2.ORDER_TYPE_MARKET:
        raise ValueError("notional orders must be market orders")
    limit_d = to_decimal("limit_price", limit_price)
    stop_d = to_decimal("stop_price", stop_price)
    needs_limit = needs_limit_price(type_value)
    needs_stop = needs_stop_price(type_value)
    if needs_limit and limit_d is None and not oco:
        raise ValueError(f"{type} orders need a limit_price")
    if not needs_limit and limit_d is not None:
        raise ValueError(f"{type} orders take no limit_price")
    if needs_stop and stop_d is None:
        raise ValueError(f"{type} orders need a stop_price")
    if not needs_stop and stop_d is not None:
        raise ValueError(f"{type} orders take no stop_price")
    if client_order_id is None:
        client_order_id = new_client_order_id(strategy_id)
    elif not isinstance(client_order_id, str) or not subjects.CLIENT_ORDER_ID_RE.match(client_order_id):
        raise ValueError(f"client_order_id must match {subjects.CLIENT_ORDER_ID_RE.pattern}, got {client_order_id!r}")
    return orders_pb2.OrderRequest(
        strategy_id=strategy_id,
        client_order_id=client_order_id,
        symbol=symbol,
        side=side_value,
        type=type_value,
        time_in_force=tif_value,
        qty=fmt(qty_d),
        notional=fmt(notional_d),
        limit_price=fmt(limit_d),
        stop_price=fmt(stop_d),
        extended_hours=extended_hours,
    )


def open_order_from_request(request: orders_pb2.OrderRequest, order_id: str) -> OpenOrder:
    return OpenOrder(
        order_id=order_id,
        client_order_id=request.client_order_id,
        symbol=request.symbol,
        side=side_name(request.side),
        type=ORDER_TYPE_WORDS.get(request.type, ""),
        time_in_force=TIME_IN_FORCE_WORDS.get(request.time_in_force, ""),
        qty=Decimal(request.qty) if request.qty else None,
        notional=Decimal(request.notional) if request.notional else None,
        limit_price=Decimal(request.limit_price) if request.limit_price else None,
        stop_price=Decimal(request.stop_price) if request.stop_price else None,
        created_ns=time.time_ns(),
        trail_price=Decimal(request.trail_price) if request.trail_price else None,
        trail_percent=Decimal(request.trail_percent) if request.trail_percent else None,
    )


@dataclass
class Account:
    """Positions, cash and open orders of one strategy, derived from its own execution reports.

    Reports are applied once each (keyed by execution id), because a plain subscription sees a
    gateway's republished report again even when the stream deduplicates it.
    """

    cash: Decimal = Decimal(100000)
    positions: dict[str, Decimal] = field(default_factory=dict)
    open_orders: dict[str, OpenOrder] = field(default_factory=dict)
    _seen: set[str] = field(default_factory=set)
    _closed: set[str] = field(default_factory=set)

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, Decimal(0))

    def order_accepted(self, request: orders_pb2.OrderRequest, order_id: str) -> None:
        cid = request.client_order_id
        # A duplicate ack (a retry) must not resurrect an order whose final report was already booked.
        if cid not in self.open_orders and cid not in self._closed:
            self.open_orders[request.client_order_id] = open_order_from_request(request, order_id)

    def apply(self, report: AnyReport) -> tuple[Fill | None, OrderUpdate] | None:
        """Book ``report``; returns the fill (if any) and the update, or None for a repeat."""
        execution_id = report.execution_id
        if execution_id:
            if execution_id in self._seen:
                return None
            self._seen.add(intern(execution_id))  # one string object for the id, wherever it is kept
        fill: Fill | None = None
        if report.exec_type in (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL):
            fill = Fill.from_report(report)
            value = fill.qty * fill.price
            if report.side == common_pb2.SIDE_BUY:
                self.positions[fill.symbol] = self.position(fill.symbol) + fill.qty
                self.cash -= value + fill.fee
            else:
                self.positions[fill.symbol] = self.position(fill.symbol) - fill.qty
                self.cash += value - fill.fee
        update = OrderUpdate.from_report(report)
        cid = intern(report.client_order_id)
        if report.status in FINAL_STATUSES:
            self.open_orders.pop(cid, None)
            self._closed.add(cid)
        else:
            order = self.open_orders.get(cid)
            if order is None and report.exec_type != executions_pb2.EXEC_TYPE_CANCEL_REJECTED:
                order = OpenOrder(
                    order_id=report.order_id,
                    client_order_id=cid,
                    symbol=report.symbol,
                    side=side_name(report.side),
                    type=ORDER_TYPE_WORDS.get(report.type, ""),
                    time_in_force=TIME_IN_FORCE_WORDS.get(report.time_in_force, ""),
                    qty=Decimal(report.order_qty) if report.order_qty else None,
                    limit_price=Decimal(report.limit_price) if report.limit_price else None,
                    stop_price=Decimal(report.stop_price) if report.stop_price else None,
                    trail_price=Decimal(report.trail_price) if report.trail_price else None,
                    trail_percent=Decimal(report.trail_percent) if report.trail_percent else None,
                    parent_order_id=report.parent_order_id,
                )
                self.open_orders[cid] = order
            if order is not None:
                order.status = update.status
                order.filled_qty = dec(report.cum_qty)
                if report.order_qty:  # a replacement's quantity is the total less what it replaced filled
                    order.qty = dec(report.order_qty)
                if report.stop_price:  # a trailing stop's stop moves
                    order.stop_price = dec(report.stop_price)
        return fill, update
