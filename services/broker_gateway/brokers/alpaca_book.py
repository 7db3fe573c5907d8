"""The ``alpaca`` venue's books, pure: Alpaca's orders, events and fills in, the desk's reports out.

No I/O. :class:`AlpacaBook` tracks every desk order the gateway placed at Alpaca and turns what Alpaca
says about it (the REST reply to a POST, ``trade_updates`` events, ``GET /v2/orders`` snapshots and
``GET /v2/account/activities/FILL`` rows after a reconnect) into :class:`ExecutionReport` s, each
exactly once per process; across processes the execution ids are deterministic, so re-publishing
after a restart is absorbed by the EXECUTIONS stream's ``Nats-Msg-Id`` dedup, the router's
``seen_executions`` and the ledger's unique execution id.

Identity (docs/alpaca.md):

* Alpaca ``client_order_id`` = ``<strategy_id>.<client_order_id>``: unique per account because the
  desk's ids are unique per strategy, and neither part may contain a dot, so it splits back into the
  desk order after a restart (desk ``order_id`` = :func:`desk.core.ids.order_id_for` of both).
* Execution ids: a fill is ``uuid5("alpaca:<alpaca order id>:fill:<cum qty after it>")``. The
  stream event (the order's ``filled_qty``) and the activity row (``cum_qty``) both give it, so a
  fill seen both ways is one fill. Alpaca's own execution id travels in the report's ``text``
  (activity ids are ``<time>::<uuid>``; whether that uuid always equals the stream's execution id
  is not documented, so the desk does not depend on it). Other events: ``uuid5("alpaca:<id>:<event>")``.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from desk.bus.decimals import fmt
from desk.core.ids import alpaca_execution_id, canonical_qty, order_id_for, parse_alpaca_client_order_id
from desk.core.orders import (
    ORDER_TYPES,
    SIDES,
    STOP_LOSS_SUFFIX,
    TAKE_PROFIT_SUFFIX,
    TIMES_IN_FORCE,
    OrderProgress,
    Reports,
    order_record,
)
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, orders_pb2

E = executions_pb2
ER = executions_pb2.ExecutionReport
ZERO = Decimal(0)
VENUE = "alpaca"

# Alpaca order statuses that end an order without a (further) fill, as the desk's exec types.
TERMINAL = {
    "canceled": (E.EXEC_TYPE_CANCELED, E.ORDER_STATUS_CANCELED),
    "expired": (E.EXEC_TYPE_EXPIRED, E.ORDER_STATUS_EXPIRED),
    "done_for_day": (E.EXEC_TYPE_EXPIRED, E.ORDER_STATUS_EXPIRED),
    "rejected": (E.EXEC_TYPE_REJECTED, E.ORDER_STATUS_REJECTED),
    "suspended": (E.EXEC_TYPE_REJECTED, E.ORDER_STATUS_REJECTED),
    "stopped": (E.EXEC_TYPE_CANCELED, E.ORDER_STATUS_CANCELED),
}
FILL_EVENTS = {"fill", "partial_fill"}
PULL_TEXT = "pulling alpaca order"  # a pull record's text begins so (AlpacaBook.pulling)
HELD_MARK = " held at the desk: "  # the text of a report that holds an order at the desk (AlpacaBook.hold)
ARMED_MARK = " armed at the desk: "  # a stop-loss exit the desk keeps until the Alpaca price reaches its stop
TRIGGERED_MARK = "stop-loss triggered: "  # the record stored before an armed stop-loss is sent (AlpacaBook.trigger)
BRACKET, OCO, OTO = orders_pb2.ORDER_CLASS_BRACKET, orders_pb2.ORDER_CLASS_OCO, orders_pb2.ORDER_CLASS_OTO
PULLED = {"canceled", "pending_cancel"}  # a pulled Alpaca order in these states carries no leaves any more
CENT = Decimal("0.01")


def alpaca_client_order_id(strategy_id: str, client_order_id: str, placement: int = 1) -> str:
    """The ``client_order_id`` the desk sends Alpaca for a strategy's order; ``placement`` > 1 when
    the order's leaves are placed again after an internal cross (``<strategy>.<client id>.<n>``)."""
    base = f"{strategy_id}.{client_order_id}"
    return base if placement == 1 else f"{base}.{placement}"


def placement_of(value: str) -> int:
    """The placement number of an Alpaca ``client_order_id`` the desk made: ``<s>.<c>`` is 1, ``<s>.<c>.<n>`` n."""
    parts = value.split(".")
    return int(parts[2]) if len(parts) == 3 and parts[2].isdigit() else 1


def pull_execution_id(alpaca_order_id: str) -> str:
    """The id of the record "the desk is canceling this Alpaca order to cross its leaves" (written first)."""
    return execution_id("pull", alpaca_order_id)


parse_client_order_id = parse_alpaca_client_order_id


execution_id = alpaca_execution_id
canonical = canonical_qty


def to_ns(ts: dt.datetime | None) -> int:
    if ts is None:
        return 0
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=dt.UTC)
    return int(ts.timestamp()) * 1_000_000_000 + ts.microsecond * 1000


