"""The gateway's async shell: routed orders in (JetStream work queue), execution reports out.

For each ``RoutedOrder`` on ``desk.broker.<venue>.orders`` (durable pull consumer
``gateway-<venue>``), the broker answers with execution reports; each is published to
``desk.exec.<strategy_id>`` with ``Nats-Msg-Id`` = execution id, and only once every report's PubAck
is in is the routed order acked (ack after store: no lost fill).

Batches (sim): up to ``GATEWAY_FETCH_BATCH`` routed orders are fetched at once and handed to the
broker in stream order; their reports go into the outbox, which is published in *waves* without
awaiting each PubAck in turn (:func:`next_wave`): a wave holds at most one report per order, so a
later report of an order (FILL) is only sent once its earlier one (NEW) is stored, whatever fails;
and fills keep their outbox order. Then the batch's routed orders are acked together. The Alpaca
broker takes one order at a time (its submits are REST calls of up to seconds each: orders waiting
in a batch behind them would outlive their ack wait and be redelivered while still in hand).

Reports go through one FIFO outbox: a report whose publish fails stays in it, ahead of everything
after it, and is retried (same execution id, so JetStream deduplicates); the batch's routed orders
are nak'ed so they come back; the broker ignores an order the second time and the outbox delivers
what is still owed.

Market data (``md.bar.>``, ``md.quote.>``, ``md.trade.>``) goes to the broker too: the sim fills
resting orders from it.

Start-up (sim, and alpaca before its stream starts): before the service answers, fetches a routed
order or sees market data, the broker's book is rebuilt from EXECUTIONS
(:meth:`BrokerGateway._restore_book`: every stored report of this venue, up to the stream's last
sequence at start, through an ordered consumer), so resting orders survive a crash (SIGKILL) and a
redelivered routed order is recognised (docs/faults.md, docs/alpaca.md "Crashes").

Shutdown: stop fetching, then publish EXPIRED for every order resting in the sim (a sim rule: the
venue closes with the process; the restored book then holds them as expired), then the lifecycle
drains the connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, PubAck
from nats.js.kv import KeyValue
from nats.micro.service import EndpointStats

import desk
from desk.bus import codec, streams, subjects
from desk.bus.decimals import parse_decimal
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime, StartFn
from desk.bus.logging import get_logger
from desk.bus.micro import DeskService, add_service
from desk.bus.pull import DurablePull, Outcome
from desk.bus.replay import replay_to_last
from desk.core.matching import MarketUpdate, SimConfig, SimEngine
from desk.core.orders import Reports
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2

from .brokers.base import Broker, BrokerUnavailable, RestorableBroker, StreamingBroker
from .brokers.sim import MarketClock, SimBroker
from .settings import Settings

NAME = "broker_gateway"
MSG_ID = "Nats-Msg-Id"
FETCH_TIMEOUT = 1.0  # seconds one pull waits; bounds how long a stop waits for the order loop
PUBLISH_TIMEOUT = 5.0
RETRY_PAUSE = 1.0
MAX_WAVE = 256  # reports published at once without awaiting a PubAck (publish_async allows 4,000)
RESTORE_TIMEOUT = 120.0  # seconds the start-up read of EXECUTIONS may take (sim)

log = get_logger(NAME)

_MD_TYPES: dict[str, type[MarketUpdate]] = {
    "md.bar.>": marketdata_pb2.Bar,
    "md.quote.>": marketdata_pb2.Quote,
    "md.trade.>": marketdata_pb2.Trade,
}

#: One line per report; NEW at debug (the router already logged the order as accepted, and a log line
#: costs the gateway ~7 % of its time per order under load: docs/performance.md).
_EXEC_EVENTS = {
    executions_pb2.EXEC_TYPE_NEW: ("order.new", "debug"),
    executions_pb2.EXEC_TYPE_PARTIAL_FILL: ("order.partially_filled", "info"),
    executions_pb2.EXEC_TYPE_FILL: ("order.filled", "info"),
    executions_pb2.EXEC_TYPE_CANCELED: ("order.canceled", "info"),
    executions_pb2.EXEC_TYPE_EXPIRED: ("order.expired", "info"),
    executions_pb2.EXEC_TYPE_REJECTED: ("order.rejected", "warning"),
    executions_pb2.EXEC_TYPE_CANCEL_REJECTED: ("order.cancel_rejected", "warning"),
}


def _carries_fill(report: executions_pb2.ExecutionReport) -> bool:
    if report.exec_type in (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL):
        return True
    try:
        return Decimal(report.fill_qty or "0") != 0
    except InvalidOperation:
        return True  # unreadable: treated as a fill (kept in order)


def next_wave(
    outbox: Iterable[executions_pb2.ExecutionReport], limit: int = MAX_WAVE
) -> list[executions_pb2.ExecutionReport]:
    """The reports of ``outbox`` to publish together now, in outbox order.

    A wave holds at most one report per order (strategy id, order id): a report whose order already
    has one in the wave, or one held back, is held back too, so the reports of one order reach the
    stream in outbox order even if a publish fails (NEW before FILL). A fill is also held back once
    any fill is, so fills of different orders keep their outbox order (positions and realized P&L
    are booked in that order). Only reports without a fill (NEW, CANCELED, ...) of other orders may
    go ahead of held-back ones. The sim's batch ``NEW1 FILL1 NEW2 FILL2 ...`` goes out as two
    waves: every NEW, then every FILL.
    """
    wave: list[executions_pb2.ExecutionReport] = []
    taken: set[tuple[str, str]] = set()
    held: set[tuple[str, str]] = set()
    holding_fill = False
    for report in outbox:
        if len(wave) >= limit:
            break
        key = (report.strategy_id, report.order_id)
        fill = _carries_fill(report)
        if key in taken or key in held or (fill and holding_fill):
            held.add(key)
            holding_fill = holding_fill or fill
            continue
        wave.append(report)
        taken.add(key)
    return wave


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
        market = MarketClock(fallback=clock)  # the venue's time is its market data's (see brokers/sim.py)
        return SimBroker(SimEngine(config, clock=market), market)
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
        self._orders_pull: DurablePull | None = None
        self.counts: collections.Counter[str] = collections.Counter()

    # --- lifecycle ---------------------------------------------------------------------------------

    async def start(self, runtime: ServiceRuntime) -> None:
        self._js = runtime.js
        await streams.ensure_stream(runtime.js, streams.EXECUTIONS)
        await streams.ensure_stream(runtime.js, streams.ORDERS)
        if isinstance(self.broker, RestorableBroker):  # sim, and alpaca (before its start below)
            await self._restore_book(runtime)
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

    async def _restore_book(self, runtime: ServiceRuntime) -> None:
        """Rebuild the sim's book from every stored report of this venue (before any order or price).

        EXECUTIONS is read from its start up to its last sequence at this moment
        (:func:`desk.bus.replay.replay_to_last`; nothing of this venue is published meanwhile: one
        gateway per venue). Reports the restore makes (an IOC/FOK order left open by the crash is
        canceled) go out first.
        """
        assert isinstance(self.broker, RestorableBroker)
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

        replayed = await replay_to_last(runtime.js, subjects.STREAM_EXECUTIONS, subjects.EXEC_ALL, on_report,
                                        timeout=RESTORE_TIMEOUT)
        last_seq = replayed.last_seq
        made = self.broker.restore(stored)
        if isinstance(self.broker, SimBroker):
            unreadable += self.broker.engine.restore_skipped
        self.counts["restored_open_orders"] = len(self.broker.open_orders())
        log.info("book.restored", venue=self.venue, last_seq=last_seq, reports=len(stored),
                 open_orders=self.counts["restored_open_orders"], canceled=len(made), unreadable=unreadable)
        if made:
            self._outbox.extend(made)
            if not await self._flush():
                log.error("execution.unpublished", count=len(self._outbox))  # retried with the next flush

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
        if isinstance(self.broker, StreamingBroker):
            return 1
        return max(1, min(self.settings.gateway_fetch_batch, self.settings.gateway_max_ack_pending))

    async def _consume_orders(self, runtime: ServiceRuntime) -> None:
        """Fetch routed orders (a batch at a time) until the service stops, through reconnects,
        elections and a lost consumer (:class:`desk.bus.pull.DurablePull`). A consumer found with
        other settings is kept as it is, with a warning (creating and changing it is provisioning's)."""
        self._orders_pull = DurablePull(
            runtime.js, subjects.STREAM_ORDERS, self._consumer_config(), batch_handler=self._handle_orders,
            batch=self.fetch_batch(), fetch_timeout=FETCH_TIMEOUT, ack_sync=True, ack_timeout=PUBLISH_TIMEOUT,
            nak_delay=RETRY_PAUSE, update=False, stop=runtime.stop,
        )
        if await self._orders_pull.ensure() is not None:
            log.info("orders.subscribed", durable=self.durable, subject=self.orders_subject)
            await self._orders_pull.run()

    async def _handle_orders(self, messages: list[Msg]) -> Outcome:
        """Hand a batch to the broker in order and publish every report; then the routed orders owed
        an ack are acked (confirmed: the work queue lets them go after the reports are stored).
        Refused, failed and deferred ones were settled on the way (term / nak)."""
        self.counts["order_batches"] += 1
        owed = [msg for msg in messages if await self._take_order(msg)]
        if owed and not await self._flush():
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
            if not reports and not isinstance(self.broker, StreamingBroker):
                log.info("order.duplicate", action=action)
            self._outbox.extend(reports)
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

    def _emit(self, reports: Reports) -> asyncio.Task[bool] | None:
        """A streaming broker's sink: queue the reports in order, publish them soon; the returned task
        is True once they are stored (a broker that must not act before they are awaits it)."""
        if not reports:
            return None
        self._outbox.extend(reports)
        task = asyncio.create_task(self._flush_soon(), name="gateway.flush")
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        return task

    async def _flush(self) -> bool:
        """Publish the whole outbox, wave by wave (:func:`next_wave`); False if a publish failed.

        The reports of a wave are sent in order without awaiting each PubAck; a confirmed report
        leaves the outbox, a failed one stays where it was (retried with the same ``Nats-Msg-Id``
        before anything after it) and the flush stops there.
        """
        async with self._publish_lock:
            while self._outbox:
                wave = next_wave(self._outbox)
                confirmed, ok = await self._publish_wave(wave)
                if confirmed:
                    remaining = [r for r in self._outbox if id(r) not in confirmed]
                    self._outbox.clear()
                    self._outbox.extend(remaining)
                if not ok:
                    return False
        return True

    async def _publish_wave(self, wave: list[executions_pb2.ExecutionReport]) -> tuple[set[int], bool]:
        """Send ``wave`` in order, then await all PubAcks; the ids of the confirmed reports, and all ok."""
        assert self._js is not None
        sent: list[tuple[executions_pb2.ExecutionReport, asyncio.Future[PubAck]]] = []
        ok = True
        for report in wave:
            report.report_ns = self._clock()
            data, headers = codec.encode(report)
            headers[MSG_ID] = report.execution_id
            try:
                future = await self._js.publish_async(
                    subjects.execution(report.strategy_id), data, headers=headers
                )
            except Exception as exc:  # noqa: BLE001 - kept in the outbox and retried
                self._publish_failed(report, exc)
                ok = False
                break
            sent.append((report, future))
        if sent:
            await asyncio.wait([future for _, future in sent], timeout=PUBLISH_TIMEOUT)
        confirmed: set[int] = set()
        for report, future in sent:
            if not future.done():
                future.cancel()
                self._publish_failed(report, TimeoutError(f"no PubAck within {PUBLISH_TIMEOUT} s"))
                ok = False
            elif future.cancelled() or future.exception() is not None:
                self._publish_failed(report, future.exception() if not future.cancelled() else None)
                ok = False
            else:
                ack = future.result()
                confirmed.add(id(report))
                self.counts["reports_published"] += 1
                self._log_report(report, ack.seq, bool(ack.duplicate))
        return confirmed, ok

    def _publish_failed(self, report: executions_pb2.ExecutionReport, exc: BaseException | None) -> None:
        self.counts["publish_failures"] += 1
        log.warning("execution.publish_failed", execution_id=report.execution_id, error=repr(exc))

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
