"""The gateway's async shell: routed orders in (JetStream work queue), execution reports out.

For each ``RoutedOrder`` on ``desk.broker.<venue>.orders`` (durable pull consumer
``gateway-<venue>``), the broker answers with execution reports; each is published to
``desk.exec.<strategy_id>`` with ``Nats-Msg-Id`` = execution id, and only once every report's PubAck
is in is the routed order acked (ack after store: no lost fill).

Batches (sim): up to ``GATEWAY_FETCH_BATCH`` routed orders are fetched at once and handed to the
broker in stream order; their reports go into the outbox (:mod:`.outbox`, published in waves),
then the batch's routed orders are acked together. The Alpaca broker takes one order at a time
(its submits are REST calls of up to seconds each: orders waiting in a batch behind them would
outlive their ack wait and be redelivered while still in hand).

Reports go through one FIFO outbox (:class:`.outbox.ExecutionOutbox`): a report whose publish fails
stays in it and is retried; the batch's routed orders are nak'ed so they come back; the broker
ignores an order the second time and the outbox delivers what is still owed.

Market data (``md.bar.>``, ``md.quote.>``, ``md.trade.>``) goes to the broker too: the sim fills
resting orders from it.

Start-up (sim, and alpaca before its stream starts): before the service answers, fetches a routed
order or sees market data, the broker's book is rebuilt from EXECUTIONS
(:meth:`BrokerGatewayService._restore_book`: every stored report of this venue, up to the stream's last
sequence at start, through an ordered consumer), so resting orders survive a crash (SIGKILL) and a
redelivered routed order is recognised (docs/faults.md, docs/alpaca.md "Crashes"). Then the durable
consumer ``gateway-<venue>`` is created (retried through an election), and only then is the micro
service registered: a gateway that answers has its consumer, which is what the router's venue check
looks for (``services/order_router/venue.py``); routed orders queue in it until the broker has started.

The broker is built from the settings by :mod:`.factory`; the shell sees only the
:class:`~.brokers.base.Broker` protocol (restore, start, stats, ...), never which broker it has.

Shutdown: stop fetching, then publish EXPIRED for every order resting in the sim (a sim rule: the
venue closes with the process; the restored book then holds them as expired), then the lifecycle
drains the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from nats.micro.service import EndpointStats

import desk
from desk.bus import codec, streams, subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import DeskService, add_service
from desk.bus.pull import DurablePull, Outcome
from desk.bus.replay import replay_to_last
from desk.bus.retry import transient
from desk.core.matching import MarketUpdate
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

from .brokers.base import Broker, BrokerUnavailable
from .factory import build_broker
from .outbox import PUBLISH_TIMEOUT, RETRY_PAUSE, ExecutionOutbox
from .settings import Settings

NAME = "broker_gateway"
FETCH_TIMEOUT = 1.0  # seconds one pull waits; bounds how long a stop waits for the order loop
PRICE_TIMEOUT = 1.0  # seconds one DESK_PRICES read may take (an election answers nothing)
RESTORE_TIMEOUT = 120.0  # seconds the start-up read of EXECUTIONS may take (sim)

log = get_logger(NAME)

_MD_TYPES: dict[str, type[MarketUpdate]] = {
    "md.bar.>": marketdata_pb2.Bar,
    "md.quote.>": marketdata_pb2.Quote,
    "md.trade.>": marketdata_pb2.Trade,
}


class BrokerGatewayService:
    """One gateway process: one venue, one durable consumer, one outbox of reports. Without
    ``broker``, the one the settings name (:func:`.factory.build_broker`; no I/O)."""

    def __init__(
        self, settings: Settings, broker: Broker | None = None, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.settings = settings
        self.broker = broker if broker is not None else build_broker(settings)
        self.venue = self.broker.venue
        self.orders_subject = subjects.broker_orders(self.venue)
        self.durable = f"gateway-{self.venue}"
        self.counts: collections.Counter[str] = collections.Counter()
        self.outbox = ExecutionOutbox(self.counts, clock)
        self._service: DeskService | None = None
        self._md_subs: list[Subscription] = []
        self._prices: KeyValue | None = None
        self._prices_failing = False  # the last DESK_PRICES read failed (logged once per run of failures)
        self._orders_pull: DurablePull | None = None

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, runtime: ServiceRuntime) -> None:
        self.outbox.js = runtime.js
        await streams.ensure_stream(runtime.js, streams.EXECUTIONS)
        await streams.ensure_stream(runtime.js, streams.ORDERS)
        await self._restore_book(runtime)  # before the broker starts, any order or any price
        # The durable consumer before the micro service: once the gateway answers (desk up waits for
        # that), the router's venue check finds gateway-<venue> (services/order_router/venue.py).
        # Orders routed from then on queue in it until the loop below fetches them.
        self._orders_pull = self._pull(runtime)
        if await self._orders_pull.ensure() is None:
            return  # stopped while the cluster did not answer
        log.info("orders.subscribed", durable=self.durable, subject=self.orders_subject)
        service = await add_service(
            runtime,
            NAME,
            desk.__version__,
            f"routed orders -> {self.venue} -> execution reports",
            metadata={"venue": self.venue},
        )
        # Our counters ride in every endpoint's STATS data next to the refusals (reason: add_service
        # builds the DeskService itself, so its stats hook is replaced on the instance).
        service.stats_data = self._stats_data  # type: ignore[method-assign]
        self._service = service
        await service.add_endpoint("book", f"desk.broker.{self.venue}.book", ledger_pb2.LedgerQuery, self._book)
        # Unwound in reverse: the order loop finishes first, then resting orders expire, then
        # the micro service stops and the lifecycle drains.
        runtime.stack.push_async_callback(self._expire_resting_orders)
        if self.broker.reports_async:  # a venue with its own account and event stream (Alpaca)
            await service.add_endpoint(
                "positions", subjects.broker_positions(self.venue), ledger_pb2.LedgerQuery, self._positions
            )
            self._prices = await streams.ensure_bucket(runtime.js, subjects.KV_PRICES)
        # connected and reconciled before the first routed order is fetched (the sim: nothing to do)
        await self.broker.start(self.outbox.emit, self._price_of)
        if self.broker.wants_market_data:
            for subject in _MD_TYPES:
                self._md_subs.append(await runtime.nc.subscribe(subject, cb=self._on_market_data))
        loop = runtime.spawn(self._consume_orders(), name="gateway.orders")
        runtime.stack.push_async_callback(self._wait_for, loop)
        log.info("gateway.started", venue=self.venue, subject=self.orders_subject, durable=self.durable)

    async def _restore_book(self, runtime: ServiceRuntime) -> None:
        """Rebuild the broker's book from every stored report of this venue (before any order or price).

        EXECUTIONS is read from its start up to its last sequence at this moment
        (:func:`desk.bus.replay.replay_to_last`; nothing of this venue is published meanwhile: one
        gateway per venue). Reports the restore makes (an IOC/FOK order left open by the crash is
        canceled) go out first.
        """
        stored: list[executions_pb2.ExecutionReport] = []
        unreadable = 0

        def on_report(msg: Msg) -> None:
            nonlocal unreadable
            try:
                report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            except DeskError as err:
                unreadable += 1
                log.warning("restore.bad_report", subject=msg.subject, stream_seq=_metadata(msg), code=err.code)
                return
            if report.venue == self.venue:
                stored.append(report)

        replayed = await replay_to_last(
            runtime.js, subjects.STREAM_EXECUTIONS, subjects.EXEC_ALL, on_report, timeout=RESTORE_TIMEOUT
        )
        last_seq = replayed.last_seq
        made = self.broker.restore(stored)
        unreadable += self.broker.stats()["restore_skipped"]
        self.counts["restored_open_orders"] = len(self.broker.open_orders())
        log.info(
            "book.restored",
            venue=self.venue,
            last_seq=last_seq,
            reports=len(stored),
            open_orders=self.counts["restored_open_orders"],
            canceled=len(made),
            unreadable=unreadable,
        )
        if made:
            self.outbox.extend(made)
            if not await self.outbox.flush():
                log.error("execution.unpublished", count=len(self.outbox))  # retried with the next flush

    async def _wait_for(self, task: asyncio.Task[Any]) -> None:
        """Let the order loop finish the order in hand (it sees the stop event within a fetch)."""
        await asyncio.wait({task}, timeout=FETCH_TIMEOUT + PUBLISH_TIMEOUT)

    async def _expire_resting_orders(self) -> None:
        for sub in self._md_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        reports = await self.broker.shutdown()
        await self.outbox.wait_for_emits()
        if reports:
            log.info("gateway.expiring_resting_orders", count=len(reports))
        self.outbox.extend(reports)
        if not await self.outbox.flush():
            log.error("execution.unpublished_at_stop", count=len(self.outbox))

    # --- routed orders -----------------------------------------------------------------------------

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.gateway_ack_wait,
            max_ack_pending=self.settings.gateway_max_ack_pending,
            filter_subject=self.orders_subject,
        )

    def fetch_batch(self) -> int:
        """Routed orders per fetch: GATEWAY_FETCH_BATCH for the sim, one for a streaming broker (Alpaca)."""
        if self.broker.reports_async:
            return 1
        return max(1, min(self.settings.gateway_fetch_batch, self.settings.gateway_max_ack_pending))

    def _pull(self, runtime: ServiceRuntime) -> DurablePull:
        """The routed orders' durable pull consumer (:class:`desk.bus.pull.DurablePull`). A consumer
        found with other settings is kept as it is, with a warning (creating and changing it is
        provisioning's)."""
        return DurablePull(
            runtime.js,
            subjects.STREAM_ORDERS,
            self._consumer_config(),
            batch_handler=self._handle_orders,
            batch=self.fetch_batch(),
            fetch_timeout=FETCH_TIMEOUT,
            ack_sync=True,
            ack_timeout=PUBLISH_TIMEOUT,
            nak_delay=RETRY_PAUSE,
            update=False,
            stop=runtime.stop,
        )

    async def _consume_orders(self) -> None:
        """Fetch routed orders (a batch at a time) until the service stops, through reconnects,
        elections and a lost consumer (the consumer was created in :meth:`start`)."""
        assert self._orders_pull is not None
        await self._orders_pull.run()

    async def _handle_orders(self, messages: list[Msg]) -> Outcome:
        """Hand a batch to the broker in order and publish every report; then the routed orders owed
        an ack are acked (confirmed: the work queue lets them go after the reports are stored).
        Refused, failed and deferred ones were settled on the way (term / nak)."""
        self.counts["order_batches"] += 1
        owed = [msg for msg in messages if await self._take_order(msg)]
        if owed and not await self.outbox.flush():
            # the reports wait in the outbox; the routed orders come back and find them owed
            return Outcome.NAK
        return Outcome.ACK

    async def _take_order(self, msg: Msg) -> bool:
        """One routed order to the broker; True if it is owed an ack once the outbox is published."""
        self.counts["orders_received"] += 1
        try:
            routed = codec.decode(msg.data, orders_pb2.RoutedOrder, msg.headers)
            action = routed.WhichOneof("action")
            if action is None:
                raise DeskError("MALFORMED", "routed order carries neither new_order nor cancel")
            if not subjects.STRATEGY_ID_RE.match(routed.strategy_id):
                raise DeskError("MALFORMED", f"routed order has an invalid strategy_id {routed.strategy_id!r}")
        except DeskError as err:
            await self._refuse(msg, err)
            return False
        request: orders_pb2.OrderRequest | orders_pb2.CancelRequest = (
            routed.new_order if action == "new_order" else routed.cancel
        )
        with structlog.contextvars.bound_contextvars(
            strategy_id=routed.strategy_id, client_order_id=request.client_order_id, order_id=routed.order_id
        ):
            redelivered = _delivered(msg) > 1  # a redelivery is worth a line; the router logged the order
            (log.info if redelivered else log.debug)(
                "order.received", action=action, symbol=getattr(request, "symbol", ""), redelivered=redelivered
            )
            try:
                if action == "new_order":
                    reports = await self.broker.submit(routed)
                else:
                    reports = await self.broker.cancel(routed)
            except DeskError as err:
                await self._refuse(msg, err)
                return False
            except BrokerUnavailable as exc:
                self.counts["orders_deferred"] += 1
                log.warning("order.deferred", error=str(exc))
                await msg.nak(delay=RETRY_PAUSE)  # redelivered later; the venue dedups by client order id
                return False
            except Exception as exc:
                self.counts["orders_failed"] += 1
                log.error("order.failed", error=repr(exc), exc_info=exc)
                await msg.term()
                return False
            if not reports and not self.broker.reports_async:
                log.info("order.duplicate", action=action)
            self.outbox.extend(reports)
            return True

    async def _refuse(self, msg: Msg, err: DeskError) -> None:
        self.counts["orders_malformed"] += 1
        if self._service is not None:
            self._service.refusals["orders"][err.code] += 1
        meta = _metadata(msg)
        log.warning("order.malformed", code=err.code, reason=err.message, subject=msg.subject, stream_seq=meta)
        await msg.term()  # never redeliver: it will not get better

    # --- market data -------------------------------------------------------------------------------

    async def _on_market_data(self, msg: Msg) -> None:
        message_type = _MD_TYPES[f"{msg.subject.split('.', 2)[0]}.{msg.subject.split('.', 2)[1]}.>"]
        try:
            update = codec.decode(msg.data, message_type, msg.headers)
            reports = await self.broker.on_market_data(update)
        except DeskError as err:
            self.counts["marketdata_malformed"] += 1
            log.warning("marketdata.malformed", subject=msg.subject, code=err.code, reason=err.message)
            return
        except Exception as exc:
            self.counts["marketdata_failed"] += 1
            log.error("marketdata.failed", subject=msg.subject, error=repr(exc), exc_info=exc)
            return
        if reports:
            self.outbox.extend(reports)
            await self.outbox.flush()

    # --- prices (a streaming broker crosses orders internally at the last trade) ----------------

    async def _price_of(self, symbol: str) -> Decimal | None:
        """The last trade price in DESK_PRICES (the fair price internal crosses use), if any. An
        election's error (desk.bus.retry.transient) is no price too (the broker goes on without an
        internal cross), logged once per run of failures."""
        if self._prices is None:
            return None
        try:
            entry = await asyncio.wait_for(self._prices.get(symbol), PRICE_TIMEOUT)
            trade = codec.decode(entry.value or b"", marketdata_pb2.Trade)
            price = parse_decimal("price", trade.price, required=False)
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError, DeskError):
            price = None
        except Exception as exc:
            if not transient(exc):
                raise
            self.counts["price_unreadable"] += 1
            if not self._prices_failing:
                log.warning("price.unreadable", symbol=symbol, error=repr(exc))
            self._prices_failing = True
            return None
        if self._prices_failing:
            log.info("price.readable", symbol=symbol, failed=self.counts["price_unreadable"])
        self._prices_failing = False
        return price

    # --- micro -------------------------------------------------------------------------------------

    async def _book(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.OrdersReply:
        orders = [
            o
            for o in self.broker.open_orders()
            if (not query.strategy_id or o.strategy_id == query.strategy_id)
            and (not query.symbol or o.symbol == query.symbol)
            and (not query.member_id or o.member_id == query.member_id)
        ]
        return ledger_pb2.OrdersReply(orders=orders[: query.limit or 100])

    async def _positions(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
        try:
            positions = await self.broker.positions()
        except BrokerUnavailable as exc:
            raise DeskError("VENUE_UNAVAILABLE", str(exc), 503) from None
        return ledger_pb2.PositionsReply(
            positions=[p for p in positions if not query.symbol or p.symbol == query.symbol]
        )

    def _stats_data(self, endpoint: EndpointStats) -> dict[str, Any]:
        refusals: dict[str, int] = {}
        if self._service is not None:
            for counter in self._service.refusals.values():
                refusals.update(counter)
        return {
            "errors": refusals,
            "venue": self.venue,
            **dict(self.counts),
            "open_orders": len(self.broker.open_orders()),
            "unpublished_reports": len(self.outbox),
            "consumer": self._orders_pull.stats_data() if self._orders_pull is not None else {},
        }


def _delivered(msg: Msg) -> int:
    with contextlib.suppress(Exception):
        return int(msg.metadata.num_delivered)
    return 1


def _metadata(msg: Msg) -> int | None:
    with contextlib.suppress(Exception):
        return int(msg.metadata.sequence.stream)
    return None