def dec(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    if isinstance(value, float):
        return Decimal(repr(value))
    return Decimal(str(value))


def enum_value(value: Any) -> str:
    """alpaca-py hands enums (``OrderSide.BUY``) or plain strings; the wire value either way."""
    return str(getattr(value, "value", value))


@dataclass
class AlpacaOrder:
    """What the book needs of an Alpaca order (from alpaca-py's ``Order`` via :func:`from_model`)."""

    id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    status: str
    qty: Decimal | None
    notional: Decimal | None
    filled_qty: Decimal
    limit_price: Decimal | None
    stop_price: Decimal | None
    updated_ns: int
    created_ns: int
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None  # a trailing stop's best price seen, at Alpaca (its stop_price follows it)

    @classmethod
    def from_model(cls, order: Any) -> AlpacaOrder:
        return cls(
            id=str(order.id),
            client_order_id=str(order.client_order_id),
            symbol=str(order.symbol),
            side=enum_value(order.side),
            type=enum_value(order.type or order.order_type),
            time_in_force=enum_value(order.time_in_force),
            status=enum_value(order.status),
            qty=dec(order.qty),
            notional=dec(order.notional),
            filled_qty=dec(order.filled_qty) or ZERO,
            limit_price=dec(order.limit_price),
            stop_price=dec(order.stop_price),
            updated_ns=to_ns(order.updated_at),
            created_ns=to_ns(order.created_at),
            trail_price=dec(getattr(order, "trail_price", None)),
            trail_percent=dec(getattr(order, "trail_percent", None)),
            hwm=dec(getattr(order, "hwm", None)),
        )


@dataclass
class Fill:
    """One execution at Alpaca (a ``fill``/``partial_fill`` event or a FILL activity)."""

    alpaca_order_id: str
    cum_qty: Decimal  # the Alpaca order's filled quantity after this execution
    qty: Decimal
    price: Decimal
    event_ns: int
    alpaca_execution_id: str = ""


@dataclass
class DeskOrder(OrderProgress):
    """A desk order as placed at Alpaca; its fills may come from several Alpaca orders."""

    order_id: str
    strategy_id: str
    member_id: str
    client_order_id: str
    symbol: str
    side: common_pb2.Side
    type: common_pb2.OrderType
    tif: common_pb2.TimeInForce
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    created_ns: int
    alpaca_ids: list[str] = field(default_factory=list)
    cum_qty: Decimal = ZERO
    cost: Decimal = ZERO
    status: E.OrderStatus = E.ORDER_STATUS_NEW
    reported: set[str] = field(default_factory=set)  # execution ids already reported
    filled_at_alpaca: dict[str, Decimal] = field(default_factory=dict)  # alpaca order id -> qty booked
    superseded: set[str] = field(default_factory=set)  # alpaca orders canceled by the desk to re-place leaves
    placements: dict[str, tuple[int, int]] = field(default_factory=dict)  # alpaca id -> (<n>, created): the sort key
    alpaca_state: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # alpaca id -> (status, filled_qty)
    crosses: int = 0  # internal crosses booked (numbers the next one: deterministic, unique execution ids)
    unattributed: set[str] = field(default_factory=set)  # restored Alpaca fills not yet matched to their Alpaca order
    trail_price: Decimal | None = None  # a trailing stop's trail (stop_price: its stop as Alpaca last said)
    trail_percent: Decimal | None = None
    hwm: Decimal | None = None
    replaces: str = ""  # a replacing order: the desk order id it replaces
    replaced_by: str = ""  # a replaced order: the desk order id of the one replacing it
    order_class: orders_pb2.OrderClass = orders_pb2.ORDER_CLASS_UNSPECIFIED
    take_profit: Decimal | None = None  # bracket / OTO / OCO: the exits' prices
    stop_loss: Decimal | None = None
    stop_loss_limit: Decimal | None = None
    parent_order_id: str = ""  # an exit (``<id>-tp``, ``<id>-sl``): the bracket / OTO / OCO order
    triggered: bool = False  # an armed stop-loss whose stop the Alpaca price reached: sent as market (limit)
    canceled_text: str = ""  # the text of its CANCELED when the desk canceled it as an OCO exit

    @property
    def latest_alpaca_id(self) -> str | None:
        """The Alpaca order carrying the desk order's leaves: the highest placement ``<n>``."""
        return self.alpaca_ids[-1] if self.alpaca_ids else None

    @property
    def next_placement(self) -> int:
        return max((n for n, _ in self.placements.values()), default=0) + 1


class AlpacaBook:
    """Every desk order placed at Alpaca this process knows, and the reports they owe."""

    def __init__(self, clock: Callable[[], int]) -> None:
        self._clock = clock
        self.orders: dict[str, DeskOrder] = {}  # desk order id -> order
        self._by_alpaca_id: dict[str, DeskOrder] = {}
        self._by_client_id: dict[str, DeskOrder] = {}  # alpaca client_order_id -> order
        self.members: dict[str, str] = {}  # strategy_id -> member_id, from routed orders
        self.last_event_ns = 0  # newest event time seen from Alpaca (the reconcile's "since")
        self.pull_records: set[str] = set()  # execution ids of pull records (made, or restored from EXECUTIONS)
        self.held: set[str] = set()  # desk order ids held at the desk (made, or restored from EXECUTIONS)
        self.armed: set[str] = set()  # stop-loss exits armed at the desk (made, or restored from EXECUTIONS)

    # --- restore (after a restart: what the desk decided is in EXECUTIONS) -----------------------

    def restore(self, reports: list[executions_pb2.ExecutionReport]) -> int:
        """Rebuild every desk order from its stored reports of venue ``alpaca``, in stream order.

        Each report's execution id is taken as reported (so it is never made again), crosses and
        fills give ``cum_qty``/``cost``, the last report gives the status; a "pull" record
        (:func:`pull_execution_id`) says which Alpaca order the desk itself canceled (found by
        :meth:`attach`). Alpaca's orders are attached afterwards by the reconcile. The orders restored."""
        for r in reports:
            if r.venue != VENUE or not r.order_id or r.exec_type == E.EXEC_TYPE_CANCEL_REJECTED:
                continue
            if r.member_id:
                self.members[r.strategy_id] = r.member_id
            order = self.orders.get(r.order_id)
            if order is None:
                order = DeskOrder(
                    order_id=r.order_id,
                    strategy_id=r.strategy_id,
                    member_id=r.member_id,
                    client_order_id=r.client_order_id,
                    symbol=r.symbol,
                    side=r.side,
                    type=r.type,
                    tif=r.time_in_force,
                    qty=dec(r.order_qty),
                    notional=dec(r.notional),
                    limit_price=dec(r.limit_price),
                    stop_price=dec(r.stop_price),
                    created_ns=r.event_ns,
                    trail_price=dec(r.trail_price),
                    trail_percent=dec(r.trail_percent),
                    order_class=r.order_class,
                    take_profit=dec(r.take_profit_limit_price),
                    stop_loss=dec(r.stop_loss_stop_price),
                    stop_loss_limit=dec(r.stop_loss_limit_price),
                    parent_order_id=r.parent_order_id,
                )
                self.orders[order.order_id] = order
                self._by_client_id[alpaca_client_order_id(order.strategy_id, order.client_order_id)] = order
            if r.execution_id in order.reported:
                continue
            order.reported.add(r.execution_id)
            if r.replaces:  # its NEW was stored before the replaced order's cancel was sent
                order.replaces = r.replaces
                replaced = self.orders.get(r.replaces)
                if replaced is not None:
                    replaced.replaced_by = order.order_id
            if r.text.startswith(PULL_TEXT):
                self.pull_records.add(r.execution_id)
            if HELD_MARK in r.text and r.exec_type == E.EXEC_TYPE_NEW:
                self.held.add(r.order_id)
            if ARMED_MARK in r.text and r.exec_type == E.EXEC_TYPE_NEW:
                self.armed.add(r.order_id)
            if r.text.startswith(TRIGGERED_MARK):
                order.triggered = True
            qty = dec(r.fill_qty)
            if r.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL) and qty:
                price = dec(r.fill_price) or ZERO
                order.cum_qty += qty
                order.cost += qty * price
                if r.text.startswith("internal cross"):
                    order.crosses += 1
                else:
                    order.unattributed.add(r.execution_id)
            order.status = r.status
        for order in self.orders.values():
            if order.triggered:
                self._mark_oco_end(order)
        return len(self.orders)

    # --- identity ----------------------------------------------------------------------------------

    def remember(self, routed: orders_pb2.RoutedOrder) -> DeskOrder:
        """The desk order a routed ``new_order`` is (created on first sight)."""
        if routed.member_id:
            self.members[routed.strategy_id] = routed.member_id
        known = self.orders.get(routed.order_id)
        if known is not None:
            return known
        request = routed.new_order
        order = DeskOrder(
            order_id=routed.order_id,
            strategy_id=routed.strategy_id,
            member_id=routed.member_id,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            tif=request.time_in_force,
            qty=dec(request.qty),
            notional=dec(request.notional),
            limit_price=dec(request.limit_price),
            stop_price=dec(request.stop_price),
            created_ns=self._clock(),
            trail_price=dec(request.trail_price),
            trail_percent=dec(request.trail_percent),
            order_class=request.order_class,
            take_profit=dec(request.take_profit_limit_price),
            stop_loss=dec(request.stop_loss_stop_price),
            stop_loss_limit=dec(request.stop_loss_limit_price),
        )
        if order.order_class == OCO and order.limit_price is None:
            order.limit_price = order.take_profit  # an OCO order is its own take-profit exit
        self.orders[order.order_id] = order
        self._by_client_id[alpaca_client_order_id(order.strategy_id, order.client_order_id)] = order
        return order

    # --- exits of bracket / OTO / OCO orders (docs/alpaca.md, "Order types at Alpaca") ------------

    def exit_leg(self, parent: DeskOrder, suffix: str, qty: Decimal) -> DeskOrder:
        """``parent``'s take-profit (``-tp``: a limit) or stop-loss (``-sl``: a stop, or a stop-limit),
        made once (the same desk order after a restart: restored from its reports): the other side,
        except an OCO order's own stop-loss (the same side: both exit)."""
        client_order_id = parent.client_order_id + suffix
        order_id = order_id_for(parent.strategy_id, client_order_id)
        known = self.orders.get(order_id)
        if known is not None:
            known.parent_order_id = parent.order_id  # (one the reconcile found at Alpaca before its NEW was stored)
            return known
        take_profit = suffix == TAKE_PROFIT_SUFFIX
        side = parent.side
        if parent.order_class != OCO:
            side = common_pb2.SIDE_SELL if parent.side == common_pb2.SIDE_BUY else common_pb2.SIDE_BUY
        stop_type = (
            common_pb2.ORDER_TYPE_STOP_LIMIT if parent.stop_loss_limit is not None else common_pb2.ORDER_TYPE_STOP
        )
        leg = DeskOrder(
            order_id=order_id,
            strategy_id=parent.strategy_id,
            member_id=parent.member_id,
            client_order_id=client_order_id,
            symbol=parent.symbol,
            side=side,
            type=common_pb2.ORDER_TYPE_LIMIT if take_profit else stop_type,
            tif=parent.tif,
            qty=qty,
            notional=None,
            limit_price=parent.take_profit if take_profit else parent.stop_loss_limit,
            stop_price=None if take_profit else parent.stop_loss,
            created_ns=self._clock(),
            parent_order_id=parent.order_id,
        )
        self.orders[order_id] = leg
        self._by_client_id[alpaca_client_order_id(leg.strategy_id, client_order_id)] = leg
        return leg

    def legs_of(self, parent: DeskOrder) -> list[DeskOrder]:
        """The exits of ``parent`` this book has (made, or restored)."""
        found = (
            self.orders.get(order_id_for(parent.strategy_id, parent.client_order_id + suffix))
            for suffix in (TAKE_PROFIT_SUFFIX, STOP_LOSS_SUFFIX)
        )
        return [o for o in found if o is not None]

    def partner(self, order: DeskOrder) -> DeskOrder | None:
        """The other of two OCO exits (a bracket's ``-tp`` and ``-sl``; an OCO order and its ``-sl``)."""
        if order.order_class == OCO:
            return self.orders.get(order_id_for(order.strategy_id, order.client_order_id + STOP_LOSS_SUFFIX))
        if not order.parent_order_id:
            return None
        parent = self.orders.get(order.parent_order_id)
        if parent is not None and parent.order_class == OCO:
            return parent
        if parent is not None and parent.order_class != BRACKET:
            return None  # an OTO's one exit
        # a bracket's other exit (found by its id even before the entry's own reports are in the book)
        if order.client_order_id.endswith(TAKE_PROFIT_SUFFIX):
            base, other = order.client_order_id.removesuffix(TAKE_PROFIT_SUFFIX), STOP_LOSS_SUFFIX
        else:
            base, other = order.client_order_id.removesuffix(STOP_LOSS_SUFFIX), TAKE_PROFIT_SUFFIX
        return self.orders.get(order_id_for(order.strategy_id, base + other))

    def is_armed(self, order: DeskOrder) -> bool:
        """``order`` is a stop-loss the desk keeps until the Alpaca price reaches its stop (not yet sent)."""
        return order.order_id in self.armed and not order.triggered and not order.is_final

    def arm(self, order: DeskOrder, partner: DeskOrder) -> Reports:
        """``order`` (a stop-loss OCO with ``partner``, the take-profit resting at Alpaca) waits at the
        desk: its NEW says so, so a restart knows it (:meth:`restore`)."""
        self.armed.add(order.order_id)
        stop = f"stop {fmt(order.stop_price)}" + (f" limit {fmt(order.limit_price)}" if order.limit_price else "")
        text = (
            f"{order.symbol} {order.client_order_id}{ARMED_MARK}{stop}, OCO with {partner.client_order_id}; sent to "
            "alpaca (market, or limit for a stop-limit) once the Alpaca price reaches the stop, after "
            f"{partner.client_order_id} is canceled there"
        )
        return self._emit(
            order,
            execution_id(order.order_id, "new"),
            E.EXEC_TYPE_NEW,
            E.ORDER_STATUS_NEW,
            event_ns=self._clock(),
            text=text,
        )

    def trigger(self, order: DeskOrder, why: str) -> Reports:
        """The record stored before an armed stop-loss's partner is canceled and it is sent (a restart
        finishes it): a NEW-type report, its numbers unchanged."""
        order.triggered = True
        self.armed.discard(order.order_id)
        self._mark_oco_end(order)
        return self._emit(
            order,
            execution_id("triggered", order.order_id),
            E.EXEC_TYPE_NEW,
            order.status,
            event_ns=self._clock(),
            text=f"{TRIGGERED_MARK}{why}",
        )

    def _mark_oco_end(self, triggered: DeskOrder) -> None:
        partner = self.partner(triggered)
        if partner is not None and not partner.canceled_text:
            partner.canceled_text = f"OCO: {triggered.client_order_id} triggered"

    def end_at_desk(self, order: DeskOrder, text: str) -> Reports:
        """``order`` has nothing at Alpaca (an armed stop-loss, held, or pulled and waiting to go again)
        and ends now: CANCELED with ``text`` (its OCO partner filled, triggered or was canceled)."""
        self.armed.discard(order.order_id)
        self.held.discard(order.order_id)
        if order.qty is not None and order.parent_order_id and not order.alpaca_ids:
            order.qty = order.cum_qty  # an exit that never traded closes at what it filled (as on sim)
        return self._emit(
            order,
            execution_id("oco", order.order_id),
            E.EXEC_TYPE_CANCELED,
            E.ORDER_STATUS_CANCELED,
            event_ns=self._clock(),
            text=text,
        )

    def attach(self, alpaca: AlpacaOrder) -> DeskOrder | None:
        """The desk order behind an Alpaca order (rebuilt from its client_order_id after a restart)."""
        known = self._by_alpaca_id.get(alpaca.id)
        if known is not None:
            return known
        ids = parse_client_order_id(alpaca.client_order_id)
        if ids is None:
            return None  # not placed by the desk
        strategy_id, client_order_id = ids
        order_id = order_id_for(strategy_id, client_order_id)
        base = alpaca_client_order_id(strategy_id, client_order_id)
        order = self._by_client_id.get(base) or self.orders.get(order_id)
        if order is None:
            order = DeskOrder(
                order_id=order_id,
                strategy_id=strategy_id,
                member_id=self.members.get(strategy_id, ""),
                client_order_id=client_order_id,
                symbol=alpaca.symbol,
                side=SIDES.get(alpaca.side, common_pb2.SIDE_UNSPECIFIED),
                type=ORDER_TYPES.get(alpaca.type, common_pb2.ORDER_TYPE_UNSPECIFIED),
                tif=TIMES_IN_FORCE.get(alpaca.time_in_force, common_pb2.TIME_IN_FORCE_UNSPECIFIED),
                qty=alpaca.qty,
                notional=alpaca.notional,
                limit_price=alpaca.limit_price,
                stop_price=alpaca.stop_price,
                created_ns=alpaca.created_ns,
                trail_price=alpaca.trail_price,
                trail_percent=alpaca.trail_percent,
                parent_order_id=self._parent_of(strategy_id, client_order_id),
            )
            self.orders[order_id] = order
            self._by_client_id[base] = order
        if alpaca.id not in order.alpaca_ids:
            # Ordered by placement <n> (then creation), never by arrival: after a restart the orders
            # come from several listings, and the newest placement is the one with the highest n.
            order.placements[alpaca.id] = (placement_of(alpaca.client_order_id), alpaca.created_ns)
            order.alpaca_ids.append(alpaca.id)
            order.alpaca_ids.sort(key=lambda i: order.placements.get(i, (1, 0)))
            if pull_execution_id(alpaca.id) in self.pull_records:
                order.superseded.add(alpaca.id)  # the desk's own cancel, recorded before it was made
        self._by_alpaca_id[alpaca.id] = order
        return order

    def _parent_of(self, strategy_id: str, client_order_id: str) -> str:
        """An exit found at Alpaca before its own NEW was stored: its bracket / OTO / OCO order's id."""
        for suffix in (TAKE_PROFIT_SUFFIX, STOP_LOSS_SUFFIX):
            if client_order_id.endswith(suffix):
                parent = self.orders.get(order_id_for(strategy_id, client_order_id.removesuffix(suffix)))
                if parent is not None and parent.order_class != orders_pb2.ORDER_CLASS_UNSPECIFIED:
                    return parent.order_id
        return ""

    def by_alpaca_id(self, alpaca_id: str) -> DeskOrder | None:
        return self._by_alpaca_id.get(alpaca_id)

    # --- what Alpaca says --------------------------------------------------------------------------

    def on_order(self, alpaca: AlpacaOrder) -> Reports:
        """A snapshot (POST reply, GET, an event's order): NEW once, and a terminal state once.

        Fills never come from a snapshot (it has no per-execution breakdown): they come from
        :meth:`on_fill`. A terminal state is reported only once the fills add up to Alpaca's
        ``filled_qty``, so a cancel after a partial fill never overtakes that fill."""
        order = self.attach(alpaca)
        if order is None:
            return []
        self._seen(alpaca.updated_ns)
        self._state(order, alpaca)
        reports = self._new(order, alpaca)
        later = order.alpaca_ids.index(alpaca.id) < len(order.alpaca_ids) - 1
        if alpaca.status == "canceled" and (alpaca.id in order.superseded or later):
            return reports  # the desk canceled it to place the leaves again: not the desk order's end
        if alpaca.status in TERMINAL and not order.is_final:
            filled_here = self._filled_from(order, alpaca.id)
            if filled_here >= alpaca.filled_qty:
                exec_type, status = TERMINAL[alpaca.status]
                reports += self._emit(
                    order,
                    execution_id(alpaca.id, alpaca.status),
                    exec_type,
                    status,
                    event_ns=alpaca.updated_ns,
                    text=self._replaced_text(order) if alpaca.status == "canceled" else f"alpaca order {alpaca.status}",
                )
        return reports

    def on_fill(self, alpaca: AlpacaOrder, fill: Fill) -> Reports:
        order = self.attach(alpaca)
        if order is None:
            return []
        self._seen(fill.event_ns)
        self._state(order, alpaca)
        reports = self._new(order, alpaca)
        exec_id = execution_id(fill.alpaca_order_id, "fill", canonical(fill.cum_qty))
        if exec_id in order.reported:
            if exec_id in order.unattributed:  # restored from EXECUTIONS: now we know its Alpaca order
                order.unattributed.discard(exec_id)
                order.filled_at_alpaca[fill.alpaca_order_id] = self._filled_from(order, fill.alpaca_order_id) + fill.qty
            return reports
        order.cum_qty += fill.qty
        order.cost += fill.qty * fill.price
        order.filled_at_alpaca[fill.alpaca_order_id] = self._filled_from(order, fill.alpaca_order_id) + fill.qty
        latest = not order.alpaca_ids or order.alpaca_ids[-1] == fill.alpaca_order_id
        if order.qty is not None and latest and alpaca.qty is not None:
            # The newest Alpaca order always carries all of the desk order's leaves (first placement,
            # or the leaves placed again after a cross), so its leaves are the desk order's: right even
            # after a restart, when internal crosses made before it are not in this book.
            leaves = max(alpaca.qty - fill.cum_qty, ZERO)
            order.cum_qty = max(order.cum_qty, order.qty - leaves)
            done = leaves == 0
        elif order.qty is not None:
            done = order.cum_qty >= order.qty
        else:  # a notional order: done when Alpaca says so and every fill is in
            done = alpaca.status == "filled" and order.filled_at_alpaca[fill.alpaca_order_id] >= alpaca.filled_qty
        exec_type, status = (
            (E.EXEC_TYPE_FILL, E.ORDER_STATUS_FILLED)
            if done
            else (E.EXEC_TYPE_PARTIAL_FILL, E.ORDER_STATUS_PARTIALLY_FILLED)
        )
        text = f"alpaca execution {fill.alpaca_execution_id}" if fill.alpaca_execution_id else ""
        reports += self._emit(
            order,
            exec_id,
            exec_type,
            status,
            event_ns=fill.event_ns,
            fill_qty=fill.qty,
            fill_price=fill.price,
            text=text,
            venue_order_id=fill.alpaca_order_id,
        )
        if alpaca.status in TERMINAL and not done:
            reports += self.on_order(alpaca)  # a cancel that arrived with (or before) its last fill
        return reports

    def on_update(self, event: str, alpaca: AlpacaOrder, fill: Fill | None) -> Reports:
        """A ``trade_updates`` event."""
        if event in FILL_EVENTS and fill is not None:
            return self.on_fill(alpaca, fill)
        return self.on_order(alpaca)

    def cross(self, incoming: DeskOrder, resting: DeskOrder, qty: Decimal, price: Decimal) -> Reports:
        """An internal execution between two strategies' orders (no Alpaca order fills for it).

        Numbered by the incoming order's crosses so far (restored after a restart), so a cross made
        again after a redelivery never shares an execution id with one made before."""
        reports: Reports = []
        now = self._clock()
        seq = incoming.crosses
        for order, other in ((resting, incoming), (incoming, resting)):
            exec_id = execution_id("cross", incoming.order_id, resting.order_id, seq, order.order_id)
            if exec_id in order.reported:
                continue
            if execution_id(order.order_id, "new") not in order.reported:
                reports += self._emit(
                    order, execution_id(order.order_id, "new"), E.EXEC_TYPE_NEW, E.ORDER_STATUS_NEW, event_ns=now
                )
            order.cum_qty += qty
            order.cost += qty * price
            order.crosses += 1
            done = (
                order.cum_qty >= order.qty
                if order.qty is not None
                else (order.notional is not None and order.notional - order.cost < CENT)
            )  # by value: all spent
            exec_type, status = (
                (E.EXEC_TYPE_FILL, E.ORDER_STATUS_FILLED)
                if done
                else (E.EXEC_TYPE_PARTIAL_FILL, E.ORDER_STATUS_PARTIALLY_FILLED)
            )
            reports += self._emit(
                order,
                exec_id,
                exec_type,
                status,
                event_ns=now,
                fill_qty=qty,
                fill_price=price,
                text=f"internal cross with strategy {other.strategy_id} order {other.order_id}",
            )
        return reports

    def pulling(self, order: DeskOrder, alpaca_id: str, incoming: DeskOrder) -> Reports:
        """The record written (and stored) before the desk cancels ``order``'s Alpaca order for ``incoming``.

        A NEW-type report of the *incoming* order (the one being handled; its numbers unchanged, so
        the ledger's order row is too; the resting order's own reports stay exactly its own) whose
        execution id names the Alpaca order (:func:`pull_execution_id`): after a restart that
        order's cancel is known to be the desk's, so it is no end of ``order`` and its leaves are
        placed again (:meth:`needs_replacing`)."""
        order.superseded.add(alpaca_id)
        exec_id = pull_execution_id(alpaca_id)
        self.pull_records.add(exec_id)
        again = alpaca_client_order_id(order.strategy_id, order.client_order_id, order.next_placement)
        text = (
            f"{PULL_TEXT} {alpaca_id} of strategy {order.strategy_id} order {order.order_id}: canceled by "
            f"the desk for this order; its leaves go to alpaca again as {again}"
        )
        return self._emit(incoming, exec_id, E.EXEC_TYPE_NEW, incoming.status, event_ns=self._clock(), text=text)

    def is_held(self, order: DeskOrder) -> bool:
        """``order`` waits at the desk (netting's hold): never sent to Alpaca, not final."""
        return order.order_id in self.held and not order.alpaca_ids and not order.is_final

    def held_orders(self) -> list[DeskOrder]:
        """The orders held at the desk now (those sent or ended since are forgotten here)."""
        found = [o for o in (self.orders.get(i) for i in list(self.held)) if o is not None]
        self.held = {o.order_id for o in found if self.is_held(o)}
        return [o for o in found if o.order_id in self.held]

    def hold(self, order: DeskOrder, reason: str) -> Reports:
        """``order`` waits at the desk (it could trade against another strategy's order resting at
        Alpaca and would rest itself): its NEW says so, or - already NEW after partial crosses - a
        NEW-type record with its numbers unchanged (so a restart knows it is held: :meth:`restore`)."""
        if order.order_id in self.held:
            return []  # held already (worked again and still held): said once
        self.held.add(order.order_id)
        text = reason if HELD_MARK in reason else f"{order.symbol}{HELD_MARK}{reason}"
        new_id = execution_id(order.order_id, "new")
        exec_id = new_id if new_id not in order.reported else execution_id("held", order.order_id)
        return self._emit(order, exec_id, E.EXEC_TYPE_NEW, order.status, event_ns=self._clock(), text=text)

    def _replaced_text(self, order: DeskOrder) -> str:
        """A canceled order's text: ``replaced by <id>`` when the desk canceled it for a replace."""
        if order.canceled_text:
            return order.canceled_text
        by = self.orders.get(order.replaced_by) if order.replaced_by else None
        return f"replaced by {by.client_order_id}" if by is not None else "alpaca order canceled"

    def replacing(self, new: DeskOrder, old: DeskOrder) -> Reports:
        """``new`` replaces ``old`` (a replace at Alpaca is a cancel of old's Alpaca order, then new
        placed as an order of its own): new's NEW, with ``replaces`` = old's order id and new's own
        quantity (its total less what old has filled), stored before old's cancel is sent, so a restart
        knows whose cancel it was (:meth:`restore`) and finishes the replace."""
        new.replaces, old.replaced_by = old.order_id, new.order_id
        text = f"replacing {old.client_order_id} (order {old.order_id})"
        return self._emit(
            new,
            execution_id(new.order_id, "new"),
            E.EXEC_TYPE_NEW,
            E.ORDER_STATUS_NEW,
            event_ns=self._clock(),
            text=text,
        )

    def replaced(self, old: DeskOrder) -> Reports:
        """``old`` has nothing at Alpaca (held at the desk, or pulled and waiting to go again): it ends
        now, CANCELED ``replaced by <id>``."""
        self.held.discard(old.order_id)
        return self._emit(
            old,
            execution_id("replaced", old.order_id),
            E.EXEC_TYPE_CANCELED,
            E.ORDER_STATUS_CANCELED,
            event_ns=self._clock(),
            text=self._replaced_text(old),
        )

    def cancel_held(self, order: DeskOrder) -> Reports:
        """The strategy canceled an order held at the desk: CANCELED (nothing of it is at Alpaca)."""
        self.held.discard(order.order_id)
        return self._emit(
            order,
            execution_id("canceled", order.order_id),
            E.EXEC_TYPE_CANCELED,
            E.ORDER_STATUS_CANCELED,
            event_ns=self._clock(),
            text="canceled while held at the desk (never sent to alpaca)",
        )

    def expect(self, order: DeskOrder, alpaca_client_id: str) -> None:
        """An Alpaca order about to be placed for ``order`` (so its events find it first)."""
        self._by_client_id[alpaca_client_id] = order

    def refused_remainder(self, order: DeskOrder, text: str) -> Reports:
        """The desk will not send what is left of ``order``: REJECTED, or CANCELED after fills."""
        if order.cum_qty > 0:
            if execution_id(order.order_id, "new") not in order.reported:
                return []
            return self._emit(
                order,
                execution_id("remainder", order.order_id),
                E.EXEC_TYPE_CANCELED,
                E.ORDER_STATUS_CANCELED,
                event_ns=self._clock(),
                text=text,
            )
        return self.rejected(order, text)

    def rejected(self, order: DeskOrder, text: str) -> Reports:
        """Alpaca refused the POST (403/422...): one REJECTED report."""
        return self._emit(
            order,
            execution_id("rejected", order.order_id),
            E.EXEC_TYPE_REJECTED,
            E.ORDER_STATUS_REJECTED,
            event_ns=self._clock(),
            text=text,
        )

    def cancel_rejected(self, routed: orders_pb2.RoutedOrder, text: str) -> Reports:
        order = self.orders.get(routed.order_id)
        now = self._clock()
        report = ER(
            execution_id=str(uuid.uuid4()),
            order_id=routed.order_id,
            client_order_id=routed.cancel.client_order_id,
            strategy_id=routed.strategy_id,
            member_id=routed.member_id,
            exec_type=E.EXEC_TYPE_CANCEL_REJECTED,
            status=order.status if order else E.ORDER_STATUS_UNSPECIFIED,
            symbol=order.symbol if order else "",
            venue=VENUE,
            text=text,
            event_ns=now,
            report_ns=now,
        )
        return [report]

    def open_orders(self) -> list[ledger_pb2.OrderRecord]:
        return [
            _record(o)
            for o in self.orders.values()
            if not o.is_final and (o.alpaca_ids or self.is_held(o) or self.is_armed(o))
        ]

    # --- internals ---------------------------------------------------------------------------------

    def _seen(self, event_ns: int) -> None:
        self.last_event_ns = max(self.last_event_ns, event_ns)

    @staticmethod
    def _state(order: DeskOrder, alpaca: AlpacaOrder) -> None:
        if order.type == common_pb2.ORDER_TYPE_TRAILING_STOP and alpaca.id == order.latest_alpaca_id:
            # where Alpaca's trailing stop stands now: what netting judges it by (a stop at this price)
            order.stop_price = alpaca.stop_price or order.stop_price
            order.hwm = alpaca.hwm or order.hwm
        known = order.alpaca_state.get(alpaca.id)
        if known is None or alpaca.filled_qty >= known[1]:
            order.alpaca_state[alpaca.id] = (alpaca.status, alpaca.filled_qty)

    def needs_replacing(self, order: DeskOrder) -> bool:
        """The desk canceled ``order``'s newest Alpaca order to cross it and has not placed its leaves again."""
        latest = order.latest_alpaca_id
        if latest is None or order.is_final or order.qty is None or latest not in order.superseded:
            return False
        state = order.alpaca_state.get(latest)
        return state is not None and state[0] in PULLED

    @staticmethod
    def _filled_from(order: DeskOrder, alpaca_id: str) -> Decimal:
        return order.filled_at_alpaca.get(alpaca_id, ZERO)

    def _new(self, order: DeskOrder, alpaca: AlpacaOrder) -> Reports:
        exec_id = execution_id(order.order_id, "new")
        if exec_id in order.reported:
            return []
        if order.qty is None and alpaca.qty is not None and not order.crosses:
            order.qty = alpaca.qty  # (an order by value partly crossed keeps trading by value)
        return self._emit(order, exec_id, E.EXEC_TYPE_NEW, E.ORDER_STATUS_NEW, event_ns=alpaca.created_ns)

    def _emit(
        self,
        order: DeskOrder,
        exec_id: str,
        exec_type: E.ExecType,
        status: E.OrderStatus,
        *,
        event_ns: int,
        fill_qty: Decimal | None = None,
        fill_price: Decimal | None = None,
        text: str = "",
        venue_order_id: str | None = None,
    ) -> Reports:
        if exec_id in order.reported:
            return []
        order.reported.add(exec_id)
        order.status = status
        report = ER(
            execution_id=exec_id,
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            venue_order_id=venue_order_id or (order.alpaca_ids[-1] if order.alpaca_ids else ""),
            strategy_id=order.strategy_id,
            member_id=order.member_id or self.members.get(order.strategy_id, ""),
            exec_type=exec_type,
            status=order.status,
            symbol=order.symbol,
            side=order.side,
            type=order.type,
            time_in_force=order.tif,
            order_qty=fmt(order.qty),
            notional=fmt(order.notional),
            limit_price=fmt(order.limit_price),
            stop_price=fmt(order.stop_price),
            trail_price=fmt(order.trail_price),
            trail_percent=fmt(order.trail_percent),
            hwm=fmt(order.hwm),
            replaces=order.replaces,
            parent_order_id=order.parent_order_id,
            order_class=order.order_class,
            take_profit_limit_price=fmt(order.take_profit),
            stop_loss_stop_price=fmt(order.stop_loss),
            stop_loss_limit_price=fmt(order.stop_loss_limit),
            fill_qty=fmt(fill_qty),
            fill_price=fmt(fill_price),
            cum_qty=fmt(order.cum_qty),
            avg_price=fmt(order.avg_price),
            leaves_qty=fmt(order.leaves_qty),
            fee=fmt(ZERO) if fill_qty is not None else "",
            venue=VENUE,
            text=text,
            event_ns=event_ns or self._clock(),
            report_ns=self._clock(),
        )
        return [report]


def _record(order: DeskOrder) -> ledger_pb2.OrderRecord:
    return order_record(order, VENUE, order.created_ns)
