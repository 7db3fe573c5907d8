"""Orders: the words for the wire's enums, the order rules, and validation. Pure, no I/O.

One table per enum, word <-> value (``"stop_limit"`` <-> ``ORDER_TYPE_STOP_LIMIT``), and one table of
the price fields each order type requires: the router, the venues, the SDK and ``desk_client`` read
the same ones.

Every refusal is a :class:`DeskError` whose ``code`` is the name of a ``RejectReason`` without its
prefix (``"INVALID_FIELD"``) and whose ``status`` is the micro error code sent with it:

====================================================  ======
reasons                                               status
====================================================  ======
MALFORMED, INVALID_FIELD, WRONG_SUBJECT               400  bad input
UNKNOWN_SYMBOL, UNKNOWN_STRATEGY, UNKNOWN_ORDER       404  unknown
HALTED, ORDER_CLOSED                                  409  conflict with the desk's state
PAYLOAD_TOO_LARGE                                     413
RATE_LIMIT                                            429
INSUFFICIENT_BUYING_POWER, SHORT_NOT_ALLOWED,         403  refused by pre-trade risk
MAX_ORDER_NOTIONAL, MAX_POSITION_NOTIONAL
NO_MARKET_PRICE, VENUE_UNAVAILABLE, INTERNAL          503  the desk cannot value or route it now
====================================================  ======
"""

from __future__ import annotations

import re
from collections.abc import Container
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol, cast

from desk.bus import subjects
from desk.bus.decimals import fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, orders_pb2

# --- the words for the wire's enums -------------------------------------------------------------------

#: What members write (the SDK, ``desk_client``, Alpaca's API) -> the wire's values.
SIDES: dict[str, common_pb2.Side] = {"buy": common_pb2.SIDE_BUY, "sell": common_pb2.SIDE_SELL}
ORDER_TYPES: dict[str, common_pb2.OrderType] = {
    "market": common_pb2.ORDER_TYPE_MARKET,
    "limit": common_pb2.ORDER_TYPE_LIMIT,
    "stop": common_pb2.ORDER_TYPE_STOP,
    "stop_limit": common_pb2.ORDER_TYPE_STOP_LIMIT,
    "trailing_stop": common_pb2.ORDER_TYPE_TRAILING_STOP,
}
TIMES_IN_FORCE: dict[str, common_pb2.TimeInForce] = {
    "day": common_pb2.TIME_IN_FORCE_DAY,
    "gtc": common_pb2.TIME_IN_FORCE_GTC,
    "ioc": common_pb2.TIME_IN_FORCE_IOC,
    "fok": common_pb2.TIME_IN_FORCE_FOK,
}
#: Order classes (Alpaca's ``order_class``): ``"simple"`` is the wire's UNSPECIFIED.
ORDER_CLASSES: dict[str, orders_pb2.OrderClass] = {
    "simple": orders_pb2.ORDER_CLASS_UNSPECIFIED,
    "bracket": orders_pb2.ORDER_CLASS_BRACKET,
    "oco": orders_pb2.ORDER_CLASS_OCO,
    "oto": orders_pb2.ORDER_CLASS_OTO,
}
#: The wire's values -> the words; a value missing here is not a valid side, type or time in force.
SIDE_WORDS: dict[int, str] = {v: k for k, v in SIDES.items()}
ORDER_TYPE_WORDS: dict[int, str] = {v: k for k, v in ORDER_TYPES.items()}
TIME_IN_FORCE_WORDS: dict[int, str] = {v: k for k, v in TIMES_IN_FORCE.items()}
ORDER_CLASS_WORDS: dict[int, str] = {v: k for k, v in ORDER_CLASSES.items()}


def side_name(side: int) -> str:
    """``SIDE_BUY`` -> ``"buy"``; ``""`` when unspecified."""
    return SIDE_WORDS.get(side, "")


STATUS_WORDS: dict[int, str] = {
    v.number: v.name.removeprefix("ORDER_STATUS_").lower() for v in executions_pb2.OrderStatus.DESCRIPTOR.values
}
EXEC_TYPE_WORDS: dict[int, str] = {
    v.number: v.name.removeprefix("EXEC_TYPE_").lower() for v in executions_pb2.ExecType.DESCRIPTOR.values
}


