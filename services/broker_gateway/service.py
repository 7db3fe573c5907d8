"""The gateway's async shell: routed orders in (JetStream work queue), execution reports out.

For each ``RoutedOrder`` on ``desk.broker.<venue>.orders`` (durable pull consumer
``gateway-<venue>``), the broker answers with execution reports; each is published to
``desk.exec.<strategy_id>`` with ``Nats-Msg-Id`` = execution id, its PubAck awaited, and only then
is the routed order acked. Reports go through one FIFO outbox: a report whose publish fails stays
at its head and is retried (same execution id, so JetStream deduplicates) before anything after it,
and the routed order is nak'ed so it comes back; the broker ignores the order the second time and
the outbox delivers what is still owed.

Market data (``md.bar.>``, ``md.quote.>``, ``md.trade.>``) goes to the broker too: the sim fills
resting orders from it.

Shutdown: stop fetching, then publish EXPIRED for every order resting in the sim (its book is in
memory and cannot outlive the process), then the lifecycle drains the connection. A crash (SIGKILL)
loses the sim's resting orders without reports; the fault-tolerance work will address that.
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
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from nats.micro.service import EndpointStats

import desk
from desk.bus import codec, streams, subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime, StartFn
from desk.bus.logging import get_logger
from desk.bus.micro import DeskService, add_service
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

from .brokers.base import Broker, BrokerUnavailable, MarketUpdate, Reports, StreamingBroker
from .brokers.sim import SimBroker, SimConfig, SimEngine
from .settings import Settings

NAME = "broker_gateway"
MSG_ID = "Nats-Msg-Id"
FETCH_TIMEOUT = 1.0  # seconds one pull waits; bounds how long a stop waits for the order loop
PUBLISH_TIMEOUT = 5.0
RETRY_PAUSE = 1.0

log = get_logger(NAME)

_MD_TYPES: dict[str, type[MarketUpdate]] = {
    "md.bar.>": marketdata_pb2.Bar,
    "md.quote.>": marketdata_pb2.Quote,
    "md.trade.>": marketdata_pb2.Trade,
}

_EXEC_EVENTS = {
    executions_pb2.EXEC_TYPE_NEW: ("order.new", "info"),
    executions_pb2.EXEC_TYPE_PARTIAL_FILL: ("order.partially_filled", "info"),
    executions_pb2.EXEC_TYPE_FILL: ("order.filled", "info"),
    executions_pb2.EXEC_TYPE_CANCELED: ("order.canceled", "info"),
    executions_pb2.EXEC_TYPE_EXPIRED: ("order.expired", "info"),
    executions_pb2.EXEC_TYPE_REJECTED: ("order.rejected", "warning"),
    executions_pb2.EXEC_TYPE_CANCEL_REJECTED: ("order.cancel_rejected", "warning"),
}


class BrokerNotAvailable(SystemExit):
    """The configured broker is not part of this build; start-up is refused with a message."""


def build_broker(settings: Settings, clock: Callable[[], int] = time.time_ns) -> Broker:
    """The broker ``settings.broker`` names (no I/O yet; missing Alpaca keys refuse start-up)."""
    if settings.broker == "sim":
        config = SimConfig(
            slippage_bps=settings.sim_slippage_bps,
            fee_bps=settings.sim_fee_bps,
            fee_per_share=settings.sim_fee_per_share,
            fee_min=settings.sim_fee_min,
            participation=settings.sim_participation,
        )
        return SimBroker(SimEngine(config, clock=clock))
    if settings.broker == "alpaca":
        from .brokers.alpaca import AlpacaBroker, AlpacaCredentialsError, alpaca_config

        try:
            return AlpacaBroker(alpaca_config(settings), clock=clock)
        except AlpacaCredentialsError as exc:
            raise BrokerNotAvailable(exc.code) from None
    raise BrokerNotAvailable(f"BROKER={settings.broker} is not supported; use BROKER=sim or BROKER=alpaca")


def check_broker(broker: Broker) -> None:
    """Start-up check before the service runs (Alpaca: the keys are accepted), else BrokerNotAvailable."""
    check = getattr(broker, "check_credentials", None)
    if check is None:
        return
    try:
        check()
    except SystemExit as exc:
        raise BrokerNotAvailable(exc.code) from None


def make_start(settings: Settings, broker: Broker | None = None) -> StartFn:
    """The start function for :func:`desk.bus.lifecycle.run` (builds the broker now, before connecting)."""
    return BrokerGateway(settings, broker or build_broker(settings)).start


class BrokerGateway:
    """One gateway process: one venue, one durable consumer, one outbox of reports."""

    def __init__(self, settings: Settings, broker: Broker, clock: Callable[[], int] = time.time_ns) -> None:
        self.settings = settings
        self.broker = broker
        self.venue = broker.venue
        self.orders_subject = subjects.broker_orders(self.venue)
        self.durable = f"gateway-{self.venue}"
        self._clock = clock
        self._outbox: collections.deque[executions_pb2.ExecutionReport] = collections.deque()
        self._publish_lock = asyncio.Lock()
        self._js: JetStreamContext | None = None
        self._service: DeskService | None = None
        self._md_subs: list[Subscription] = []
        self._flushes: set[asyncio.Task[bool]] = set()
        self._prices: KeyValue | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, runtime: ServiceRuntime) -> None:
        self._js = runtime.js
        await streams.ensure_stream(runtime.js, streams.EXECUTIONS)
        await streams.ensure_stream(runtime.js, streams.ORDERS)
        service = await add_service(
            runtime, NAME, desk.__version__, f"routed orders -> {self.venue} -> execution reports",
            metadata={"venue": self.venue},
        )
        # Our counters ride in every endpoint's STATS data next to the refusals (reason: add_service
        # builds the DeskService itself, so its stats hook is replaced on the instance).
        service.stats_data = self._stats_data  # type: ignore[method-assign]
        self._service = service
        await service.add_endpoint(
            "book", f"desk.broker.{self.venue}.book", ledger_pb2.LedgerQuery, self._book
        )
        # Unwound in reverse: the order loop finishes first, then resting orders expire, then
        # the micro service stops and the lifecycle drains.
        runtime.stack.push_async_callback(self._expire_resting_orders)
        if isinstance(self.broker, StreamingBroker):
            await service.add_endpoint(
                "positions", subjects.broker_positions(self.venue), ledger_pb2.LedgerQuery, self._positions
            )
            # connected and reconciled before the first routed order is fetched
            self._prices = await streams.ensure_bucket(runtime.js, subjects.KV_PRICES)
            await self.broker.start(self._emit, self._price_of)
        if self.broker.wants_market_data:
            for subject in _MD_TYPES:
                self._md_subs.append(await runtime.nc.subscribe(subject, cb=self._on_market_data))
        loop = runtime.spawn(self._consume_orders(runtime), name="gateway.orders")
        runtime.stack.push_async_callback(self._wait_for, loop)
        log.info("gateway.started", venue=self.venue, subject=self.orders_subject, durable=self.durable)

    async def _wait_for(self, task: asyncio.Task[Any]) -> None:
        """Let the order loop finish the order in hand (it sees the stop event within a fetch)."""
        await asyncio.wait({task}, timeout=FETCH_TIMEOUT + PUBLISH_TIMEOUT)

    async def _expire_resting_orders(self) -> None:
        for sub in self._md_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        reports = await self.broker.shutdown()
        if self._flushes:
            await asyncio.wait(set(self._flushes), timeout=PUBLISH_TIMEOUT)
        if reports:
            log.info("gateway.expiring_resting_orders", count=len(reports))
        self._outbox.extend(reports)
        if not await self._flush():
            log.error("execution.unpublished_at_stop", count=len(self._outbox))

    # --- routed orders -----------------------------------------------------------------------------

    async def _subscribe(self, runtime: ServiceRuntime) -> JetStreamContext.PullSubscription:
        config = ConsumerConfig(
            durable_name=self.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.settings.gateway_ack_wait,
            max_ack_pending=self.settings.gateway_max_ack_pending,
            filter_subject=self.orders_subject,
        )
        sub = await runtime.js.pull_subscribe(
            self.orders_subject, durable=self.durable, stream=streams.ORDERS.name, config=config
        )
        log.info("orders.subscribed", durable=self.durable, subject=self.orders_subject)
        return sub

    async def _consume_orders(self, runtime: ServiceRuntime) -> None:
        """Fetch routed orders one at a time until the service stops.

        The pull subscription is re-created after a reconnect (nats.py #504: pull subscriptions
        can go quiet after a server restart) and after any error.
        """
        sub: JetStreamContext.PullSubscription | None = None
        reconnects = runtime.nc.stats["reconnects"]
        try:
            while not runtime.stop.is_set():
                try:
                    if sub is None:
                        sub = await self._subscribe(runtime)
                    try:
                        messages = await sub.fetch(1, timeout=FETCH_TIMEOUT)
                    except nats.errors.TimeoutError:
                        messages = []
                    for msg in messages:
                        await self._handle_order(msg)
                except Exception as exc:  # noqa: BLE001 - connection trouble: re-subscribe after a pause
                    log.warning("orders.consume_failed", error=repr(exc))
                    await _unsubscribe(sub)
                    sub = None
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(runtime.stop.wait(), RETRY_PAUSE)
                    continue
                if runtime.nc.stats["reconnects"] != reconnects:
                    reconnects = runtime.nc.stats["reconnects"]
                    log.info("orders.resubscribing", reason="reconnected")
                    await _unsubscribe(sub)
                    sub = None
        finally:
            await _unsubscribe(sub)

    async def _handle_order(self, msg: Msg) -> None:
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
            return
        request: orders_pb2.OrderRequest | orders_pb2.CancelRequest = (
            routed.new_order if action == "new_order" else routed.cancel
        )
        with structlog.contextvars.bound_contextvars(
            strategy_id=routed.strategy_id, client_order_id=request.client_order_id, order_id=routed.order_id
        ):
            log.info("order.received", action=action, symbol=getattr(request, "symbol", ""),
                     redelivered=_delivered(msg) > 1)
            try:
                if action == "new_order":
                    reports = await self.broker.submit(routed)
                else:
                    reports = await self.broker.cancel(routed)
            except DeskError as err:
                await self._refuse(msg, err)
                return
            except BrokerUnavailable as exc:
                self.counts["orders_deferred"] += 1
                log.warning("order.deferred", error=str(exc))
                await msg.nak(delay=RETRY_PAUSE)  # redelivered later; the venue dedups by client order id
                return
            except Exception as exc:
                self.counts["orders_failed"] += 1
                log.error("order.failed", error=repr(exc), exc_info=exc)
                await msg.term()
                return
            if not reports and not isinstance(self.broker, StreamingBroker):
                log.info("order.duplicate", action=action)
            self._outbox.extend(reports)
            if await self._flush():
                await msg.ack_sync(timeout=PUBLISH_TIMEOUT)  # confirmed: the work queue has let it go
            else:
                # the reports wait in the outbox; the routed order comes back and finds them owed
                await msg.nak(delay=RETRY_PAUSE)

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
            self._outbox.extend(reports)
            await self._flush()

    # --- execution reports -------------------------------------------------------------------------

    async def _flush_soon(self, attempts: int = 10) -> bool:
        """Publish what a streaming broker emitted; a failed publish is retried (same ids, deduplicated)."""
        for _ in range(attempts):
            if await self._flush():
                return True
            await asyncio.sleep(RETRY_PAUSE)  # a retry pause, not synchronisation
        log.error("execution.unpublished", count=len(self._outbox))  # the next order's flush retries them
        return False

    async def _price_of(self, symbol: str) -> Decimal | None:
        """The last trade price in DESK_PRICES (the fair price internal crosses use), if any."""
        if self._prices is None:
            return None
        try:
            entry = await self._prices.get(symbol)
            trade = codec.decode(entry.value or b"", marketdata_pb2.Trade)
            return parse_decimal("price", trade.price, required=False)
        except (nats.js.errors.KeyNotFoundError, DeskError):
            return None

    def _emit(self, reports: Reports) -> None:
        """A streaming broker's sink: queue the reports in order, publish them soon."""
        if not reports:
            return
        self._outbox.extend(reports)
        task = asyncio.create_task(self._flush_soon(), name="gateway.flush")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush(self) -> bool:
        """Publish the outbox in order, each awaiting its PubAck; False if one publish failed."""
        assert self._js is not None
        async with self._publish_lock:
            while self._outbox:
                report = self._outbox[0]
                report.report_ns = self._clock()
                data, headers = codec.encode(report)
                headers[MSG_ID] = report.execution_id
                try:
                    ack = await self._js.publish(
                        subjects.execution(report.strategy_id), data, timeout=PUBLISH_TIMEOUT, headers=headers
                    )
                except Exception as exc:  # noqa: BLE001 - kept in the outbox and retried
                    self.counts["publish_failures"] += 1
                    log.warning("execution.publish_failed", execution_id=report.execution_id, error=repr(exc))
                    return False
                self._outbox.popleft()
                self.counts["reports_published"] += 1
                self._log_report(report, ack.seq, bool(ack.duplicate))
        return True

    def _log_report(self, report: executions_pb2.ExecutionReport, seq: int, duplicate: bool) -> None:
        with structlog.contextvars.bound_contextvars(
            strategy_id=report.strategy_id, client_order_id=report.client_order_id, execution_id=report.execution_id
        ):
            log.debug("execution.published", stream_seq=seq, duplicate=duplicate)
            event, level = _EXEC_EVENTS.get(report.exec_type, ("order.event", "info"))
            getattr(log, level)(
                event, symbol=report.symbol, status=executions_pb2.OrderStatus.Name(report.status),
                fill_qty=report.fill_qty, fill_price=report.fill_price, cum_qty=report.cum_qty,
                leaves_qty=report.leaves_qty, fee=report.fee, text=report.text,
            )

    # --- micro -------------------------------------------------------------------------------------

    async def _book(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.OrdersReply:
        orders = [
            o for o in self.broker.open_orders()
            if (not query.strategy_id or o.strategy_id == query.strategy_id)
            and (not query.symbol or o.symbol == query.symbol)
            and (not query.member_id or o.member_id == query.member_id)
        ]
        return ledger_pb2.OrdersReply(orders=orders[: query.limit or 100])

    async def _positions(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
        assert isinstance(self.broker, StreamingBroker)
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
            "unpublished_reports": len(self._outbox),
        }


async def _unsubscribe(sub: JetStreamContext.PullSubscription | None) -> None:
    if sub is not None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


def _delivered(msg: Msg) -> int:
    with contextlib.suppress(Exception):
        return int(msg.metadata.num_delivered)
    return 1


def _metadata(msg: Msg) -> int | None:
    with contextlib.suppress(Exception):
        return int(msg.metadata.sequence.stream)
    return None
