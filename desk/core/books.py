"""Pure book-keeping: positions at average cost, realized P&L, fees and cash, and the check that
turns an execution report into a booking. No I/O.

Everything is :class:`~decimal.Decimal`; a float never enters. Two choices worth knowing:

* **Cost basis, not average cost, is the state.** A position keeps its signed quantity and its
  signed cost basis (the sum of ``qty * price`` of what is still open: positive for a long, negative
  for a short). The average cost is ``cost_basis / qty``. Adding to a position adds ``qty * price``
  (exact), so the average is the quantity-weighted average of the entry prices. Reducing by ``q``
  realizes ``(price - avg_cost) * q`` for a long and ``(avg_cost - price) * q`` for a short,
  computed as ``q * price`` minus the share ``cost_basis * q / |qty|`` of the basis. The only
  division is that share (and the displayed average); closing a position completely removes the
  whole remaining basis, so a round trip's realized P&L is always exact. The share is rounded to
  :data:`BASIS_PLACES` decimals, the finest a fill's ``qty * price`` can have (9 + 6 places), so
  every basis, realized P&L and cash amount keeps at most 15 places and their sums stay exact in
  the default 28-digit context: realized + unrealized - fees equals the change in equity exactly.
* **Fees are not folded into the average cost.** They are tracked separately per position and per
  account, reduce cash when paid, and therefore reduce equity and total P&L
  (``equity - initial_cash``); ``realized_pnl`` is the trading result before fees.

A report that decodes but cannot be booked (no execution id, a fill without a price, a side that
is neither buy nor sell...) is refused by :func:`parse_booking` with a :class:`DeskError`, before any
transaction, so one bad message never poisons a batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

from desk.bus import subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import SIDE_WORDS
from desk.v1 import executions_pb2

ZERO = Decimal(0)
#: Decimal places of a cost-basis share removed by a partial close (qty: 9 places, price: 6).
BASIS_PLACES = 15
_BASIS_STEP = Decimal(1).scaleb(-BASIS_PLACES)


class Side(enum.Enum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def sign(self) -> int:
        return 1 if self is Side.BUY else -1


def _sign(value: Decimal) -> int:
    return (value > 0) - (value < 0)


@dataclass
class Position:
    """One strategy's position in one symbol. ``qty`` is signed: negative is short."""

    symbol: str = ""
    qty: Decimal = ZERO
    cost_basis: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    @property
    def avg_cost(self) -> Decimal:
        """Average entry price of what is open (positive for longs and shorts), 0 when flat."""
        if self.qty == 0:
            return ZERO
        return self.cost_basis / self.qty

    def apply_fill(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal = ZERO) -> Decimal:
        """Book one fill; returns the P&L it realized (before fees).

        A fill on the side of the position (or on a flat book) adds at the fill price; a fill
        against it reduces and realizes; a fill larger than the position closes it completely
        (realizing) and opens the remainder on the other side at the fill price.
        """
        if qty <= 0:
            raise ValueError(f"fill quantity must be positive, got {qty}")
        if price <= 0:
            raise ValueError(f"fill price must be positive, got {price}")
        if fee < 0:
            raise ValueError(f"fee must not be negative, got {fee}")
        self.fees += fee
        direction = side.sign
        held = _sign(self.qty)
        if held == 0 or held == direction:
            self.qty += direction * qty
            self.cost_basis += direction * qty * price
            return ZERO
        open_qty = abs(self.qty)
        closing = min(qty, open_qty)
        if closing == open_qty:
            removed = self.cost_basis  # the whole basis: exact, no division
        else:
            # unrounded, this 28-digit quotient would make later sums round (off by ~1e-24)
            removed = (self.cost_basis * closing / open_qty).quantize(_BASIS_STEP)
        realized = held * closing * price - removed
        self.qty += direction * closing
        self.cost_basis -= removed
        remainder = qty - closing
        if remainder > 0:  # crossed zero: open the rest on the other side at the fill price
            self.qty = direction * remainder
            self.cost_basis = direction * remainder * price
        elif self.qty == 0:
            self.cost_basis = ZERO
        self.realized_pnl += realized
        return realized

    def market_value(self, last: Decimal | None) -> Decimal:
        """``qty * last`` (signed); marked at cost when no last price is known."""
        if last is None:
            return self.cost_basis
        return self.qty * last

    def unrealized_pnl(self, last: Decimal | None) -> Decimal:
        """``(last - avg_cost) * qty``, signed, so a short gains when the price falls; 0 without a price."""
        if last is None:
            return ZERO
        return self.qty * last - self.cost_basis


@dataclass
class Account:
    """A strategy's virtual cash account."""

    initial_cash: Decimal
    cash: Decimal
    realized_pnl: Decimal = ZERO
    fees: Decimal = ZERO

    def apply_fill(self, side: Side, qty: Decimal, price: Decimal, fee: Decimal, realized: Decimal) -> None:
        """Buy: ``cash -= qty * price + fee``; sell: ``cash += qty * price - fee``."""
        if side is Side.BUY:
            self.cash -= qty * price + fee
        else:
            self.cash += qty * price - fee
        self.realized_pnl += realized
        self.fees += fee


def return_pct(total_pnl: Decimal, initial_cash: Decimal, places: int = 4) -> Decimal:
    """Total P&L as a percentage of the initial cash, rounded to ``places`` decimals (0 when no cash)."""
    if initial_cash <= 0:
        return ZERO
    return (total_pnl * 100 / initial_cash).quantize(Decimal(1).scaleb(-places))


# --- execution reports -> bookings -------------------------------------------------------------------

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


def _side(value: int) -> Side | None:
    word = SIDE_WORDS.get(value)
    return Side(word.upper()) if word else None


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