def status_name(status: int) -> str:
    """``ORDER_STATUS_PARTIALLY_FILLED`` -> ``"partially_filled"``; raises ValueError on an unknown value
    (as the enum's ``Name`` does)."""
    try:
        return STATUS_WORDS[status]
    except KeyError:
        raise ValueError(f"unknown order status {status}") from None


def exec_type_name(exec_type: int) -> str:
    """``EXEC_TYPE_PARTIAL_FILL`` -> ``"partial_fill"``; raises ValueError on an unknown value."""
    try:
        return EXEC_TYPE_WORDS[exec_type]
    except KeyError:
        raise ValueError(f"unknown exec type {exec_type}") from None


# --- the order rules ----------------------------------------------------------------------------------

#: The price fields each order type requires; the other price fields are not allowed on it.
REQUIRED_PRICES: dict[int, frozenset[str]] = {
    common_pb2.ORDER_TYPE_MARKET: frozenset(),
    common_pb2.ORDER_TYPE_LIMIT: frozenset({"limit_price"}),
    common_pb2.ORDER_TYPE_STOP: frozenset({"stop_price"}),
    common_pb2.ORDER_TYPE_STOP_LIMIT: frozenset({"limit_price", "stop_price"}),
    common_pb2.ORDER_TYPE_TRAILING_STOP: frozenset(),  # and exactly one of trail_price, trail_percent
}

#: Suffixes of the client order ids of an order's exit legs (bracket, OCO, OTO): the take-profit leg
#: of order ``c1`` is ``c1-tp``, its stop-loss ``c1-sl``; so an order with legs has at most 61 characters.
TAKE_PROFIT_SUFFIX = "-tp"
STOP_LOSS_SUFFIX = "-sl"
LEG_ID_MAX = 64 - len(TAKE_PROFIT_SUFFIX)


def needs_limit_price(order_type: int) -> bool:
    """LIMIT and STOP_LIMIT orders need a limit price; the others take none."""
    return "limit_price" in REQUIRED_PRICES.get(order_type, frozenset())


def needs_stop_price(order_type: int) -> bool:
    """STOP and STOP_LIMIT orders need a stop price; the others take none."""
    return "stop_price" in REQUIRED_PRICES.get(order_type, frozenset())


#: Statuses after which an order can no longer fill.
FINAL_STATUSES = frozenset(
    {
        executions_pb2.ORDER_STATUS_FILLED,
        executions_pb2.ORDER_STATUS_CANCELED,
        executions_pb2.ORDER_STATUS_EXPIRED,
        executions_pb2.ORDER_STATUS_REJECTED,
    }
)

Reports = list[executions_pb2.ExecutionReport]
"""The execution reports one call to a venue caused, in order."""


