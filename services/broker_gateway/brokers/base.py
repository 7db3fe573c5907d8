"""The one interface the gateway's async shell needs from a broker.

A broker takes routed orders and market data and answers with the execution reports they caused;
the shell publishes those reports to ``EXECUTIONS`` (``Nats-Msg-Id`` = execution id) and only then
acks the routed order. The ``sim`` broker (:mod:`.sim`) computes reports synchronously with the
pure matching engine of :mod:`desk.core.matching`. A venue that reports on its own schedule (the
``alpaca`` broker, with its ``trade_updates`` stream) also hands reports to a sink the shell gives it
(:class:`StreamingBroker`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Protocol, runtime_checkable

from desk.core.matching import MarketUpdate
from desk.core.orders import Reports
from desk.v1 import executions_pb2, ledger_pb2, orders_pb2

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


Sink = Callable[[Reports], Awaitable[bool] | None]
"""The shell's sink for a streaming broker's reports: queues them for EXECUTIONS in order and may
return an awaitable that is True once they (and everything queued before) are stored."""


@runtime_checkable
class RestorableBroker(Protocol):
    """A venue whose book the shell rebuilds at start-up from EXECUTIONS (sim; alpaca: what the
    desk decided - crosses, fills, the desk's own cancels - before :meth:`StreamingBroker.start`)."""

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """Every stored report of this venue, in stream order; the reports the restore itself makes."""
        ...


@runtime_checkable
class StreamingBroker(Protocol):
    """A venue with its own event stream (Alpaca): reports arrive through ``emit`` at any time."""

    async def start(self, emit: Sink, prices: PriceSource | None = None,
                    timeout: float = 30.0) -> None:
        """Connect and reconcile; return once the broker may take new work."""
        ...

    async def positions(self) -> list[ledger_pb2.Position]:
        """The account's positions at the venue (symbol, signed qty, avg cost)."""
        ...
