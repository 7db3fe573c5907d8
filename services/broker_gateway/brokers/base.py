"""The one interface the gateway's async shell needs from a broker.

A broker takes routed orders and market data and answers with the execution reports they caused;
the shell publishes those reports to ``EXECUTIONS`` (``Nats-Msg-Id`` = execution id) and only then
acks the routed order. The ``sim`` broker (:mod:`.sim`) computes reports synchronously with the
pure matching engine of :mod:`desk.core.matching`. A venue that reports on its own schedule (the
``alpaca`` broker, with its ``trade_updates`` stream) also hands reports to a sink the shell gives it
(:meth:`Broker.start`; ``reports_async``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from decimal import Decimal
from typing import Protocol, TypedDict

from desk.core.matching import MarketUpdate
from desk.core.orders import Reports
from desk.v1 import executions_pb2, ledger_pb2, orders_pb2

PriceSource = Callable[[str], Awaitable[Decimal | None]]
"""The fair price of a symbol now (the last trade in DESK_PRICES), for crossing orders internally."""


class BrokerUnavailable(Exception):
    """The venue did not answer in time: the routed order is retried later (nak), not dropped."""


Sink = Callable[[Reports], Awaitable[bool] | None]
"""The shell's sink for a streaming broker's reports: queues them for EXECUTIONS in order and may
return an awaitable that is True once they (and everything queued before) are stored."""


class Broker(Protocol):
    """A venue as the gateway sees it. Methods never raise for bad orders: they report them.

    The shell asks nothing else of a broker (never which one it is): it checks it before start,
    restores its book from EXECUTIONS, starts it, feeds it orders and market data, publishes what
    it reports and asks its stats.
    """

    @property
    def venue(self) -> str:
        """The venue name written in every report (``"sim"``, ``"alpaca"``)."""
        ...

    @property
    def wants_market_data(self) -> bool:
        """True when the shell must feed ``md.*`` to :meth:`on_market_data` (the simulator)."""
        ...

    @property
    def reports_async(self) -> bool:
        """True for a venue with its own event stream (Alpaca): its reports arrive through the sink
        given to :meth:`start` at any time, ``submit`` and ``cancel`` return ``[]``, it takes one
        routed order per fetch and it answers :meth:`positions`. False: every report is returned."""
        ...

    def check(self) -> None:
        """Start-up check (synchronous, before the service runs); SystemExit with a message if the
        venue refuses us (Alpaca: the keys)."""
        ...

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """Every stored report of this venue, in stream order (at start-up, before :meth:`start` and
        any order or price); the reports the restore itself makes."""
        ...

    async def start(self, emit: Sink, prices: PriceSource | None = None, timeout: float = 30.0) -> None:
        """Connect and reconcile; return once the broker may take new work (after :meth:`restore`)."""
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

    async def positions(self) -> list[ledger_pb2.Position]:
        """The account's positions at the venue (symbol, signed qty, avg cost); asked only of a
        broker with :attr:`reports_async` (the sim keeps no account: the ledger has the books)."""
        ...

    def stats(self) -> BrokerStats:
        """The broker's own counters (``restore_skipped``: stored reports :meth:`restore` could not read)."""
        ...


class BrokerStats(TypedDict):
    """What :meth:`Broker.stats` reports."""

    restore_skipped: int