@dataclass(slots=True)
class Report:
    """An execution report as plain attributes: the fields of ``ExecutionReport`` with the values the
    message would hold (numbers as the wire's strings, enums as their values, ``""``/``0`` when unset).

    The sim engine makes its reports as these; :meth:`to_proto` is the message the gateway publishes.
    In-process code that never crosses the wire (the SDK's backtester: the router's account, the
    strategy's books) reads them directly, exactly as it would read the message: reading a protobuf
    field from Python costs far more than reading an attribute."""

    execution_id: str = ""
    order_id: str = ""
    client_order_id: str = ""
    venue_order_id: str = ""
    strategy_id: str = ""
    member_id: str = ""
    exec_type: executions_pb2.ExecType = executions_pb2.EXEC_TYPE_UNSPECIFIED
    status: executions_pb2.OrderStatus = executions_pb2.ORDER_STATUS_UNSPECIFIED
    symbol: str = ""
    side: common_pb2.Side = common_pb2.SIDE_UNSPECIFIED
    type: common_pb2.OrderType = common_pb2.ORDER_TYPE_UNSPECIFIED
    time_in_force: common_pb2.TimeInForce = common_pb2.TIME_IN_FORCE_UNSPECIFIED
    order_qty: str = ""
    limit_price: str = ""
    stop_price: str = ""
    fill_qty: str = ""
    fill_price: str = ""
    cum_qty: str = ""
    avg_price: str = ""
    leaves_qty: str = ""
    fee: str = ""
    venue: str = ""
    text: str = ""
    event_ns: int = 0
    report_ns: int = 0
    notional: str = ""
    trail_price: str = ""
    trail_percent: str = ""
    hwm: str = ""
    replaces: str = ""
    parent_order_id: str = ""
    order_class: orders_pb2.OrderClass = orders_pb2.ORDER_CLASS_UNSPECIFIED
    take_profit_limit_price: str = ""
    stop_loss_stop_price: str = ""
    stop_loss_limit_price: str = ""

    def to_proto(self) -> executions_pb2.ExecutionReport:
        """The ``ExecutionReport`` with these fields."""
        return executions_pb2.ExecutionReport(
            execution_id=self.execution_id,
            order_id=self.order_id,
            client_order_id=self.client_order_id,
            venue_order_id=self.venue_order_id,
            strategy_id=self.strategy_id,
            member_id=self.member_id,
            exec_type=self.exec_type,
            status=self.status,
            symbol=self.symbol,
            side=self.side,
            type=self.type,
            time_in_force=self.time_in_force,
            order_qty=self.order_qty,
            limit_price=self.limit_price,
            stop_price=self.stop_price,
            fill_qty=self.fill_qty,
            fill_price=self.fill_price,
            cum_qty=self.cum_qty,
            avg_price=self.avg_price,
            leaves_qty=self.leaves_qty,
            fee=self.fee,
            venue=self.venue,
            text=self.text,
            event_ns=self.event_ns,
            report_ns=self.report_ns,
            notional=self.notional,
            trail_price=self.trail_price,
            trail_percent=self.trail_percent,
            hwm=self.hwm,
            replaces=self.replaces,
            parent_order_id=self.parent_order_id,
            order_class=self.order_class,
            take_profit_limit_price=self.take_profit_limit_price,
            stop_loss_stop_price=self.stop_loss_stop_price,
            stop_loss_limit_price=self.stop_loss_limit_price,
        )


LocalReports = list[Report]
"""A venue's reports as :class:`Report` objects (the in-process form of :data:`Reports`)."""

AnyReport = executions_pb2.ExecutionReport | Report
"""What the books read: the message from the wire or the in-process :class:`Report` (the same fields)."""


def to_protos(reports: LocalReports) -> Reports:
    return [report.to_proto() for report in reports]


class OrderFields(Protocol):
    """What an order record of any venue holds (the sim engine's SimOrder, the Alpaca book's DeskOrder)."""

    order_id: str
    client_order_id: str
    strategy_id: str
    member_id: str
    symbol: str
    side: common_pb2.Side
    type: common_pb2.OrderType
    tif: common_pb2.TimeInForce
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    status: executions_pb2.OrderStatus
    cum_qty: Decimal

    @property
    def avg_price(self) -> Decimal | None: ...


def order_record(order: OrderFields, venue: str, created_ns: int) -> ledger_pb2.OrderRecord:
    """The ``OrderRecord`` a venue answers its book query with (the same fields for every venue)."""
    return ledger_pb2.OrderRecord(
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        strategy_id=order.strategy_id,
        member_id=order.member_id,
        symbol=order.symbol,
        side=order.side,
        type=order.type,
        time_in_force=order.tif,
        qty=fmt(order.qty),
        notional=fmt(order.notional),
        limit_price=fmt(order.limit_price),
        stop_price=fmt(order.stop_price),
        status=order.status,
        filled_qty=fmt(order.cum_qty),
        avg_price=fmt(order.avg_price),
        venue=venue,
        created_ns=created_ns,
    )


class OrderProgress:
    """What every venue's order record derives the same way from ``status``, ``qty``, ``cum_qty``
    and ``cost`` (the sum of fill qty x price): finality, leaves and the average price."""

    __slots__ = ()  # lets a subclass use slots (the sim keeps one record per order it ever saw)

    status: int
    qty: Decimal | None
    cum_qty: Decimal
    cost: Decimal

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def leaves_qty(self) -> Decimal | None:
        if self.is_final:
            return Decimal(0)
        return None if self.qty is None else self.qty - self.cum_qty

    @property
    def avg_price(self) -> Decimal | None:
        return self.cost / self.cum_qty if self.cum_qty else None


