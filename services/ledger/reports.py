"""Execution reports -> validated bookings for the store. Pure: no I/O.

A report that decodes but cannot be booked (no execution id, a fill without a price, a side that
is neither buy nor sell...) is refused here with a :class:`DeskError`, before any transaction, so
one bad message never poisons a batch.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import Decimal

from desk.bus import subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.v1 import common_pb2, executions_pb2
from services.ledger.books import Side

FILL_TYPES = (executions_pb2.EXEC_TYPE_PARTIAL_FILL, executions_pb2.EXEC_TYPE_FILL)


@dataclass(frozen=True)
class FillBooking:
    side: Side
    qty: Decimal
    price: Decimal
    fee: Decimal


@dataclass(frozen=True)
class Booking:
    """One execution report, checked, with the bytes it came as (stored in ``order_events``)."""

    report: executions_pb2.ExecutionReport
    payload: bytes
    order_id: str
    event_ns: int
    fill: FillBooking | None

    @property
    def execution_id(self) -> str:
        return self.report.execution_id

    @property
    def strategy_id(self) -> str:
        return self.report.strategy_id


def order_id_for(strategy_id: str, client_order_id: str) -> str:
    """The desk's deterministic order id (docs/architecture.md §8)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"desk:{strategy_id}:{client_order_id}"))


def _side(value: int) -> Side | None:
    if value == common_pb2.SIDE_BUY:
        return Side.BUY
    if value == common_pb2.SIDE_SELL:
        return Side.SELL
    return None


def parse_booking(report: executions_pb2.ExecutionReport, payload: bytes, now_ns: int) -> Booking:
    """Check ``report`` and turn it into a :class:`Booking`, or raise ``DeskError`` saying why."""
    if not report.execution_id:
        raise DeskError("INVALID_FIELD", "execution_id is required")
    if not subjects.STRATEGY_ID_RE.match(report.strategy_id):
        raise DeskError("INVALID_FIELD", f"strategy_id {report.strategy_id!r} is not a valid strategy id")
    if report.exec_type == executions_pb2.EXEC_TYPE_UNSPECIFIED:
        raise DeskError("INVALID_FIELD", "exec_type is required")
    if not report.order_id and not report.client_order_id:
        raise DeskError("INVALID_FIELD", "order_id or client_order_id is required")
    order_id = report.order_id or order_id_for(report.strategy_id, report.client_order_id)
    event_ns = report.event_ns or report.report_ns or now_ns
    fill: FillBooking | None = None
    qty = parse_decimal("fill_qty", report.fill_qty, positive=False, required=False)
    if report.exec_type in FILL_TYPES and qty is not None and qty != 0:
        if qty < 0:
            raise DeskError("INVALID_FIELD", f"fill_qty must be positive, got {report.fill_qty}")
        side = _side(report.side)
        if side is None:
            raise DeskError("INVALID_FIELD", "a fill needs side BUY or SELL")
        if not subjects.SYMBOL_RE.match(report.symbol):
            raise DeskError("INVALID_FIELD", f"symbol {report.symbol!r} is not a valid symbol")
        price = parse_decimal("fill_price", report.fill_price)
        fee = parse_decimal("fee", report.fee, positive=False, required=False) or Decimal(0)
        if fee < 0:
            raise DeskError("INVALID_FIELD", f"fee must not be negative, got {report.fee}")
        assert price is not None
        fill = FillBooking(side=side, qty=qty, price=price, fee=fee)
    elif report.exec_type in FILL_TYPES and report.exec_type == executions_pb2.EXEC_TYPE_PARTIAL_FILL:
        raise DeskError("INVALID_FIELD", "a PARTIAL_FILL needs a positive fill_qty")
    for field in ("cum_qty", "avg_price", "order_qty", "limit_price", "stop_price", "notional"):
        parse_decimal(field, getattr(report, field), positive=False, required=False)
    return Booking(report=report, payload=payload, order_id=order_id, event_ns=event_ns, fill=fill)
