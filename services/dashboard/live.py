"""Live updates: NATS subjects in, JSON events out to every open page (server-sent events).

:class:`LiveFeed` follows ``desk.exec.>`` (orders and fills), ``desk.hb.*`` (heartbeats) and
``md.trade.*`` (prices); each message becomes a small JSON-able dict put on every subscriber's
bounded queue. A page that cannot keep up loses events (counted), never slows the bus. The feed also
keeps the last heartbeat per strategy and a bounded price history per symbol (the benchmark's
price path).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from desk.bus import codec, subjects
from desk.bus.errors import DeskError
from desk.bus.logging import get_logger
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, strategy_pb2

log = get_logger("dashboard")

Event = dict[str, Any]
CLIENT_QUEUE = 1000
FILL_TYPES = (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL)


def execution_event(report: executions_pb2.ExecutionReport) -> Event:
    return {
        "type": "fill" if report.exec_type in FILL_TYPES else "order",
        "strategy_id": report.strategy_id,
        "member_id": report.member_id,
        "execution_id": report.execution_id,
        "order_id": report.order_id,
        "client_order_id": report.client_order_id,
        "symbol": report.symbol,
        "side": codec.enum_word(common_pb2.Side, report.side),
        "exec_type": codec.enum_word(executions_pb2.ExecType, report.exec_type),
        "status": codec.enum_word(executions_pb2.OrderStatus, report.status),
        "qty": report.fill_qty if report.exec_type in FILL_TYPES else report.order_qty,
        "price": report.fill_price,
        "fee": report.fee,
        "text": report.text,
        "ts_ns": report.event_ns or report.report_ns,
    }


def heartbeat_event(hb: strategy_pb2.Heartbeat, strategy_id: str) -> Event:
    return {
        "type": "heartbeat",
        "strategy_id": strategy_id,
        "ts_ns": hb.ts_ns,
        "bars_seen": hb.bars_seen,
        "orders_sent": hb.orders_sent,
        "errors": hb.errors,
        "last_error": hb.last_error,
    }


class Listener:
    """One open page's events; iterate it, and :meth:`close` it when the page goes away."""

    def __init__(self, feed: LiveFeed) -> None:
        self.feed = feed
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(CLIENT_QUEUE)

    def close(self) -> None:
        self.feed._clients.discard(self.queue)

    async def __aiter__(self) -> AsyncIterator[Event]:
        try:
            while (event := await self.queue.get()) is not None:
                yield event
        finally:
            self.close()


class LiveFeed:
    """Subscriptions to the bus and the set of open pages (one queue each)."""

    def __init__(self, price_history: int = 20000) -> None:
        self._clients: set[asyncio.Queue[Event | None]] = set()
        self._subs: list[Subscription] = []
        self.prices: dict[str, collections.deque[tuple[int, Decimal]]] = collections.defaultdict(
            lambda: collections.deque(maxlen=price_history)
        )
        self.heartbeats: dict[str, Event] = {}
        self.dropped = 0
        self.malformed = 0

    async def start(self, nc: Client) -> None:
        self._subs = [
            await nc.subscribe(subjects.EXEC_ALL, cb=self._on_execution),
            await nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_heartbeat),
            await nc.subscribe(subjects.MD_TRADE.format(symbol="*"), cb=self._on_trade),
        ]

    async def stop(self) -> None:
        """Unsubscribe and end every open event stream (so the web server can shut down)."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - connection already closing: nothing left to undo
                log.debug("live.unsubscribe_failed", error=repr(exc))
        self._subs = []
        for queue in list(self._clients):
            self._offer(queue, None)

    # -- subscribers ------------------------------------------------------------------------------

    def listen(self) -> Listener:
        """A new subscriber, registered now: it gets every event published from this call on."""
        listener = Listener(self)
        self._clients.add(listener.queue)
        return listener

    @property
    def clients(self) -> int:
        return len(self._clients)

    def _offer(self, queue: asyncio.Queue[Event | None], event: Event | None) -> None:
        try:
            queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            if event is None:  # make room for the end marker: the page is going away anyway
                queue.get_nowait()
                queue.put_nowait(None)

    def publish(self, event: Event) -> None:
        for queue in list(self._clients):
            self._offer(queue, event)

    # -- NATS callbacks -----------------------------------------------------------------------------

    def _malformed(self, msg: Msg, err: DeskError) -> None:
        self.malformed += 1
        log.warning("live.malformed", subject=msg.subject, code=err.code, reason=err.message, count=self.malformed)

    async def _on_execution(self, msg: Msg) -> None:
        try:
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
        except DeskError as err:
            self._malformed(msg, err)
            return
        self.publish(execution_event(report))

    async def _on_heartbeat(self, msg: Msg) -> None:
        strategy_id = subjects.token(msg.subject, -1)
        try:
            hb = codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers)
        except DeskError as err:
            self._malformed(msg, err)
            return
        event = heartbeat_event(hb, strategy_id)
        self.heartbeats[strategy_id] = event
        self.publish(event)

    async def _on_trade(self, msg: Msg) -> None:
        try:
            trade = codec.decode(msg.data, marketdata_pb2.Trade, msg.headers)
            price = Decimal(trade.price)
        except DeskError as err:
            self._malformed(msg, err)
            return
        except ArithmeticError:
            self._malformed(msg, DeskError("INVALID_FIELD", f"price {trade.price!r} is not a number"))
            return
        symbol = trade.symbol or subjects.token(msg.subject, -1)
        history = self.prices[symbol]
        if history and trade.ts_ns < history[-1][0]:
            return  # out of order: the path must stay sorted for the benchmark's lookups
        history.append((trade.ts_ns, price))
        self.publish({"type": "price", "symbol": symbol, "price": trade.price, "ts_ns": trade.ts_ns})
