"""The matching engine of the ``sim`` venue: pure, in memory, fed by the desk's own market data.

No I/O and no wall clock: the clock and the execution-id factory are injected, so unit tests drive
it with a fake clock and exact Decimals. The gateway's sim broker
(``services/broker_gateway/brokers/sim.py``) hands it routed orders and ``md.*`` updates and
publishes the :class:`ExecutionReport` s it returns.

Model (the numbers come from the gateway's ``SIM_*`` settings, listed in docs/architecture.md §8):

* Reference price: the last quote's ask (buys) / bid (sells) when a quote is known, else the last
  trade price or bar close.
* Liquidity: each update offers ``participation`` x its volume (bar volume, trade size, or the
  quote's ask/bid size) per side; fills consume it, so two orders share one bar. An update without
  volume offers unlimited liquidity.
* Market orders fill at the reference price moved against the order by ``slippage_bps``; a
  remainder rests (DAY/GTC) and fills on later updates at their open, is canceled (IOC), or the
  whole order is canceled without a fill (FOK).
* A limit order marketable at submission fills at ``min(limit, ref + slippage)`` (buys; sells
  mirror). A resting buy limit fills on an update whose low is <= limit at ``min(limit, open)``,
  so a gap through the limit gets the better open. IOC/FOK orders never rest.
* A buy stop triggers when the high reaches the stop and then fills as a market order at
  ``max(stop, open)`` plus slippage. A stop-limit triggers the same way, then behaves as a limit.
* DAY orders expire at the first update dated (UTC) after the day they were submitted; GTC orders
  rest until canceled.
* A trailing stop (``trail_price`` or ``trail_percent``) keeps the best price seen since it was
  placed (``hwm``: the highest for a sell, the lowest for a buy; at first the reference price) and its
  stop at that price less (a sell) or plus (a buy) the trail. Each update first checks the stop as it
  stood (a sell triggers when the low reaches it), then ratchets it with the update's high (a sell) or
  low (a buy); it never moves back. Triggered, it fills as a market order at ``min(stop, open)``
  (sells; buys mirror) plus slippage.
* A replace (``replaces``: the client order id of an open order of the same strategy, same symbol,
  side and type) closes the old order (CANCELED, text ``replaced by <new id>``) and places the new one
  in the same call, for its ``qty`` less what the old one filled; a trailing stop keeps its ``hwm``, an
  exit its OCO partner. The new one is REJECTED, and the old one left as it is, when the old one is
  unknown (UNKNOWN_ORDER), final (ORDER_CLOSED), a bracket / OTO entry not done yet, or has filled
  ``qty`` or more already.
* Exits (client order ids ``<id>-tp``, ``<id>-sl``; ``parent_order_id`` = the order's id): a bracket
  (market or limit entry) places a take-profit limit and a stop-loss stop (stop-limit with
  ``stop_loss_limit_price``) on the other side once the entry is FILLED, for its quantity, or once it
  is canceled or expired after fills, for what it filled; an OTO places its one exit the same way.
  Exits placed by a fill trade from the next update on (they never see the update that filled the
  entry). An OCO order is a limit exit (its take-profit) placed together with its stop-loss on the
  same side. The two exits of a bracket or an OCO are tied: a fill of one shrinks the other by as much,
  and the other is CANCELED (``OCO: <id> filled``) once nothing is left of it; a cancel of one cancels
  both.
* Fee per execution: ``max(fee_min, qty * fee_per_share + qty * price * fee_bps / 10000)``.
* Notional market orders get ``qty = notional / expected fill price`` rounded down to 9 decimals,
  fixed when the order first meets a price.

The book lives in memory, and EXECUTIONS (the venue's own reports) is its record: at start-up the
gateway hands every stored report of this venue to :meth:`SimEngine.restore`, which rebuilds the
open orders (fields, fills, cost, report count) and marks every order seen as known, so a crash
(SIGKILL) loses no resting order and a redelivered routed order is neither placed nor traded again.
A clean stop still expires the resting orders (:meth:`SimEngine.expire_all`): a sim rule (the venue
closes), not a need; a restart then restores them as expired.

Execution ids are ``<order_id>-<n>`` (the order's n-th report), not random: a gateway killed after
publishing an order's reports but before acking the routed order gets it again after its restart,
and the fresh engine then makes the same ids for the same order, which EXECUTIONS deduplicates
(``Nats-Msg-Id``), so the order does not trade twice (tests/faults).
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal

from desk.bus.decimals import fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import (
    REQUIRED_PRICES,
    SIDE_WORDS,
    STOP_LOSS_SUFFIX,
    TAKE_PROFIT_SUFFIX,
    TIME_IN_FORCE_WORDS,
    LocalReports,
    OrderProgress,
    Report,
    Reports,
    needs_limit_price,
    needs_stop_price,
    to_protos,
)
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2

MarketUpdate = marketdata_pb2.Bar | marketdata_pb2.Trade | marketdata_pb2.Quote
"""What the engine trades against: a bar, a trade or a quote."""

Clock = Callable[[], int]
"""Returns the current time in int64 nanoseconds since the epoch."""

BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
MARKET, LIMIT = common_pb2.ORDER_TYPE_MARKET, common_pb2.ORDER_TYPE_LIMIT
STOP, STOP_LIMIT = common_pb2.ORDER_TYPE_STOP, common_pb2.ORDER_TYPE_STOP_LIMIT
TRAILING_STOP = common_pb2.ORDER_TYPE_TRAILING_STOP
BRACKET, OCO, OTO = orders_pb2.ORDER_CLASS_BRACKET, orders_pb2.ORDER_CLASS_OCO, orders_pb2.ORDER_CLASS_OTO
DAY, GTC = common_pb2.TIME_IN_FORCE_DAY, common_pb2.TIME_IN_FORCE_GTC
IOC, FOK = common_pb2.TIME_IN_FORCE_IOC, common_pb2.TIME_IN_FORCE_FOK

ER = executions_pb2.ExecutionReport
E = executions_pb2  # enum values: E.EXEC_TYPE_FILL, E.ORDER_STATUS_NEW...

QTY_STEP = Decimal("1e-9")
BPS = Decimal(10000)
ZERO = Decimal(0)
SHUTDOWN_TEXT = "sim venue stopped; resting orders expire"
CANCELED_ON_REQUEST = "canceled on request"
RESTART_TEXT = "sim venue restarted before the order completed; {tif} order canceled"
OPEN_STATUSES = (E.ORDER_STATUS_NEW, E.ORDER_STATUS_PARTIALLY_FILLED)
_VENUE_ID_RE = re.compile(r"^sim-(\d+)$")


def floor_qty(value: Decimal) -> Decimal:
    """Round a quantity down to the venue's 9 decimals."""
    return value.quantize(QTY_STEP, rounding=ROUND_DOWN)


