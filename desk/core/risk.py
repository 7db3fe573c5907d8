"""Pre-trade risk on per-strategy virtual accounts: pure, no I/O, clock injected.

A :class:`VirtualAccount` holds a strategy's cash and signed positions, rebuilt from its
``ExecutionReport`` s, plus reservations for its open orders, so that several open orders cannot
together spend more cash or sell more shares than the account has.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from sys import intern

from desk.bus.decimals import ZERO, dec, fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import FINAL_STATUSES, ORDER_TYPE_WORDS, AnyReport, ValidOrder, refusal
from desk.v1 import common_pb2, executions_pb2, strategy_pb2

Clock = Callable[[], float]

RATE_WINDOW_SECONDS = 60.0

_FILLS = frozenset({executions_pb2.EXEC_TYPE_PARTIAL_FILL, executions_pb2.EXEC_TYPE_FILL})


@dataclass(frozen=True)
class Limits:
    """The limits one strategy trades under."""

    max_order_notional: Decimal
    max_position_notional: Decimal
    max_orders_per_minute: int
    allow_short: bool

    @classmethod
    def resolve(cls, spec: strategy_pb2.RiskLimits, defaults: Limits) -> Limits:
        """``spec``'s limits, with ``defaults`` wherever a field is empty or zero (or unparsable)."""

        def amount(text: str, default: Decimal) -> Decimal:
            try:
                value = Decimal(text) if text else ZERO
            except ArithmeticError:
                return default
            return value if value.is_finite() and value > 0 else default

        return cls(
            max_order_notional=amount(spec.max_order_notional, defaults.max_order_notional),
            max_position_notional=amount(spec.max_position_notional, defaults.max_position_notional),
            max_orders_per_minute=spec.max_orders_per_minute or defaults.max_orders_per_minute,
            allow_short=spec.allow_short or defaults.allow_short,
        )


#: The router's defaults (``ROUTER_DEFAULT_*``) for a strategy whose spec sets no limit; the SDK's
#: backtester resolves a config's ``risk`` against the same ones.
DEFAULT_LIMITS = Limits(
    max_order_notional=Decimal(25000), max_position_notional=Decimal(50000), max_orders_per_minute=60, allow_short=False
)
#: The router's ``ROUTER_DEFAULT_INITIAL_CASH``: a virtual account's cash when the spec sets none.
DEFAULT_INITIAL_CASH = Decimal(100000)


@dataclass(frozen=True)
class Reservation:
    """What an accepted order holds until it is final: shares (sells) or cash (buys)."""

    symbol: str
    side: common_pb2.Side
    qty: Decimal  # for notional orders, estimated from the valuation price
    notional: Decimal
    unit_price: Decimal


@dataclass
class OpenOrder:
    order_id: str
    symbol: str
    side: common_pb2.Side
    remaining_qty: Decimal
    reserved_notional: Decimal
    unit_price: Decimal
    by_notional: bool = False
    reported: bool = False  # an execution report has been applied to it
    parent_order_id: str = ""  # an exit leg (bracket, OTO, OCO): the order it belongs to


@dataclass(frozen=True)
class Hold:
    """What one :meth:`VirtualAccount.reserve` did, so :meth:`VirtualAccount.release` can undo exactly that."""

    order_id: str
    accepted_at: float
    created: OpenOrder | None  # the reservation it opened; None when the order was already known


def _valuation_price(order: ValidOrder, last_price: Decimal | None) -> Decimal:
    if order.limit_price is not None:
        return order.limit_price
    if last_price is None or last_price <= 0:
        raise refusal("NO_MARKET_PRICE", f"no last price for {order.symbol} to value a {_type_name(order)} order")
    return last_price


def _type_name(order: ValidOrder) -> str:
    return ORDER_TYPE_WORDS[order.type].replace("_", "-")


def report_numbers(report: AnyReport) -> tuple[Decimal, Decimal, Decimal] | None:
    """(fill qty, fill price, fee) of a report the books may use, or None for one they must not:
    no execution id, or a number that is not a finite, non-negative decimal (as the ledger judges)."""
    if not report.execution_id:
        return None
    try:
        values = [
            parse_decimal(name, value, positive=False, required=False) or ZERO
            for name, value in (("fill_qty", report.fill_qty), ("fill_price", report.fill_price), ("fee", report.fee))
        ]
    except DeskError:
        return None
    if any(v < 0 for v in values):
        return None
    return values[0], values[1], values[2]


