"""The ``sim`` venue as the gateway's :class:`~.base.Broker`: the async face of the pure matching
engine :class:`desk.core.matching.SimEngine` (the model, the restore after a crash and the execution
ids are described there). Still no I/O: the gateway's shell feeds it and publishes what it returns.

The venue's clock is its market's (:class:`MarketClock`): the time of the latest market-data update
it was fed — a bar at its end, a quote or trade at its own stamp — and the wall clock only until an
update carries a time. So an order is dated (``submitted_ns``, the reports' ``event_ns``) at the
market time it reached the venue, DAY orders expire at the market's next date, and a replay of
historical bars trades exactly as the SDK's backtester does on the same bars (whose engine clock is
the replayed bar's end): with the wall clock, a DAY order placed during a replay of 2014 would never
expire, and every report would be dated today.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from desk.bus.errors import DeskError
from desk.core.matching import SHUTDOWN_TEXT, MarketUpdate, SimEngine, SimOrder
from desk.core.orders import Reports, order_record
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

from .base import BrokerStats, PriceSource, Sink


class MarketClock:
    """The sim venue's time: the latest market-data update's, else ``fallback`` (the wall clock)."""

    def __init__(self, fallback: Callable[[], int] = time.time_ns) -> None:
        self.fallback = fallback
        self.market_ns = 0

    def __call__(self) -> int:
        return self.market_ns or self.fallback()

    def saw(self, update: MarketUpdate) -> None:
        """``update`` is about to be fed to the engine: its time is the venue's time from now on
        (a bar's at its end, as the backtester's; an update without a time leaves the clock)."""
        if isinstance(update, marketdata_pb2.Bar):
            ts_ns = update.start_ns + update.interval_ns if update.start_ns else 0
        else:
            ts_ns = update.ts_ns
        if ts_ns > 0:
            self.market_ns = ts_ns


class SimBroker:
    """The :class:`~.base.Broker` face of :class:`SimEngine` (still no I/O). With ``clock`` (the
    :class:`MarketClock` the engine was built with, as the gateway does) the venue runs on the market's
    time: every update fed here moves it."""

    wants_market_data = True
    reports_async = False  # every report is returned by the call that caused it

    def __init__(self, engine: SimEngine, clock: MarketClock | None = None) -> None:
        self.engine = engine
        self.clock = clock

    @property
    def venue(self) -> str:
        return self.engine.venue

    def check(self) -> None:
        """Nothing to check: the venue is this process."""

    async def start(self, emit: Sink, prices: PriceSource | None = None, timeout: float = 30.0) -> None:
        """Nothing to connect: the sim reports only through what its calls return."""

    async def submit(self, routed: orders_pb2.RoutedOrder) -> Reports:
        return self.engine.submit(routed)

    async def cancel(self, routed: orders_pb2.RoutedOrder) -> Reports:
        return self.engine.cancel(routed)

    async def on_market_data(self, update: MarketUpdate) -> Reports:
        if self.clock is not None:
            self.clock.saw(update)
        return self.engine.on_market_data(update)

    async def shutdown(self) -> Reports:
        return self.engine.expire_all(SHUTDOWN_TEXT)

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """:meth:`SimEngine.restore` (the gateway calls it at start-up, before any order)."""
        return self.engine.restore(reports)

    def open_orders(self) -> list[ledger_pb2.OrderRecord]:
        return [_record(order) for order in self.engine.open_orders()]

    async def positions(self) -> list[ledger_pb2.Position]:
        """Never asked (``reports_async`` is False): the sim keeps no account, the ledger has the books."""
        raise DeskError("UNSUPPORTED", "the sim venue keeps no account; ask the ledger", 404)

    def stats(self) -> BrokerStats:
        return {"restore_skipped": self.engine.restore_skipped}


def _record(order: SimOrder) -> ledger_pb2.OrderRecord:
    return order_record(order, SimEngine.venue, order.submitted_ns)