@dataclass(frozen=True)
class SimConfig:
    """Slippage, fee and liquidity model of the simulator (all Decimal)."""

    slippage_bps: Decimal = Decimal(2)
    fee_bps: Decimal = Decimal(1)
    fee_per_share: Decimal = Decimal(0)
    fee_min: Decimal = Decimal(0)
    participation: Decimal = Decimal("0.25")

    def fee(self, qty: Decimal, price: Decimal) -> Decimal:
        return max(self.fee_min, qty * self.fee_per_share + qty * price * self.fee_bps / BPS)

    def slip(self, price: Decimal, side: int) -> Decimal:
        """``price`` moved against an order of ``side`` by the slippage."""
        factor = self.slippage_bps / BPS
        return price * (1 + factor) if side == BUY else price * (1 - factor)

    def liquidity(self, volume: Decimal | None) -> Decimal | None:
        """Quantity one update offers; ``None`` (unlimited) when it carries no volume."""
        if volume is None or volume <= 0:
            return None
        return floor_qty(volume * self.participation)


@dataclass(slots=True)
class SimOrder(OrderProgress):
    """One order in the sim's book."""

    order_id: str
    venue_order_id: str
    strategy_id: str
    member_id: str
    client_order_id: str
    symbol: str
    side: common_pb2.Side
    type: common_pb2.OrderType
    tif: common_pb2.TimeInForce
    qty: Decimal | None  # None for a notional order until it first meets a price
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    submitted_ns: int
    cum_qty: Decimal = ZERO
    cost: Decimal = ZERO  # sum of fill_qty * fill_price, for the average price
    status: executions_pb2.OrderStatus = E.ORDER_STATUS_NEW
    triggered: bool = False  # stop / stop-limit: the stop price has been reached
    canceled_by_request: bool = False
    reports: int = 0  # reports made for this order; numbers its execution ids
    trail_price: Decimal | None = None  # trailing stop: the trail as an amount ...
    trail_percent: Decimal | None = None  # ... or as a percentage of the best price seen
    hwm: Decimal | None = None  # trailing stop: best price seen (highest for a sell, lowest for a buy)
    replaces: str = ""  # the order id this order replaced
    parent_order_id: str = ""  # an exit leg: the bracket / OTO / OCO order it belongs to
    order_class: orders_pb2.OrderClass = orders_pb2.ORDER_CLASS_UNSPECIFIED
    take_profit: Decimal | None = None  # bracket / OTO / OCO: the take-profit exit's limit
    stop_loss: Decimal | None = None  # ... the stop-loss exit's stop
    stop_loss_limit: Decimal | None = None  # ... and its limit (a stop-limit exit)
    legs_placed: bool = False  # bracket / OTO: its exits have been placed (the entry is done)
    oco_with: str = ""  # one of two OCO exits: the other one's order id


@dataclass
class _Touch:
    """The prices one update shows one side of the book: its open, high and low."""

    open: Decimal
    high: Decimal
    low: Decimal

    @classmethod
    def at(cls, price: Decimal) -> _Touch:
        return cls(price, price, price)


@dataclass
class _Market:
    """What the sim knows of one symbol."""

    last: Decimal | None = None  # last trade price or bar close
    bid: Decimal | None = None
    ask: Decimal | None = None
    # liquidity left in the latest update, per side; None = unlimited
    budget: dict[int, Decimal | None] = field(default_factory=lambda: {BUY: None, SELL: None})

    def reference(self, side: int) -> Decimal | None:
        quoted = self.ask if side == BUY else self.bid
        return quoted if quoted is not None else self.last


def _utc_date(ns: int) -> dt.date:
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.UTC).date()


def _new_execution_id() -> str:
    return str(uuid.uuid4())