@dataclass
class VirtualAccount:
    """One strategy's cash, positions and open-order reservations.

    ``cash`` is ``initial_cash`` plus what fills did to it, so the initial cash may be learnt (or
    changed) after fills were applied. Reports are applied at most once, by execution id.
    """

    strategy_id: str
    initial_cash: Decimal
    clock: Clock = time.monotonic
    cash_change: Decimal = ZERO
    positions: dict[str, Decimal] = field(default_factory=dict)
    open_orders: dict[str, OpenOrder] = field(default_factory=dict)
    closed_orders: set[str] = field(default_factory=set)
    seen_executions: set[str] = field(default_factory=set)
    _accepted_at: collections.deque[float] = field(default_factory=collections.deque)

    # -- state ------------------------------------------------------------------------------------
    @property
    def cash(self) -> Decimal:
        return self.initial_cash + self.cash_change

    def position(self, symbol: str) -> Decimal:
        return self.positions.get(symbol, ZERO)

    @property
    def reserved_buy_notional(self) -> Decimal:
        return sum((o.reserved_notional for o in self.open_orders.values() if o.side == common_pb2.SIDE_BUY), ZERO)

    @property
    def buying_power(self) -> Decimal:
        return self.cash - self.reserved_buy_notional

    def reserved_qty(self, symbol: str, side: common_pb2.Side) -> Decimal:
        return sum((o.remaining_qty for o in self.open_orders.values() if o.symbol == symbol and o.side == side), ZERO)

    def is_open(self, order_id: str) -> bool:
        return order_id in self.open_orders

    def is_closed(self, order_id: str) -> bool:
        return order_id in self.closed_orders

    def orders_in_window(self) -> int:
        horizon = self.clock() - RATE_WINDOW_SECONDS
        while self._accepted_at and self._accepted_at[0] <= horizon:
            self._accepted_at.popleft()
        return len(self._accepted_at)

    def restore_window(self, accepted_at: Iterable[float]) -> None:
        """Replace the rate-limit window with these acceptance times (on :attr:`clock`): the orders
        accepted in the last minute by whichever replica answered this strategy then."""
        self._accepted_at = collections.deque(sorted(accepted_at))
        self.orders_in_window()

    # -- pre-trade check --------------------------------------------------------------------------
    def check(self, order: ValidOrder, limits: Limits, last_price: Decimal | None) -> Reservation:
        """Refuse ``order`` (DeskError) if it breaks a limit; else what accepting it would reserve.

        A replace (``order.replaces``) of a final order is refused (ORDER_CLOSED); otherwise the
        limits are checked with the new quantity and prices in place of the replaced order's (its
        reservation is left out of the check, and released when its final report arrives). A bracket's
        or an OTO's risk is its entry: the exits only close what it opens."""
        if not order.replaces:
            return self._check(order, limits, last_price)
        replaced_id = order_id_for(self.strategy_id, order.replaces)
        if replaced_id in self.closed_orders:
            raise refusal("ORDER_CLOSED", f"order {order.replaces} is already final; there is nothing to replace")
        held = self.open_orders.pop(replaced_id, None)
        try:
            return self._check(order, limits, last_price)
        finally:
            if held is not None:
                self.open_orders[replaced_id] = held

    def _check(self, order: ValidOrder, limits: Limits, last_price: Decimal | None) -> Reservation:
        if self.orders_in_window() >= limits.max_orders_per_minute:
            raise refusal(
                "RATE_LIMIT", f"more than {limits.max_orders_per_minute} orders in {RATE_WINDOW_SECONDS:g} seconds"
            )
        if order.notional is not None:
            # A notional order spends its notional; its share count is estimated at the last price.
            unit_price = _valuation_price(order, last_price)
            notional = order.notional
            qty = notional / unit_price
        else:
            assert order.qty is not None
            unit_price = _valuation_price(order, last_price)
            qty = order.qty
            notional = qty * unit_price

        if notional > limits.max_order_notional:
            raise refusal(
                "MAX_ORDER_NOTIONAL",
                f"order notional {fmt(notional, 2)} exceeds the limit of {fmt(limits.max_order_notional)}",
            )

        position = self.position(order.symbol)
        if order.is_buy:
            if notional > self.buying_power:
                raise refusal(
                    "INSUFFICIENT_BUYING_POWER",
                    f"order needs {fmt(notional, 2)} but buying power is {fmt(self.buying_power, 2)}",
                )
            resulting = position + self.reserved_qty(order.symbol, common_pb2.SIDE_BUY) + qty
        else:
            sellable = position - self.reserved_qty(order.symbol, common_pb2.SIDE_SELL)
            if qty > sellable and not limits.allow_short:
                raise refusal(
                    "SHORT_NOT_ALLOWED",
                    f"selling {fmt(qty)} {order.symbol} with {fmt(max(sellable, ZERO))} available would open a short",
                )
            resulting = sellable - qty

        resulting_notional = abs(resulting) * unit_price
        if resulting_notional > limits.max_position_notional:
            raise refusal(
                "MAX_POSITION_NOTIONAL",
                f"resulting {order.symbol} position of {fmt(resulting)} ({fmt(resulting_notional, 2)}) exceeds the "
                f"limit of {fmt(limits.max_position_notional)}",
            )
        return Reservation(order.symbol, order.side, qty, notional, unit_price)

    def reserve(self, order_id: str, reservation: Reservation, by_notional: bool = False) -> Hold:
        """Hold ``reservation`` for an accepted order and count it against the rate limit.

        Call it straight after :meth:`check`, with no await in between, so that concurrent orders
        see each other's reservations. Holds nothing for an order already known from its execution
        reports (they may overtake us); it still counts against the rate limit.
        """
        accepted_at = self.clock()
        self._accepted_at.append(accepted_at)
        if order_id in self.open_orders or order_id in self.closed_orders:
            return Hold(order_id, accepted_at, None)
        opened = OpenOrder(
            order_id=order_id,
            symbol=reservation.symbol,
            side=reservation.side,
            remaining_qty=reservation.qty,
            reserved_notional=reservation.notional,
            unit_price=reservation.unit_price,
            by_notional=by_notional,
        )
        self.open_orders[order_id] = opened
        return Hold(order_id, accepted_at, opened)

    def release(self, hold: Hold, keep_slot: bool = False) -> None:
        """Undo :meth:`reserve` for an order that was not routed after all (or was routed before).

        The rate-limit slot is given back, unless ``keep_slot`` (the order was routed before, by an
        earlier owner of this strategy this account never heard of: it counts). The reservation is
        dropped unless an execution report has touched it meanwhile: then the order exists at the
        venue, and its reports keep it up to date.
        """
        if not keep_slot:
            with contextlib.suppress(ValueError):  # already aged out of the window
                self._accepted_at.remove(hold.accepted_at)
        opened = hold.created
        if opened is not None and not opened.reported and self.open_orders.get(hold.order_id) is opened:
            del self.open_orders[hold.order_id]

    # -- execution reports ------------------------------------------------------------------------
    def apply(self, report: AnyReport) -> bool:
        """Apply one report (fills move cash and positions; reservations follow the order).

        Returns False when the report was already applied (same execution id).
        """
        numbers = report_numbers(report)
        if numbers is None:  # what the ledger refuses must not move the router's view either
            return False
        if report.execution_id in self.seen_executions:
            return False
        self.seen_executions.add(intern(report.execution_id))  # one string object per id, wherever kept

        fill_qty, fill_price, fee = numbers
        is_fill = report.exec_type in _FILLS and fill_qty > 0
        known = self.open_orders.get(report.order_id)
        side = report.side or (known.side if known is not None else common_pb2.SIDE_UNSPECIFIED)
        if is_fill and side in (common_pb2.SIDE_BUY, common_pb2.SIDE_SELL):
            gross = fill_qty * fill_price
            if side == common_pb2.SIDE_BUY:
                self.positions[report.symbol] = self.position(report.symbol) + fill_qty
                self.cash_change -= gross + fee
            else:
                self.positions[report.symbol] = self.position(report.symbol) - fill_qty
                self.cash_change += gross - fee

        order_id = intern(report.order_id)
        if report.status in FINAL_STATUSES:
            self.open_orders.pop(order_id, None)
            self.closed_orders.add(order_id)
            return True
        if order_id in self.closed_orders:
            return True
        order = self.open_orders.get(order_id)
        if order is None:
            # An order accepted by another replica (or before a restart): reserve what it still holds.
            self._adopt(report)
            return True
        order.reported = True
        if is_fill:
            if order.by_notional:
                order.reserved_notional = max(ZERO, order.reserved_notional - fill_qty * fill_price)
                order.remaining_qty = order.reserved_notional / order.unit_price if order.unit_price else ZERO
            else:
                order.remaining_qty = (
                    dec(report.leaves_qty) if report.leaves_qty else max(ZERO, order.remaining_qty - fill_qty)
                )
                order.reserved_notional = order.remaining_qty * order.unit_price
        return True

    def _adopt(self, report: AnyReport) -> None:
        unit_price = ZERO
        for text in (report.limit_price, report.stop_price, report.avg_price, report.fill_price):
            if text and dec(text) > 0:
                unit_price = dec(text)
                break
        if report.leaves_qty:
            remaining = dec(report.leaves_qty)
        elif report.order_qty:
            remaining = max(ZERO, dec(report.order_qty) - dec(report.cum_qty))
        else:
            remaining = ZERO
        by_notional = not report.order_qty and bool(report.notional)
        if by_notional:
            notional = max(ZERO, dec(report.notional) - dec(report.cum_qty) * dec(report.avg_price))
            remaining = notional / unit_price if unit_price else ZERO
        else:
            notional = remaining * unit_price
        if self._has_oco_partner(report):  # the two exits of one position hold its shares once
            remaining = notional = ZERO
        self.open_orders[report.order_id] = OpenOrder(
            order_id=report.order_id,
            symbol=report.symbol,
            side=report.side,
            remaining_qty=remaining,
            reserved_notional=notional,
            unit_price=unit_price,
            by_notional=by_notional,
            parent_order_id=report.parent_order_id,
        )

    def _has_oco_partner(self, report: AnyReport) -> bool:
        """Whether ``report``'s order is the second of two OCO exits whose first is open here: an OCO
        order's stop-loss (its parent is the OCO order itself) or a bracket's second exit."""
        parent = report.parent_order_id
        if not parent:
            return False
        if parent in self.open_orders and self.open_orders[parent].side == report.side:
            return True
        return any(o.parent_order_id == parent for o in self.open_orders.values())