# --- validation -----------------------------------------------------------------------------------------

#: Micro error status per reason (see the module docstring).
STATUS: dict[str, int] = {
    "MALFORMED": 400,
    "INVALID_FIELD": 400,
    "WRONG_SUBJECT": 400,
    "UNKNOWN_SYMBOL": 404,
    "UNKNOWN_STRATEGY": 404,
    "UNKNOWN_ORDER": 404,
    "HALTED": 409,
    "ORDER_CLOSED": 409,
    "PAYLOAD_TOO_LARGE": 413,
    "RATE_LIMIT": 429,
    "INSUFFICIENT_BUYING_POWER": 403,
    "SHORT_NOT_ALLOWED": 403,
    "MAX_ORDER_NOTIONAL": 403,
    "MAX_POSITION_NOTIONAL": 403,
    "NO_MARKET_PRICE": 503,
    "VENUE_UNAVAILABLE": 503,
    "INTERNAL": 503,
}

#: DeskError codes from the bus layer that are not reasons of their own.
_CODE_ALIASES = {"WRONG_TYPE": "MALFORMED"}

# Decimal places accepted on the wire: fractional shares go to 9 places (Alpaca's limit), prices to
# 6 (sub-penny quotes for cheap stocks), notional amounts are money in cents.
QTY_PLACES = 9
PRICE_PLACES = 6
NOTIONAL_PLACES = 2

# What the SDK sends (desk.bus.decimals.fmt) and what a venue understands: ASCII digits, an optional
# sign, point and exponent. Python's Decimal also takes whitespace, "_" and non-ASCII digits ("\u0661\u0660");
# those would be routed verbatim, so they are refused here.
_PLAIN_DECIMAL = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)


def refusal(code: str, message: str) -> DeskError:
    """A DeskError for reason ``code`` with the status of :data:`STATUS`."""
    return DeskError(code, message, status=STATUS.get(code, 400))


def reject_reason(code: str) -> orders_pb2.RejectReason:
    """The ``RejectReason`` for a DeskError code; INTERNAL for codes the wire has no reason for."""
    name = "REJECT_REASON_" + _CODE_ALIASES.get(code, code)
    if name not in orders_pb2.RejectReason.DESCRIPTOR.values_by_name:
        return orders_pb2.REJECT_REASON_INTERNAL
    # the generated stubs type Value() as int; it is one of RejectReason's values by construction
    return cast(orders_pb2.RejectReason, orders_pb2.RejectReason.Value(name))


@dataclass(frozen=True)
class ValidOrder:
    """An ``OrderRequest`` that passed field validation, with its numbers parsed."""

    strategy_id: str
    client_order_id: str
    symbol: str
    side: common_pb2.Side
    type: common_pb2.OrderType
    time_in_force: common_pb2.TimeInForce
    qty: Decimal | None
    notional: Decimal | None
    limit_price: Decimal | None
    stop_price: Decimal | None
    extended_hours: bool
    trail_price: Decimal | None = None
    trail_percent: Decimal | None = None
    replaces: str = ""  # the client order id of the open order this one replaces
    order_class: orders_pb2.OrderClass = orders_pb2.ORDER_CLASS_UNSPECIFIED
    take_profit: Decimal | None = None  # the take-profit exit's limit price
    stop_loss: Decimal | None = None  # the stop-loss exit's stop price
    stop_loss_limit: Decimal | None = None  # ... and its limit (a stop-limit exit)

    @property
    def order_id(self) -> str:
        return order_id_for(self.strategy_id, self.client_order_id)

    @property
    def is_buy(self) -> bool:
        return bool(self.side == common_pb2.SIDE_BUY)