class SimEngine:
    """The matching engine. Every method returns the reports the call caused, in order."""

    venue = "sim"

    def __init__(
        self,
        config: SimConfig | None = None,
        clock: Clock = time.time_ns,
        new_execution_id: Callable[[], str] | None = None,
        retain_final: int | None = None,
    ) -> None:
        """``new_execution_id``: an id factory for tests; by default ids are ``<order_id>-<n>``.

        ``retain_final``: keep only this many final (filled, canceled, expired, rejected) orders in
        memory, forgetting the oldest beyond it (their ids stay known: a repeated id is still
        ignored). ``None`` (the gateway) keeps them all; the backtester keeps a few, so a long run's
        memory does not grow with every order it ever placed.
        """
        self.config = config or SimConfig()
        self._clock = clock
        self._new_execution_id = new_execution_id
        self._orders: dict[str, SimOrder] = {}
        self._by_client_id: dict[tuple[str, str], str] = {}
        self._resting: dict[str, SimOrder] = {}  # insertion order = time priority
        self._markets: dict[str, _Market] = {}
        self._next_venue_id = 1
        self._retain_final = retain_final
        self._final_ids: deque[str] = deque()
        self._forgotten: set[str] = set()  # ids of final orders no longer held (retain_final)
        self.restore_skipped = 0  # stored reports :meth:`restore` could not read

    # --- orders ------------------------------------------------------------------------------------

    # Every method that returns reports has a ``*_local`` twin returning them as :class:`Report` objects
    # (the same fields, no protobuf message): the gateway publishes messages; the SDK's backtester, which
    # never crosses the wire, reads the plain objects. The engine's state changes alike either way.

    def submit(self, routed: orders_pb2.RoutedOrder) -> Reports:
        """Accept ``routed.new_order``: a NEW report, then whatever fills at once.

        An order id seen before returns ``[]`` (a redelivered routed order must not trade twice).
        Raises :class:`DeskError` MALFORMED when the routed order has no order id, strategy id or
        new order; an order with bad fields is answered with a REJECTED report.
        """
        return to_protos(self.submit_local(routed))

    def submit_local(self, routed: orders_pb2.RoutedOrder) -> LocalReports:
        """:meth:`submit`, the reports as :class:`Report` objects."""
        _check_envelope(routed)
        if not routed.HasField("new_order"):
            raise DeskError("MALFORMED", "routed order carries no new_order")
        if routed.order_id in self._orders or routed.order_id in self._forgotten:
            return []
        request = routed.new_order
        order = SimOrder(
            order_id=routed.order_id,
            venue_order_id="",
            strategy_id=routed.strategy_id,
            member_id=routed.member_id,
            client_order_id=request.client_order_id,
            symbol=request.symbol,
            side=request.side,
            type=request.type,
            tif=request.time_in_force,
            qty=None,
            notional=None,
            limit_price=None,
            stop_price=None,
            submitted_ns=self._clock(),
        )
        self._register(order)
        replaced: SimOrder | None = None
        try:
            _fill_in_fields(order, request)
            if request.replaces:
                replaced = self._replaced(order, request.replaces)
        except DeskError as err:
            order.status = E.ORDER_STATUS_REJECTED
            return [self._report(order, E.EXEC_TYPE_REJECTED, text=f"{err.code}: {err.message}")]

        reports: LocalReports = []
        if replaced is not None:
            self._replace(replaced, order, reports)
        if order.type == TRAILING_STOP:
            self._start_trail(order)
        reports.append(self._report(order, E.EXEC_TYPE_NEW))
        if order.order_class == OCO:  # both exits are live at once: the order itself and its stop-loss
            leg = self._new_leg(order, STOP_LOSS_SUFFIX, order.qty)
            self._link(order, leg)
            reports.append(self._report(leg, E.EXEC_TYPE_NEW))
            self._work(order, reports)
            if not leg.is_final:
                self._work(leg, reports)
            return reports
        self._work(order, reports)
        return reports

    def _start_trail(self, order: SimOrder) -> None:
        """A new trailing stop's best price is the market's now (a replacement keeps its old one), so
        its NEW report carries its stop; with no price yet the first update sets it."""
        if order.hwm is None:
            market = self._markets.get(order.symbol)
            order.hwm = market.reference(order.side) if market else None
        if order.hwm is not None:
            order.stop_price = _trail_stop(order)

    def _register(self, order: SimOrder) -> None:
        """A new order of this venue: its venue id, and known by order id and client order id."""
        order.venue_order_id = f"sim-{self._next_venue_id:08d}"
        self._next_venue_id += 1
        self._orders[order.order_id] = order
        self._by_client_id[(order.strategy_id, order.client_order_id)] = order.order_id

    def _work(self, order: SimOrder, reports: LocalReports) -> None:
        """A newly accepted order meets the market: what fills at once fills; the rest rests (DAY,
        GTC) or is canceled (IOC, FOK)."""
        market = self._markets.get(order.symbol)
        reference = market.reference(order.side) if market else None
        if market is None or reference is None:
            if order.tif in (IOC, FOK):
                self._finish(
                    order,
                    E.ORDER_STATUS_CANCELED,
                    E.EXEC_TYPE_CANCELED,
                    reports,
                    f"no market price for {order.symbol}; {_tif_name(order.tif)} order canceled",
                )
            else:
                self._resting[order.order_id] = order
            return

        self._try_fill(order, market, _Touch.at(reference), immediate=True, reports=reports)
        if order.is_final:
            return
        if order.tif in (IOC, FOK):
            text = (
                f"{_tif_name(order.tif)}: unfilled remainder canceled"
                if order.cum_qty
                else f"{_tif_name(order.tif)}: not fillable at once; canceled"
            )
            self._finish(order, E.ORDER_STATUS_CANCELED, E.EXEC_TYPE_CANCELED, reports, text)
        else:
            self._resting[order.order_id] = order

    # --- replace, and the exits of bracket / OTO / OCO orders ----------------------------------------

    def _replaced(self, order: SimOrder, replaces: str) -> SimOrder:
        """The open order ``order`` may replace (client order id ``replaces``); DeskError if none."""
        old_id = self._by_client_id.get((order.strategy_id, replaces))
        old = self._orders.get(old_id) if old_id is not None else None
        if old is None:
            raise DeskError("UNKNOWN_ORDER", f"no order {replaces} of this strategy to replace")
        if old.is_final:
            status = E.OrderStatus.Name(old.status).removeprefix("ORDER_STATUS_").lower()
            raise DeskError("ORDER_CLOSED", f"order {replaces} is already {status}; there is nothing to replace")
        if (old.symbol, old.side, old.type) != (order.symbol, order.side, order.type):
            raise DeskError(
                "INVALID_FIELD",
                f"a replacing order keeps the symbol, side and type of the order it replaces ({replaces})",
            )
        if old.order_class in (BRACKET, OTO) and not old.legs_placed:
            raise DeskError(
                "INVALID_FIELD", f"{replaces} is a bracket or OTO entry: cancel it and send a new one to change it"
            )
        if order.qty is None or order.qty <= old.cum_qty:
            raise DeskError(
                "INVALID_FIELD",
                f"qty {fmt(order.qty)} must be more than the {fmt(old.cum_qty)} that {replaces} has filled already",
            )
        return old

    def _replace(self, old: SimOrder, new: SimOrder, reports: LocalReports) -> None:
        """``new`` replaces ``old``: old is closed (CANCELED, "replaced by ..."), new takes what is left of
        the total (its qty minus old's fills), old's trailing high-water mark and OCO partner."""
        self._finish(old, E.ORDER_STATUS_CANCELED, E.EXEC_TYPE_CANCELED, reports, f"replaced by {new.client_order_id}")
        assert new.qty is not None
        new.qty -= old.cum_qty
        new.replaces = old.order_id
        new.parent_order_id = old.parent_order_id
        if new.type == TRAILING_STOP:
            new.hwm = old.hwm
        partner = self._orders.get(old.oco_with) if old.oco_with else None
        if partner is not None and not partner.is_final:
            self._link(new, partner)

    def _new_leg(self, parent: SimOrder, suffix: str, qty: Decimal | None) -> SimOrder:
        """An exit of ``parent``: a take-profit limit (``-tp``) or a stop-loss stop / stop-limit (``-sl``)
        for ``qty``; the opposite side, except an OCO order's own stop-loss (same side: both exit)."""
        client_order_id = parent.client_order_id + suffix
        take_profit = suffix == TAKE_PROFIT_SUFFIX
        if take_profit:
            kind, limit, stop = LIMIT, parent.take_profit, None
        else:
            kind = STOP_LIMIT if parent.stop_loss_limit is not None else STOP
            limit, stop = parent.stop_loss_limit, parent.stop_loss
        side = parent.side if parent.order_class == OCO else (SELL if parent.side == BUY else BUY)
        leg = SimOrder(
            order_id=order_id_for(parent.strategy_id, client_order_id),
            venue_order_id="",
            strategy_id=parent.strategy_id,
            member_id=parent.member_id,
            client_order_id=client_order_id,
            symbol=parent.symbol,
            side=side,
            type=kind,
            tif=parent.tif,
            qty=qty,
            notional=None,
            limit_price=limit,
            stop_price=stop,
            submitted_ns=self._clock(),
            parent_order_id=parent.order_id,
        )
        self._register(leg)
        return leg

    def _link(self, one: SimOrder, other: SimOrder) -> None:
        one.oco_with, other.oco_with = other.order_id, one.order_id

    def _place_exits(self, parent: SimOrder, reports: LocalReports) -> None:
        """A bracket / OTO entry is done with fills: its exits go live for the quantity it filled (a
        bracket's two are OCO)."""
        parent.legs_placed = True
        legs = []
        if parent.take_profit is not None:
            legs.append(self._new_leg(parent, TAKE_PROFIT_SUFFIX, parent.cum_qty))
        if parent.stop_loss is not None:
            legs.append(self._new_leg(parent, STOP_LOSS_SUFFIX, parent.cum_qty))
        if len(legs) == 2:
            self._link(legs[0], legs[1])
        for leg in legs:
            reports.append(self._report(leg, E.EXEC_TYPE_NEW))
        for leg in legs:
            if not leg.is_final:
                self._work(leg, reports)

    def _after_fill(self, order: SimOrder, qty: Decimal, reports: LocalReports) -> None:
        """What a fill of ``qty`` does beyond the order: its OCO partner shrinks by as much (closed when
        nothing is left of it), a bracket / OTO entry that is filled places its exits."""
        partner = self._orders.get(order.oco_with) if order.oco_with else None
        if partner is not None and not partner.is_final and partner.qty is not None:
            partner.qty -= qty
            if partner.qty <= partner.cum_qty:
                partner.qty = partner.cum_qty
                self._finish(
                    partner,
                    E.ORDER_STATUS_CANCELED,
                    E.EXEC_TYPE_CANCELED,
                    reports,
                    f"OCO: {order.client_order_id} filled",
                )
        if order.status == E.ORDER_STATUS_FILLED and order.order_class in (BRACKET, OTO) and not order.legs_placed:
            self._place_exits(order, reports)

    def cancel(self, routed: orders_pb2.RoutedOrder) -> Reports:
        """Cancel ``routed.order_id``: CANCELED if it rests, CANCEL_REJECTED otherwise.

        A second cancel of an order this venue already canceled on request returns ``[]``
        (a redelivered cancel).
        """
        return to_protos(self.cancel_local(routed))

    def cancel_local(self, routed: orders_pb2.RoutedOrder) -> LocalReports:
        """:meth:`cancel`, the reports as :class:`Report` objects."""
        _check_envelope(routed)
        request = routed.cancel
        order_id = routed.order_id
        if order_id not in self._orders:
            order_id = self._by_client_id.get((routed.strategy_id, request.client_order_id), order_id)
        order = self._orders.get(order_id)
        if order is None:
            text = f"order {order_id} is already final" if order_id in self._forgotten else ""
            return [self._cancel_rejected_unknown(routed, text)]
        if order.is_final:
            if order.canceled_by_request:
                return []
            status = E.OrderStatus.Name(order.status).removeprefix("ORDER_STATUS_").lower()
            return [self._report(order, E.EXEC_TYPE_CANCEL_REJECTED, text=f"order is already {status}")]
        order.canceled_by_request = True
        reports: LocalReports = []
        self._finish(order, E.ORDER_STATUS_CANCELED, E.EXEC_TYPE_CANCELED, reports, CANCELED_ON_REQUEST)
        partner = self._orders.get(order.oco_with) if order.oco_with else None
        if partner is not None and not partner.is_final:
            partner.canceled_by_request = True
            text = f"OCO: {order.client_order_id} was canceled"
            self._finish(partner, E.ORDER_STATUS_CANCELED, E.EXEC_TYPE_CANCELED, reports, text)
        return reports

    def expire_all(self, text: str = SHUTDOWN_TEXT) -> Reports:
        """Expire every resting order (the venue is stopping; its book cannot survive)."""
        reports: LocalReports = []
        while self._resting:  # a bracket entry that expires with fills places its exits: they expire too
            for order in list(self._resting.values()):
                self._finish(order, E.ORDER_STATUS_EXPIRED, E.EXEC_TYPE_EXPIRED, reports, text)
        return to_protos(reports)

    def open_orders(self) -> list[SimOrder]:
        return list(self._resting.values())

    def update_matters(self, symbol: str, ts_ns: int) -> bool:
        """Whether an update of ``symbol`` dated ``ts_ns`` could make a report: an order of that
        symbol rests, or a resting DAY order would expire at that date.

        Otherwise the update only overwrites the symbol's market state (its last price, quote and
        liquidity), so a caller replaying data (the SDK's backtester) may skip it and feed just the
        symbol's latest update before the next order on it: the engine ends in the same state.
        """
        if not self._resting:
            return False
        today: dt.date | None = None
        for order in self._resting.values():
            if order.symbol == symbol:
                return True
            if order.tif == DAY:
                today = today or _utc_date(ts_ns or self._clock())
                if today > _utc_date(order.submitted_ns):
                    return True
        return False

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """Rebuild the book from this venue's stored reports (EXECUTIONS, in stream order).

        Call it once, on a fresh engine, before any order or market data. Every order seen becomes
        known (a redelivered routed order is ignored); an order whose last report leaves it open
        (NEW, PARTIALLY_FILLED) rests again with its fields, ``cum_qty``, ``cost``, status and
        ``reports`` = its reports seen, so its next execution id continues ``<order_id>-<n>``.
        Reports of another venue and CANCEL_REJECTEDs of orders never seen are skipped.

        Returns the reports the restore itself makes: an IOC/FOK order left open (the process died
        between its NEW and its fill or cancel) must not rest, so it is canceled now.
        What the reports do not carry is lost: the sim's last prices (the next update brings
        them), a stop-limit's trigger when it triggered without filling (it waits for its stop
        again) and how far a trailing stop ratcheted since its last report (it trails on from the
        stop and ``hwm`` that report holds). The ties of exits are rebuilt from ``parent_order_id``
        and ``replaces``, and a bracket / OTO entry done with fills whose exits' NEW reports were
        never stored (a crash between them) places its exits now, with the same execution ids. (The
        gateway's outbox may store the exits' NEW reports before the entry's FILL; a crash between
        the two restores the entry open with its exits placed, and the entry fills again later.)
        """
        for report in reports:
            if report.venue != self.venue or not report.order_id:
                continue
            try:
                self._restore_one(report)
            except DeskError:
                self.restore_skipped += 1  # an unreadable number: the gateway logs the count
        made: LocalReports = []
        for order in list(self._orders.values()):  # an entry done with fills whose exits a crash left unplaced
            if order.order_class in (BRACKET, OTO) and order.cum_qty and order.is_final and not order.legs_placed:
                self._place_exits(order, made)
        for order in list(self._resting.values()):
            if order.tif in (IOC, FOK):
                self._finish(
                    order,
                    E.ORDER_STATUS_CANCELED,
                    E.EXEC_TYPE_CANCELED,
                    made,
                    RESTART_TEXT.format(tif=_tif_name(order.tif)),
                )
        return to_protos(made)

    def _restore_one(self, report: executions_pb2.ExecutionReport) -> None:
        order = self._orders.get(report.order_id)
        if order is None:
            if report.exec_type not in (E.EXEC_TYPE_NEW, E.EXEC_TYPE_REJECTED):
                return  # e.g. a cancel of an order this venue never had
            order = _order_from_report(report)
            self._orders[order.order_id] = order
            self._by_client_id[(order.strategy_id, order.client_order_id)] = order.order_id
            match = _VENUE_ID_RE.match(order.venue_order_id)
            if match:
                self._next_venue_id = max(self._next_venue_id, int(match.group(1)) + 1)
            self._restore_links(order)
        order.reports += 1
        if report.exec_type == E.EXEC_TYPE_CANCEL_REJECTED:
            return  # says nothing new about the order
        if report.order_qty and order.qty is None:  # a notional order's qty, fixed at its first price
            order.qty = parse_decimal("order_qty", report.order_qty)
        if order.type == TRAILING_STOP and report.hwm:  # where it trailed to when this report was made
            order.hwm = parse_decimal("hwm", report.hwm)
            order.stop_price = parse_decimal("stop_price", report.stop_price, required=False) or order.stop_price
        if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL):
            fill_qty = _price("fill_qty", report.fill_qty)
            order.cum_qty += fill_qty
            order.cost += fill_qty * _price("fill_price", report.fill_price)
            order.triggered = order.type in (STOP, STOP_LIMIT, TRAILING_STOP)
            partner = self._orders.get(order.oco_with) if order.oco_with else None
            if partner is not None and partner.qty is not None and not partner.is_final:
                partner.qty = max(partner.cum_qty, partner.qty - fill_qty)  # as _after_fill did
        if report.status:
            order.status = report.status
        if report.exec_type == E.EXEC_TYPE_CANCELED and report.text == CANCELED_ON_REQUEST:
            order.canceled_by_request = True
        if order.status in OPEN_STATUSES:
            self._resting.setdefault(order.order_id, order)
        else:
            self._resting.pop(order.order_id, None)

    def _restore_links(self, order: SimOrder) -> None:
        """A restored order's ties, as they were made: a replacement takes its old order's OCO partner;
        an exit leg marks its parent's exits placed and is OCO with its parent (an OCO order) or with
        the bracket's other leg."""
        if order.replaces:
            old = self._orders.get(order.replaces)
            partner = self._orders.get(old.oco_with) if old is not None and old.oco_with else None
            if partner is not None and not partner.is_final:
                self._link(order, partner)
        parent = self._orders.get(order.parent_order_id) if order.parent_order_id else None
        if parent is None or order.replaces:
            return
        parent.legs_placed = True
        if parent.order_class == OCO:
            self._link(parent, order)
        elif parent.order_class == BRACKET and order.client_order_id.endswith(STOP_LOSS_SUFFIX):
            tp_id = self._by_client_id.get((order.strategy_id, parent.client_order_id + TAKE_PROFIT_SUFFIX))
            if tp_id is not None and tp_id in self._orders:
                self._link(self._orders[tp_id], order)

    def get(self, order_id: str) -> SimOrder | None:
        return self._orders.get(order_id)

    # --- market data -------------------------------------------------------------------------------

    def on_market_data(self, update: MarketUpdate) -> Reports:
        if isinstance(update, marketdata_pb2.Bar):
            return self.on_bar(update)
        if isinstance(update, marketdata_pb2.Quote):
            return self.on_quote(update)
        return self.on_trade(update)

    def on_bar(self, bar: marketdata_pb2.Bar) -> Reports:
        """A bar: resting orders see its open, high and low; its close becomes the last price."""
        return self.bar_update(
            _symbol(bar.symbol),
            _price("open", bar.open),
            _price("high", bar.high),
            _price("low", bar.low),
            _price("close", bar.close),
            parse_decimal("volume", bar.volume, positive=False, required=False),
            bar.start_ns,
        )

    def on_trade(self, trade: marketdata_pb2.Trade) -> Reports:
        return self.trade_update(
            _symbol(trade.symbol),
            _price("price", trade.price),
            parse_decimal("size", trade.size, positive=False, required=False),
            trade.ts_ns,
        )

    def on_quote(self, quote: marketdata_pb2.Quote) -> Reports:
        """A quote: buys see the ask (and its size), sells the bid; an empty side is ignored."""
        return self.quote_update(
            _symbol(quote.symbol),
            parse_decimal("bid_price", quote.bid_price, positive=False, required=False),
            parse_decimal("ask_price", quote.ask_price, positive=False, required=False),
            parse_decimal("bid_size", quote.bid_size, positive=False, required=False),
            parse_decimal("ask_size", quote.ask_size, positive=False, required=False),
            quote.ts_ns,
        )

    # The same updates as numbers: what on_bar / on_trade / on_quote do once the message is read. A
    # caller that already holds the Decimals (the SDK's backtester) calls these and skips the
    # message round trip; the engine's state and reports are the same.

    def bar_update(
        self,
        symbol: str,
        open_: Decimal,
        high: Decimal,
        low: Decimal,
        close: Decimal,
        volume: Decimal | None,
        ts_ns: int,
    ) -> Reports:
        return to_protos(self.bar_update_local(symbol, open_, high, low, close, volume, ts_ns))

    def trade_update(self, symbol: str, price: Decimal, size: Decimal | None, ts_ns: int) -> Reports:
        return to_protos(self.trade_update_local(symbol, price, size, ts_ns))

    def quote_update(
        self,
        symbol: str,
        bid: Decimal | None,
        ask: Decimal | None,
        bid_size: Decimal | None,
        ask_size: Decimal | None,
        ts_ns: int,
    ) -> Reports:
        return to_protos(self.quote_update_local(symbol, bid, ask, bid_size, ask_size, ts_ns))

    def bar_update_local(
        self,
        symbol: str,
        open_: Decimal,
        high: Decimal,
        low: Decimal,
        close: Decimal,
        volume: Decimal | None,
        ts_ns: int,
    ) -> LocalReports:
        market = self._market(symbol)
        market.last = close
        budget = self.config.liquidity(volume)
        market.budget = {BUY: budget, SELL: budget}
        if not self._resting:
            return []
        touch = _Touch(open_, high, low)
        return self._on_update(symbol, ts_ns, market, {BUY: touch, SELL: touch})

    def trade_update_local(self, symbol: str, price: Decimal, size: Decimal | None, ts_ns: int) -> LocalReports:
        market = self._market(symbol)
        market.last = price
        budget = self.config.liquidity(size)
        market.budget = {BUY: budget, SELL: budget}
        if not self._resting:
            return []
        touch = _Touch.at(price)
        return self._on_update(symbol, ts_ns, market, {BUY: touch, SELL: touch})

    def quote_update_local(
        self,
        symbol: str,
        bid: Decimal | None,
        ask: Decimal | None,
        bid_size: Decimal | None,
        ask_size: Decimal | None,
        ts_ns: int,
    ) -> LocalReports:
        market = self._market(symbol)
        market.bid = bid if bid else None
        market.ask = ask if ask else None
        market.budget = {BUY: self.config.liquidity(ask_size), SELL: self.config.liquidity(bid_size)}
        if not self._resting:
            return []
        touches: dict[int, _Touch] = {}
        if market.ask is not None:
            touches[BUY] = _Touch.at(market.ask)
        if market.bid is not None:
            touches[SELL] = _Touch.at(market.bid)
        return self._on_update(symbol, ts_ns, market, touches)

    # --- internals ---------------------------------------------------------------------------------

    def _market(self, symbol: str) -> _Market:
        market = self._markets.get(symbol)
        if market is None:
            market = self._markets[symbol] = _Market()
        return market

    def _on_update(self, symbol: str, ts_ns: int, market: _Market, touches: dict[int, _Touch]) -> LocalReports:
        reports: LocalReports = []
        self._expire_day_orders(ts_ns or self._clock(), reports)
        for order in [o for o in self._resting.values() if o.symbol == symbol]:
            touch = touches.get(order.side)
            if touch is not None and not order.is_final:  # an OCO partner may have closed it just now
                self._try_fill(order, market, touch, immediate=False, reports=reports)
        return reports

    def _expire_day_orders(self, ts_ns: int, reports: LocalReports) -> None:
        today = _utc_date(ts_ns)
        for order in list(self._resting.values()):
            if order.tif == DAY and today > _utc_date(order.submitted_ns):
                self._finish(
                    order,
                    E.ORDER_STATUS_EXPIRED,
                    E.EXEC_TYPE_EXPIRED,
                    reports,
                    f"DAY order expired at the end of {_utc_date(order.submitted_ns).isoformat()} (UTC)",
                )

    def _fill_price(self, order: SimOrder, touch: _Touch, immediate: bool) -> Decimal | None:
        """The price ``order`` fills at against ``touch``, or ``None`` if it does not trade."""
        buy = order.side == BUY
        base = touch.open
        if order.type == TRAILING_STOP and not order.triggered:
            trigger = _trail(order, touch)
            if trigger is None:
                return None
            base = trigger
        elif order.type in (STOP, STOP_LIMIT) and not order.triggered:
            assert order.stop_price is not None
            if buy and touch.high >= order.stop_price:
                base = max(order.stop_price, touch.open)
            elif not buy and touch.low <= order.stop_price:
                base = min(order.stop_price, touch.open)
            else:
                return None
            order.triggered = True
        if order.type in (MARKET, STOP, TRAILING_STOP):
            return self.config.slip(base, order.side)
        limit = order.limit_price
        assert limit is not None
        price = self.config.slip(base, order.side) if immediate else base
        if buy:
            return min(limit, price) if touch.low <= limit else None
        return max(limit, price) if touch.high >= limit else None

    def _try_fill(
        self, order: SimOrder, market: _Market, touch: _Touch, *, immediate: bool, reports: LocalReports
    ) -> None:
        price = self._fill_price(order, touch, immediate)
        if price is None:
            return
        if order.qty is None:  # notional order meets its first price
            assert order.notional is not None
            order.qty = floor_qty(order.notional / price)
            if order.qty <= 0:
                self._finish(
                    order,
                    E.ORDER_STATUS_CANCELED,
                    E.EXEC_TYPE_CANCELED,
                    reports,
                    f"notional {fmt(order.notional)} buys less than {fmt(QTY_STEP)} at {fmt(price)}",
                )
                return
        leaves = order.qty - order.cum_qty
        available = market.budget[order.side]
        qty = leaves if available is None else min(leaves, available)
        if order.tif == FOK and qty < leaves:
            return  # all or nothing: the caller cancels it
        if qty <= 0:
            return
        if available is not None:
            market.budget[order.side] = available - qty
        order.cum_qty += qty
        order.cost += qty * price
        filled = order.cum_qty == order.qty
        order.status = E.ORDER_STATUS_FILLED if filled else E.ORDER_STATUS_PARTIALLY_FILLED
        reports.append(
            self._report(
                order,
                E.EXEC_TYPE_FILL if filled else E.EXEC_TYPE_PARTIAL_FILL,
                fill_qty=qty,
                fill_price=price,
                fee=self.config.fee(qty, price),
            )
        )
        if filled:
            self._resting.pop(order.order_id, None)
        self._after_fill(order, qty, reports)

    def _finish(
        self,
        order: SimOrder,
        status: executions_pb2.OrderStatus,
        exec_type: executions_pb2.ExecType,
        reports: LocalReports,
        text: str,
    ) -> None:
        order.status = status
        self._resting.pop(order.order_id, None)
        reports.append(self._report(order, exec_type, text=text))
        if order.order_class in (BRACKET, OTO) and order.cum_qty and not order.legs_placed:
            self._place_exits(order, reports)  # canceled or expired after fills: protect what it bought

    def _report(
        self,
        order: SimOrder,
        exec_type: executions_pb2.ExecType,
        *,
        fill_qty: Decimal | None = None,
        fill_price: Decimal | None = None,
        fee: Decimal | None = None,
        text: str = "",
    ) -> Report:
        now = self._clock()
        order.reports += 1
        if order.status not in OPEN_STATUSES and self._retain_final is not None:
            self._retire(order)
        execution_id = self._new_execution_id() if self._new_execution_id else f"{order.order_id}-{order.reports}"
        return Report(
            execution_id=execution_id,
            order_id=order.order_id,
            client_order_id=order.client_order_id,
            venue_order_id=order.venue_order_id,
            strategy_id=order.strategy_id,
            member_id=order.member_id,
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
            fill_qty=fmt(fill_qty),
            fill_price=fmt(fill_price),
            cum_qty=fmt(order.cum_qty),
            avg_price=fmt(order.avg_price),
            leaves_qty=fmt(order.leaves_qty),
            fee=fmt(fee),
            venue=self.venue,
            text=text,
            event_ns=now,
            report_ns=now,
            trail_price=fmt(order.trail_price),
            trail_percent=fmt(order.trail_percent),
            hwm=fmt(order.hwm),
            replaces=order.replaces,
            parent_order_id=order.parent_order_id,
            order_class=order.order_class,
            take_profit_limit_price=fmt(order.take_profit),
            stop_loss_stop_price=fmt(order.stop_loss),
            stop_loss_limit_price=fmt(order.stop_loss_limit),
        )

    def _retire(self, order: SimOrder) -> None:
        """``order`` is final: with ``retain_final``, forget the oldest final orders beyond it."""
        if self._retain_final is None:
            return
        self._final_ids.append(order.order_id)
        while len(self._final_ids) > self._retain_final:
            old = self._orders.pop(self._final_ids.popleft(), None)
            if old is not None:
                self._by_client_id.pop((old.strategy_id, old.client_order_id), None)
                self._forgotten.add(old.order_id)

    def _cancel_rejected_unknown(self, routed: orders_pb2.RoutedOrder, text: str = "") -> Report:
        now = self._clock()
        return Report(
            execution_id=(self._new_execution_id or _new_execution_id)(),
            order_id=routed.order_id,
            client_order_id=routed.cancel.client_order_id,
            strategy_id=routed.strategy_id,
            member_id=routed.member_id,
            exec_type=E.EXEC_TYPE_CANCEL_REJECTED,
            status=E.ORDER_STATUS_UNSPECIFIED,
            venue=self.venue,
            text=text or f"unknown order {routed.order_id}",
            event_ns=now,
            report_ns=now,
        )


