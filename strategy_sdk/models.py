"""What a strategy sees: market data, fills, order updates and order results, with Decimal fields.

These are plain frozen dataclasses, converted from the wire (``desk.v1`` protobuf messages) by the
runner and built by :mod:`strategy_sdk.testing` for backtests. Quantities and prices are always
:class:`~decimal.Decimal`; timestamps are int64 nanoseconds since the Unix epoch (``*_ns``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from sys import intern
from typing import Any, TypeVar

from desk.bus.decimals import dec
from desk.core.orders import AnyReport, exec_type_name, side_name, status_name
from desk.v1 import marketdata_pb2

__all__ = ["Bar", "CancelResult", "Fill", "OpenOrder", "OrderResult", "OrderUpdate", "Quote", "Trade"]


def _ns_to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1_000_000_000, tz=UTC)


@dataclass(frozen=True, slots=True)
class Bar:
    """One OHLCV bar of ``symbol`` starting at ``start_ns`` and lasting ``interval_ns``."""

    symbol: str
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal = Decimal(0)
    start_ns: int = 0
    interval_ns: int = 0
    vwap: Decimal | None = None
    trade_count: int = 0
    source: str = ""

    @property
    def timestamp(self) -> datetime:
        """The bar's start as an aware UTC datetime."""
        return _ns_to_datetime(self.start_ns)

    @classmethod
    def from_proto(cls, bar: marketdata_pb2.Bar) -> Bar:
        return cls(
            symbol=bar.symbol,
            open=dec(bar.open),
            high=dec(bar.high),
            low=dec(bar.low),
            close=dec(bar.close),
            volume=dec(bar.volume),
            start_ns=bar.start_ns,
            interval_ns=bar.interval_ns,
            vwap=Decimal(bar.vwap) if bar.vwap else None,
            trade_count=bar.trade_count,
            source=bar.source,
        )


_T = TypeVar("_T")


def _fast_new(cls: type[_T], probe: tuple[Any, ...]) -> Callable[..., _T]:
    """A constructor of ``cls`` (a frozen dataclass with slots) taking every field positionally: an object
    of a writable twin class (the same slots, in the same order, on the same base) gets the fields and then
    becomes a ``cls`` by assigning ``__class__``. A frozen dataclass's ``__init__`` sets every field through
    ``object.__setattr__`` (a bar's 11 fields: ~1.2 µs); this costs ~0.3 µs, and what comes out is an
    ordinary ``cls`` (equal, hashed, printed, copied and pickled alike). Checked on ``probe`` (one value per
    field); where the layout or the interpreter does not allow it, ``cls`` itself is returned."""
    names = tuple(f.name for f in dataclasses.fields(cls))  # type: ignore[arg-type]  # a dataclass
    if getattr(cls, "__slots__", None) != names:
        return cls
    twin = type(f"_{cls.__name__}Fields", (), {"__slots__": names})
    params = ", ".join(f"v{i}" for i in range(len(names)))
    stores = "".join(f"    o.{name} = v{i}\n" for i, name in enumerate(names))
    scope: dict[str, Any] = {"new": object.__new__, "twin": twin, "cls": cls}
    exec(f"def make({params}):\n    o = new(twin)\n{stores}    o.__class__ = cls\n    return o\n", scope)  # noqa: S102
    make: Callable[..., _T] = scope["make"]
    try:
        made = make(*probe)
    except TypeError:  # an interpreter that refuses the __class__ assignment
        return cls
    if type(made) is not cls or made != cls(*probe):
        return cls
    return make


#: ``new_bar(symbol, open, high, low, close, volume, start_ns, interval_ns, vwap, trade_count, source)``:
#: ``Bar(...)`` with every field given positionally, for code that makes millions (the bar loaders).
new_bar: Callable[[str, Decimal, Decimal, Decimal, Decimal, Decimal, int, int, Decimal | None, int, str], Bar] = (
    _fast_new(Bar, ("X", Decimal(1), Decimal(2), Decimal(0), Decimal(1), Decimal(5), 1, 2, None, 3, "s"))
)


@dataclass(frozen=True, slots=True)
class Trade:
    """A last-sale print."""

    symbol: str
    price: Decimal
    size: Decimal = Decimal(0)
    ts_ns: int = 0
    source: str = ""

    @classmethod
    def from_proto(cls, trade: marketdata_pb2.Trade) -> Trade:
        return cls(trade.symbol, dec(trade.price), dec(trade.size), trade.ts_ns, trade.source)


