"""The ``sim`` venue as the gateway's :class:`~.base.Broker`: the async face of the pure matching
engine :class:`desk.core.matching.SimEngine` (the model, the restore after a crash and the execution
ids are described there). Still no I/O: the gateway's shell feeds it and publishes what it returns.
"""

from __future__ import annotations

from collections.abc import Iterable

from desk.bus.decimals import fmt
from desk.core.matching import SHUTDOWN_TEXT, MarketUpdate, SimEngine, SimOrder
from desk.core.orders import Reports
from desk.v1 import executions_pb2, ledger_pb2, orders_pb2


class SimBroker:
    """The :class:`~.base.Broker` face of :class:`SimEngine` (still no I/O)."""

    wants_market_data = True

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    @property
    def venue(self) -> str:
        return self.engine.venue

    async def submit(self, routed: orders_pb2.RoutedOrder) -> Reports:
        return self.engine.submit(routed)

    async def cancel(self, routed: orders_pb2.RoutedOrder) -> Reports:
        return self.engine.cancel(routed)

    async def on_market_data(self, update: MarketUpdate) -> Reports:
        return self.engine.on_market_data(update)

    async def shutdown(self) -> Reports:
        return self.engine.expire_all(SHUTDOWN_TEXT)

    def restore(self, reports: Iterable[executions_pb2.ExecutionReport]) -> Reports:
        """:meth:`SimEngine.restore` (the gateway calls it at start-up, before any order)."""
        return self.engine.restore(reports)

    def open_orders(self) -> list[ledger_pb2.OrderRecord]:
        return [_record(order) for order in self.engine.open_orders()]


def _record(order: SimOrder) -> ledger_pb2.OrderRecord:
    return ledger_pb2.OrderRecord(
        order_id=order.order_id,
        client_order_id=order.client_order_id,
        strategy_id=order.strategy_id,
        member_id=order.member_id,
        symbol=order.symbol,
        side=order.side,  # type: ignore[arg-type]  # int values of the generated enums
        type=order.type,  # type: ignore[arg-type]
        time_in_force=order.tif,  # type: ignore[arg-type]
        qty=fmt(order.qty),
        notional=fmt(order.notional),
        limit_price=fmt(order.limit_price),
        stop_price=fmt(order.stop_price),
        status=order.status,  # type: ignore[arg-type]
        filled_qty=fmt(order.cum_qty),
        avg_price=fmt(order.avg_price),
        venue=SimEngine.venue,
        created_ns=order.submitted_ns,
    )