# --- validation at the venue's door -----------------------------------------------------------------


def _check_envelope(routed: orders_pb2.RoutedOrder) -> None:
    if not routed.order_id:
        raise DeskError("MALFORMED", "routed order has no order_id")
    if not routed.strategy_id:
        raise DeskError("MALFORMED", "routed order has no strategy_id")
    if routed.WhichOneof("action") is None:
        raise DeskError("MALFORMED", "routed order carries neither new_order nor cancel")


def _fill_in_fields(order: SimOrder, request: orders_pb2.OrderRequest) -> None:
    """Check the order's fields (the router validated them; the venue does not trust that)."""
    if not order.symbol:
        raise DeskError("INVALID_FIELD", "symbol is required")
    if order.side not in SIDE_WORDS:
        raise DeskError("INVALID_FIELD", "side must be BUY or SELL")
    if order.type not in REQUIRED_PRICES:
        raise DeskError("INVALID_FIELD", "type must be MARKET, LIMIT, STOP, STOP_LIMIT or TRAILING_STOP")
    if order.tif not in TIME_IN_FORCE_WORDS:
        raise DeskError("INVALID_FIELD", "time_in_force must be DAY, GTC, IOC or FOK")
    order.qty = parse_decimal("qty", request.qty, required=False)
    order.notional = parse_decimal("notional", request.notional, required=False)
    if (order.qty is None) == (order.notional is None):
        raise DeskError("INVALID_FIELD", "exactly one of qty and notional is required")
    if order.qty is not None and floor_qty(order.qty) != order.qty:
        raise DeskError("INVALID_FIELD", f"qty {request.qty} has more than 9 decimals")
    if order.notional is not None and order.type != MARKET:
        raise DeskError("INVALID_FIELD", "notional is allowed on market orders only")
    oco = request.order_class == OCO
    needs_limit = needs_limit_price(order.type)
    needs_stop = needs_stop_price(order.type)
    order.limit_price = parse_decimal("limit_price", request.limit_price, required=needs_limit and not oco)
    order.stop_price = parse_decimal("stop_price", request.stop_price, required=needs_stop)
    if order.limit_price is not None and not needs_limit:
        raise DeskError("INVALID_FIELD", "limit_price is allowed on LIMIT and STOP_LIMIT orders only")
    if order.stop_price is not None and not needs_stop:
        raise DeskError("INVALID_FIELD", "stop_price is allowed on STOP and STOP_LIMIT orders only")
    order.trail_price = parse_decimal("trail_price", request.trail_price, required=False)
    order.trail_percent = parse_decimal("trail_percent", request.trail_percent, required=False)
    trails = (order.trail_price is not None) + (order.trail_percent is not None)
    if order.type == TRAILING_STOP and trails != 1:
        raise DeskError("INVALID_FIELD", "TRAILING_STOP orders need exactly one of trail_price and trail_percent")
    if order.type != TRAILING_STOP and trails:
        raise DeskError("INVALID_FIELD", "trail_price and trail_percent are allowed on TRAILING_STOP orders only")
    if order.trail_percent is not None and order.trail_percent >= 100:
        raise DeskError("INVALID_FIELD", "trail_percent must be below 100")
    _fill_in_class(order, request)