@dataclass(frozen=True, slots=True)
class Quote:
    """Best bid and offer."""

    symbol: str
    bid_price: Decimal
    bid_size: Decimal
    ask_price: Decimal
    ask_size: Decimal
    ts_ns: int = 0
    source: str = ""

    @classmethod
    def from_proto(cls, quote: marketdata_pb2.Quote) -> Quote:
        return cls(
            quote.symbol,
            dec(quote.bid_price),
            dec(quote.bid_size),
            dec(quote.ask_price),
            dec(quote.ask_size),
            quote.ts_ns,
            quote.source,
        )


@dataclass(frozen=True, slots=True)
class Fill:
    """One execution of one of the strategy's orders (``side`` is ``"buy"`` or ``"sell"``)."""

    execution_id: str
    order_id: str
    client_order_id: str
    symbol: str
    side: str
    qty: Decimal
    price: Decimal
    fee: Decimal
    cum_qty: Decimal
    leaves_qty: Decimal
    order_status: str
    venue: str = ""
    ts_ns: int = 0

    @classmethod
    def from_report(cls, report: AnyReport) -> Fill:
        make = _new_fill if cls is Fill else cls  # every field, in order
        return make(
            intern(report.execution_id),
            intern(report.order_id),
            intern(report.client_order_id),
            intern(report.symbol),
            side_name(report.side),
            dec(report.fill_qty),
            dec(report.fill_price),
            dec(report.fee),
            dec(report.cum_qty),
            dec(report.leaves_qty),
            status_name(report.status),
            intern(report.venue),
            report.event_ns,
        )


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """Every execution report of an order: ``exec_type`` says what happened, ``status`` where it is now.

    ``exec_type`` is one of new, partial_fill, fill, canceled, expired, rejected, cancel_rejected;
    ``status`` one of new, partially_filled, filled, canceled, expired, rejected.
    """

    order_id: str
    client_order_id: str
    symbol: str
    side: str
    exec_type: str
    status: str
    order_qty: Decimal | None
    cum_qty: Decimal
    leaves_qty: Decimal
    avg_price: Decimal | None
    text: str = ""
    ts_ns: int = 0

    @property
    def is_final(self) -> bool:
        """True once the order can no longer fill (filled, canceled, expired, rejected)."""
        return self.status in ("filled", "canceled", "expired", "rejected")

    @classmethod
    def from_report(cls, report: AnyReport) -> OrderUpdate:
        make = _new_update if cls is OrderUpdate else cls  # every field, in order
        order_qty, avg_price = report.order_qty, report.avg_price
        return make(
            intern(report.order_id),
            intern(report.client_order_id),
            intern(report.symbol),
            side_name(report.side),
            exec_type_name(report.exec_type),
            status_name(report.status),
            dec(order_qty) if order_qty else None,
            dec(report.cum_qty),
            dec(report.leaves_qty),
            dec(avg_price) if avg_price else None,
            report.text,
            report.event_ns,
        )


_new_fill: Callable[..., Fill] = _fast_new(
    Fill, ("e", "o", "c", "X", "buy", Decimal(1), Decimal(2), Decimal(0), Decimal(1), Decimal(0), "filled", "sim", 1)
)
_new_update: Callable[..., OrderUpdate] = _fast_new(
    OrderUpdate, ("o", "c", "X", "buy", "fill", "filled", Decimal(1), Decimal(1), Decimal(0), None, "", 1)
)


@dataclass(frozen=True, slots=True)
class OrderResult:
    """The desk's answer to an order: accepted (routed to the venue) or refused with a reason.

    ``reason`` is the reject reason's name without its prefix (``"INSUFFICIENT_BUYING_POWER"``),
    ``"TIMEOUT"`` when the router did not answer (after one retry with the same client order id),
    ``"UNAVAILABLE"`` when no router listens; ``""`` when accepted. ``duplicate`` is true when the
    router answered with the stored ack of an earlier identical request.
    """

    accepted: bool
    order_id: str
    client_order_id: str
    reason: str = ""
    message: str = ""
    duplicate: bool = False


@dataclass(frozen=True, slots=True)
class CancelResult:
    """The desk's answer to a cancel: accepted means forwarded; the outcome comes as an OrderUpdate."""

    accepted: bool
    order_id: str
    client_order_id: str
    reason: str = ""
    message: str = ""


@dataclass(slots=True)
class OpenOrder:
    """An order of this strategy that may still fill (``self.open_orders`` values)."""

    order_id: str
    client_order_id: str
    symbol: str
    side: str
    type: str
    time_in_force: str
    qty: Decimal | None
    notional: Decimal | None = None
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None
    filled_qty: Decimal = Decimal(0)
    status: str = "pending_new"
    created_ns: int = 0
    trail_price: Decimal | None = None  # trailing_stop: the trail (stop_price is the stop as last reported)
    trail_percent: Decimal | None = None
    parent_order_id: str = ""  # an exit of a bracket / OTO / OCO order: the order it belongs to
