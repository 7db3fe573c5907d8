"""The one interface the gateway's async shell needs from a broker.

A broker takes routed orders and market data and answers with the execution reports they caused;
the shell publishes those reports to ``EXECUTIONS`` (``Nats-Msg-Id`` = execution id) and only then
acks the routed order. The ``sim`` broker (:mod:`.sim`) computes reports synchronously from its
in-memory book. A venue that reports on its own schedule (the later ``alpaca`` broker, with its
``trade_updates`` stream) will also hand reports to a sink the shell gives it; that belongs to the
issue that adds it, and needs no change to the methods below.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Protocol, runtime_checkable

from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2
from desk.v1 import executions_pb2 as E

MarketUpdate = marketdata_pb2.Bar | marketdata_pb2.Trade | marketdata_pb2.Quote
Reports = list[executions_pb2.ExecutionReport]
PriceSource = Callable[[str], Awaitable[Decimal | None]]
"""The fair price of a symbol now (the last trade in DESK_PRICES), for crossing orders internally."""


class BrokerUnavailable(Exception):
    """The venue did not answer in time: the routed order is retried later (nak), not dropped."""


class Broker(Protocol):
    """A venue as the gateway sees it. Methods never raise for bad orders: they report them."""

    @property
    def venue(self) -> str:
        """The venue name written in every report (``"sim"``, ``"alpaca"``)."""
        ...

    @property
    def wants_market_data(self) -> bool:
        """True when the shell must feed ``md.*`` to :meth:`on_market_data` (the simulator)."""
        ...

    async def submit(self, routed: orders_pb2.RoutedOrder) -> Reports:
        """Place ``routed.new_order``. Submitting an order id the broker already knows returns ``[]``."""
        ...

    async def cancel(self, routed: orders_pb2.RoutedOrder) -> Reports:
        """Cancel the order ``routed.order_id``: a CANCELED or a CANCEL_REJECTED report."""
        ...

    async def on_market_data(self, update: MarketUpdate) -> Reports:
        """A bar, trade or quote; may fill, trigger or expire resting orders."""
        ...

    async def shutdown(self) -> Reports:
        """The service is stopping: the reports to publish before the connection drains."""
        ...

    def open_orders(self) -> list[ledger_pb2.OrderRecord]:
        """The orders resting at the venue now (the service's ``book`` endpoint and STATS)."""
        ...


@runtime_checkable
class StreamingBroker(Protocol):
    """A venue with its own event stream (Alpaca): reports arrive through ``emit`` at any time."""

    async def start(self, emit: Callable[[Reports], None], prices: PriceSource | None = None,
                    timeout: float = 30.0) -> None:
        """Connect and reconcile; return once the broker may take new work."""
        ...

    async def positions(self) -> list[ledger_pb2.Position]:
        """The account's positions at the venue (symbol, signed qty, avg cost)."""
        ...


FINAL_STATUSES = frozenset(
    {E.ORDER_STATUS_FILLED, E.ORDER_STATUS_CANCELED, E.ORDER_STATUS_EXPIRED, E.ORDER_STATUS_REJECTED}
)


class OrderProgress:
    """What every venue's order record derives the same way from ``status``, ``qty``, ``cum_qty``
    and ``cost`` (the sum of fill qty x price): finality, leaves and the average price."""

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