def _fill_in_class(order: SimOrder, request: orders_pb2.OrderRequest) -> None:
    """A bracket / OTO / OCO order's exits (Alpaca's rules; desk.core.orders checks them in full)."""
    order.order_class = request.order_class
    order.take_profit = parse_decimal("take_profit_limit_price", request.take_profit_limit_price, required=False)
    order.stop_loss = parse_decimal("stop_loss_stop_price", request.stop_loss_stop_price, required=False)
    order.stop_loss_limit = parse_decimal("stop_loss_limit_price", request.stop_loss_limit_price, required=False)
    exits = (order.take_profit is not None) + (order.stop_loss is not None)
    if order.order_class == orders_pb2.ORDER_CLASS_UNSPECIFIED:
        if exits or order.stop_loss_limit is not None:
            raise DeskError("INVALID_FIELD", "take_profit and stop_loss need order_class BRACKET, OCO or OTO")
        return
    if order.order_class not in (BRACKET, OCO, OTO):
        raise DeskError("INVALID_FIELD", "order_class must be BRACKET, OCO or OTO")
    if order.qty is None:
        raise DeskError("INVALID_FIELD", "bracket, OCO and OTO orders need qty")
    if order.stop_loss_limit is not None and order.stop_loss is None:
        raise DeskError("INVALID_FIELD", "stop_loss_limit_price needs stop_loss_stop_price")
    if order.order_class == OTO and exits != 1:
        raise DeskError("INVALID_FIELD", "OTO orders need exactly one of take_profit and stop_loss")
    if order.order_class != OTO and exits != 2:
        raise DeskError("INVALID_FIELD", "bracket and OCO orders need take_profit and stop_loss")
    if order.order_class == OCO:
        if order.type != LIMIT:
            raise DeskError("INVALID_FIELD", "OCO orders must be LIMIT orders")
        if order.limit_price is not None and order.limit_price != order.take_profit:
            raise DeskError("INVALID_FIELD", "an OCO order's limit_price must equal its take_profit_limit_price")
        order.limit_price = order.take_profit
    elif order.type not in (MARKET, LIMIT):
        raise DeskError("INVALID_FIELD", "bracket and OTO entries must be MARKET or LIMIT orders")
    if len(order.client_order_id) > 64 - len(TAKE_PROFIT_SUFFIX):
        raise DeskError("INVALID_FIELD", "client_order_id too long for an order with legs")