def _places(value: Decimal) -> int:
    """Decimal places of ``value`` without trailing zeros; exact (``normalize()`` would round in the
    context and turn 1e-999999999 into 0, with no places at all)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)  # finite numbers only reach here
    if exponent >= 0:  # an integer as written ("10", "1E+3"): no places, whatever its trailing zeros
        return 0
    trailing = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing))


def _number(field: str, text: str, places: int, *, required: bool = False) -> Decimal | None:
    try:
        value = parse_decimal(field, text, required=required)
    except ArithmeticError:  # decimal.Overflow from parse_decimal's abs() on exponents near Emax
        raise refusal("INVALID_FIELD", f"{field} {text[:64]!r} is out of range") from None
    if value is not None and not _PLAIN_DECIMAL.fullmatch(text):
        raise refusal("INVALID_FIELD", f"{field} {text[:64]!r} must be a plain decimal number like 12.5")
    if value is not None and _places(value) > places:
        raise refusal("INVALID_FIELD", f"{field} {text} has more than {places} decimal places")
    return value


def check_subject(strategy_id: str, subject: str) -> None:
    """The message's strategy_id must be the subject's last token, and a valid id."""
    subject_id = subjects.token(subject, -1)
    if strategy_id != subject_id:
        raise refusal(
            "WRONG_SUBJECT", f"strategy_id {strategy_id!r} does not match the subject's strategy {subject_id!r}"
        )
    if not subjects.STRATEGY_ID_RE.match(strategy_id):
        raise refusal("INVALID_FIELD", f"strategy_id {strategy_id!r} is not a valid strategy id")


def check_client_order_id(client_order_id: str) -> None:
    if not client_order_id:
        raise refusal("INVALID_FIELD", "client_order_id is required (the SDK fills one in; send a unique id per order)")
    if not subjects.CLIENT_ORDER_ID_RE.match(client_order_id):
        raise refusal("INVALID_FIELD", f"client_order_id {client_order_id!r} must match [A-Za-z0-9_-]{{1,64}}")


def validate_order(request: orders_pb2.OrderRequest, subject: str) -> ValidOrder:
    """Check every field of ``request`` received on ``subject``; the first problem is raised."""
    check_subject(request.strategy_id, subject)
    check_client_order_id(request.client_order_id)
    if not subjects.SYMBOL_RE.match(request.symbol):
        raise refusal("INVALID_FIELD", f"symbol {request.symbol!r} must match [A-Z][A-Z0-9.]{{0,15}}")
    if request.side not in SIDE_WORDS:
        raise refusal("INVALID_FIELD", "side must be BUY or SELL")
    if request.type not in REQUIRED_PRICES:
        raise refusal("INVALID_FIELD", "type must be MARKET, LIMIT, STOP, STOP_LIMIT or TRAILING_STOP")
    if request.time_in_force not in TIME_IN_FORCE_WORDS:
        raise refusal("INVALID_FIELD", "time_in_force must be DAY, GTC, IOC or FOK")

    if bool(request.qty) == bool(request.notional):
        raise refusal("INVALID_FIELD", "exactly one of qty and notional must be set")
    qty = _number("qty", request.qty, QTY_PLACES)
    notional = _number("notional", request.notional, NOTIONAL_PLACES)
    if notional is not None and (
        request.type != common_pb2.ORDER_TYPE_MARKET or request.time_in_force != common_pb2.TIME_IN_FORCE_DAY
    ):
        raise refusal("INVALID_FIELD", "notional orders must be MARKET orders with time_in_force DAY")

    limit_price, stop_price = _check_prices(request)
    trail_price, trail_percent = _check_trail(request)
    if request.extended_hours and (
        request.type != common_pb2.ORDER_TYPE_LIMIT or request.time_in_force != common_pb2.TIME_IN_FORCE_DAY
    ):
        raise refusal("INVALID_FIELD", "extended_hours orders must be LIMIT orders with time_in_force DAY")
    take_profit, stop_loss, stop_loss_limit = _check_class(request, qty, limit_price)
    if request.order_class == orders_pb2.ORDER_CLASS_OCO:
        limit_price = take_profit  # an OCO order is its own take-profit leg
    _check_replace(request)

    return ValidOrder(
        strategy_id=request.strategy_id,
        client_order_id=request.client_order_id,
        symbol=request.symbol,
        side=request.side,
        type=request.type,
        time_in_force=request.time_in_force,
        qty=qty,
        notional=notional,
        limit_price=limit_price,
        stop_price=stop_price,
        extended_hours=request.extended_hours,
        trail_price=trail_price,
        trail_percent=trail_percent,
        replaces=request.replaces,
        order_class=request.order_class,
        take_profit=take_profit,
        stop_loss=stop_loss,
        stop_loss_limit=stop_loss_limit,
    )


def _check_prices(request: orders_pb2.OrderRequest) -> tuple[Decimal | None, Decimal | None]:
    """The limit and stop prices the order type requires (and none it does not take)."""
    type_name = common_pb2.OrderType.Name(request.type).removeprefix("ORDER_TYPE_")
    needs_limit, needs_stop = needs_limit_price(request.type), needs_stop_price(request.type)
    oco = request.order_class == orders_pb2.ORDER_CLASS_OCO  # its limit is take_profit_limit_price
    if needs_limit and not request.limit_price and not oco:
        raise refusal("INVALID_FIELD", f"limit_price is required for {type_name} orders")
    if not needs_limit and request.limit_price:
        raise refusal("INVALID_FIELD", f"limit_price is not allowed on {type_name} orders")
    if needs_stop and not request.stop_price:
        raise refusal("INVALID_FIELD", f"stop_price is required for {type_name} orders")
    if not needs_stop and request.stop_price:
        raise refusal("INVALID_FIELD", f"stop_price is not allowed on {type_name} orders")
    return _number("limit_price", request.limit_price, PRICE_PLACES), _number(
        "stop_price", request.stop_price, PRICE_PLACES
    )


def _check_trail(request: orders_pb2.OrderRequest) -> tuple[Decimal | None, Decimal | None]:
    """A TRAILING_STOP order's trail: exactly one of trail_price and trail_percent (Alpaca's rule),
    time in force DAY or GTC; no other type takes one."""
    if request.type != common_pb2.ORDER_TYPE_TRAILING_STOP:
        if request.trail_price or request.trail_percent:
            raise refusal("INVALID_FIELD", "trail_price and trail_percent are allowed on TRAILING_STOP orders only")
        return None, None
    if bool(request.trail_price) == bool(request.trail_percent):
        raise refusal("INVALID_FIELD", "TRAILING_STOP orders need exactly one of trail_price and trail_percent")
    if request.time_in_force not in (common_pb2.TIME_IN_FORCE_DAY, common_pb2.TIME_IN_FORCE_GTC):
        raise refusal("INVALID_FIELD", "TRAILING_STOP orders must have time_in_force DAY or GTC")
    trail_price = _number("trail_price", request.trail_price, PRICE_PLACES)
    trail_percent = _number("trail_percent", request.trail_percent, PRICE_PLACES)
    if trail_percent is not None and trail_percent >= 100:
        raise refusal("INVALID_FIELD", f"trail_percent {request.trail_percent} must be below 100")
    return trail_price, trail_percent


_SIMPLE_TYPES = (common_pb2.ORDER_TYPE_MARKET, common_pb2.ORDER_TYPE_LIMIT)


def _check_class(
    request: orders_pb2.OrderRequest, qty: Decimal | None, limit_price: Decimal | None
) -> tuple[Decimal | None, Decimal | None, Decimal | None]:
    """The exit legs of a BRACKET, OCO or OTO order (take-profit limit, stop-loss stop and limit),
    checked the way Alpaca checks them; a simple order takes none."""
    klass = request.order_class
    take_profit = _number("take_profit_limit_price", request.take_profit_limit_price, PRICE_PLACES)
    stop_loss = _number("stop_loss_stop_price", request.stop_loss_stop_price, PRICE_PLACES)
    stop_loss_limit = _number("stop_loss_limit_price", request.stop_loss_limit_price, PRICE_PLACES)
    if klass == orders_pb2.ORDER_CLASS_UNSPECIFIED:
        if take_profit is not None or stop_loss is not None or stop_loss_limit is not None:
            raise refusal("INVALID_FIELD", "take_profit and stop_loss prices need order_class BRACKET, OCO or OTO")
        return None, None, None
    name = ORDER_CLASS_WORDS.get(klass, "").upper()
    if not name:
        raise refusal("INVALID_FIELD", "order_class must be SIMPLE (unspecified), BRACKET, OCO or OTO")
    if stop_loss_limit is not None and stop_loss is None:
        raise refusal("INVALID_FIELD", "stop_loss_limit_price needs stop_loss_stop_price")
    if qty is None:
        raise refusal("INVALID_FIELD", f"{name} orders need qty (not notional)")
    if request.time_in_force not in (common_pb2.TIME_IN_FORCE_DAY, common_pb2.TIME_IN_FORCE_GTC):
        raise refusal("INVALID_FIELD", f"{name} orders must have time_in_force DAY or GTC")
    if request.extended_hours:
        raise refusal("INVALID_FIELD", f"{name} orders cannot be extended_hours")
    if len(request.client_order_id) > LEG_ID_MAX:
        raise refusal(
            "INVALID_FIELD",
            f"client_order_id of a {name} order has at most {LEG_ID_MAX} characters (its legs add -tp / -sl)",
        )
    if klass == orders_pb2.ORDER_CLASS_OTO:
        if (take_profit is None) == (stop_loss is None):
            raise refusal("INVALID_FIELD", "OTO orders need exactly one of take_profit and stop_loss")
    elif take_profit is None or stop_loss is None:
        raise refusal("INVALID_FIELD", f"{name} orders need both take_profit_limit_price and stop_loss_stop_price")
    if klass == orders_pb2.ORDER_CLASS_OCO:
        if request.type != common_pb2.ORDER_TYPE_LIMIT:
            raise refusal("INVALID_FIELD", "OCO orders must be LIMIT orders (the take-profit leg)")
        if limit_price is not None and limit_price != take_profit:
            raise refusal("INVALID_FIELD", "an OCO order's limit_price, when given, must equal take_profit_limit_price")
        exit_is_sell = request.side == common_pb2.SIDE_SELL  # an OCO order is itself the exit
    else:
        if request.type not in _SIMPLE_TYPES:
            raise refusal("INVALID_FIELD", f"{name} orders must be MARKET or LIMIT entries")
        exit_is_sell = request.side == common_pb2.SIDE_BUY  # the legs close what the entry opens
    if take_profit is not None and stop_loss is not None:
        if exit_is_sell and not take_profit > stop_loss:
            raise refusal("INVALID_FIELD", "take_profit_limit_price must be above stop_loss_stop_price (sell exits)")
        if not exit_is_sell and not take_profit < stop_loss:
            raise refusal("INVALID_FIELD", "take_profit_limit_price must be below stop_loss_stop_price (buy exits)")
    return take_profit, stop_loss, stop_loss_limit


def _check_replace(request: orders_pb2.OrderRequest) -> None:
    """A replace names another client order id of this strategy; it carries qty and no order class."""
    if not request.replaces:
        return
    if not subjects.CLIENT_ORDER_ID_RE.match(request.replaces):
        raise refusal("INVALID_FIELD", f"replaces {request.replaces[:64]!r} must match [A-Za-z0-9_-]{{1,64}}")
    if request.replaces == request.client_order_id:
        raise refusal("INVALID_FIELD", "a replacing order needs a client_order_id of its own (not the one it replaces)")
    if not request.qty:
        raise refusal("INVALID_FIELD", "a replacing order needs qty (the new total quantity)")
    if request.order_class != orders_pb2.ORDER_CLASS_UNSPECIFIED:
        raise refusal("INVALID_FIELD", "only simple orders can be replaced")


def check_known(order: ValidOrder, strategies: Container[str], symbols: Container[str]) -> None:
    """The strategy must be registered (DESK_STRATEGIES) and the symbol priced (DESK_PRICES)."""
    if order.strategy_id not in strategies:
        raise refusal("UNKNOWN_STRATEGY", f"strategy {order.strategy_id!r} is not registered with the desk")
    if order.symbol not in symbols:
        raise refusal("UNKNOWN_SYMBOL", f"symbol {order.symbol!r} has no market data on the desk")


def validate_cancel(request: orders_pb2.CancelRequest, subject: str) -> str:
    """Check a cancel; returns the order id it is about."""
    check_subject(request.strategy_id, subject)
    check_client_order_id(request.client_order_id)
    return order_id_for(request.strategy_id, request.client_order_id)


def validate_halt(request: orders_pb2.HaltRequest) -> None:
    """A halt names no strategy (the whole desk) or a valid strategy id."""
    if request.strategy_id and not subjects.STRATEGY_ID_RE.match(request.strategy_id):
        raise refusal("INVALID_FIELD", f"strategy_id {request.strategy_id!r} is not a valid strategy id")