def _trail(order: SimOrder, touch: _Touch) -> Decimal | None:
    """A trailing stop against ``touch``: the price it triggers at (its stop, or the open when the
    market gapped through it), or ``None``, having ratcheted its stop with the best price ``touch``
    shows. The stop is checked before it ratchets: an update's high (for a sell) never raises the
    stop that the same update's low then hits, since the order of the two within a bar is unknown."""
    sell = order.side == SELL
    if order.hwm is None:
        order.hwm = touch.open
        order.stop_price = _trail_stop(order)
    stop = order.stop_price
    assert stop is not None
    if sell and touch.low <= stop:
        order.triggered = True
        return min(stop, touch.open)
    if not sell and touch.high >= stop:
        order.triggered = True
        return max(stop, touch.open)
    best = max(order.hwm, touch.high) if sell else min(order.hwm, touch.low)
    if best != order.hwm:
        order.hwm = best
        order.stop_price = _trail_stop(order)
    return None


def _trail_stop(order: SimOrder) -> Decimal:
    """The stop of a trailing stop: its best price less the trail (a sell), plus the trail (a buy)."""
    hwm = order.hwm
    assert hwm is not None
    if order.trail_price is not None:
        return hwm - order.trail_price if order.side == SELL else hwm + order.trail_price
    assert order.trail_percent is not None
    offset = hwm * order.trail_percent / 100
    return hwm - offset if order.side == SELL else hwm + offset


def _order_from_report(report: executions_pb2.ExecutionReport) -> SimOrder:
    """An order as its first stored report (NEW or REJECTED) describes it; no fills yet.

    A REJECTED order keeps only its ids (its numbers may be what was wrong with it).
    """
    if report.exec_type == E.EXEC_TYPE_REJECTED:
        return SimOrder(
            order_id=report.order_id,
            venue_order_id=report.venue_order_id,
            strategy_id=report.strategy_id,
            member_id=report.member_id,
            client_order_id=report.client_order_id,
            symbol=report.symbol,
            side=report.side,
            type=report.type,
            tif=report.time_in_force,
            qty=None,
            notional=None,
            limit_price=None,
            stop_price=None,
            submitted_ns=report.event_ns,
            status=E.ORDER_STATUS_REJECTED,
        )
    return SimOrder(
        order_id=report.order_id,
        venue_order_id=report.venue_order_id,
        strategy_id=report.strategy_id,
        member_id=report.member_id,
        client_order_id=report.client_order_id,
        symbol=report.symbol,
        side=report.side,
        type=report.type,
        tif=report.time_in_force,
        qty=parse_decimal("order_qty", report.order_qty, required=False),
        notional=parse_decimal("notional", report.notional, required=False),
        limit_price=parse_decimal("limit_price", report.limit_price, required=False),
        stop_price=parse_decimal("stop_price", report.stop_price, required=False),
        submitted_ns=report.event_ns,
        status=report.status,
        trail_price=parse_decimal("trail_price", report.trail_price, required=False),
        trail_percent=parse_decimal("trail_percent", report.trail_percent, required=False),
        hwm=parse_decimal("hwm", report.hwm, required=False),
        replaces=report.replaces,
        parent_order_id=report.parent_order_id,
        order_class=report.order_class,
        take_profit=parse_decimal("take_profit_limit_price", report.take_profit_limit_price, required=False),
        stop_loss=parse_decimal("stop_loss_stop_price", report.stop_loss_stop_price, required=False),
        stop_loss_limit=parse_decimal("stop_loss_limit_price", report.stop_loss_limit_price, required=False),
    )


def _price(field_name: str, value: str) -> Decimal:
    price = parse_decimal(field_name, value)
    assert price is not None  # required=True
    return price


def _symbol(symbol: str) -> str:
    if not symbol:
        raise DeskError("INVALID_FIELD", "market data update has no symbol")
    return symbol


def _tif_name(tif: int) -> str:
    return str(common_pb2.TimeInForce.Name(tif)).removeprefix("TIME_IN_FORCE_")
