"""The ledger's async shell: EXECUTIONS consumer -> SQLite, KV watches, snapshots, query endpoints.

Replicas: every ledger instance is a full replica of the books, with its own SQLite file (one ledger
per file: :mod:`services.ledger.filelock`) and its own durable consumer (``ledger``, or
``ledger-<LEDGER_INSTANCE>``); each books every execution and answers the read endpoints (one queue
group: a query goes to any replica). The ledger publishes nothing but its own consumer's acks, so no
lease is needed: there is no side effect for two replicas to duplicate (docs/cluster.md).

Consumption: durable pull consumer ``ledger`` on ``EXECUTIONS`` (explicit ack), run by
:class:`desk.bus.pull.DurablePull` (re-subscribes after a reconnect, retries timeouts, 503s and
elections, re-creates a deleted consumer; its counters are in every endpoint's STATS data under
``consumer``). Its fetcher fetches batches of up to ``LEDGER_BATCH_SIZE`` messages and decodes them
while the writer books the previous batch; each batch is booked in ONE SQLite transaction,
committed, and only then are its messages acked, batch after batch in fetch order. A crash between
commit and ack redelivers the batch; the store skips execution ids it already has, so nothing is
booked twice. Messages that do not decode are logged (``execution.malformed``), stored nowhere, and
terminated so they never block the consumer. A batch the store fails to commit ends the service
(nothing of it acked: redelivered to the next ledger).

Observable state: :meth:`LedgerService.wait_for` awaits a condition on :class:`LedgerStats`, which
is updated after every committed-and-acked batch and every equity snapshot (an ``asyncio.Event``
set per change, no lock on the booking path; no polling). Tests wait on it rather than on time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

import structlog
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.micro.service import EndpointStats

import desk
from desk.bus import codec, kv, streams, subjects
from desk.bus.decimals import fmt, parse_decimal
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from desk.bus.pull import DurablePull, Outcome
from desk.core.books import Booking, parse_booking
from desk.v1 import executions_pb2, ledger_pb2, marketdata_pb2, strategy_pb2
from services.ledger import queries
from services.ledger.filelock import FileLock
from services.ledger.settings import Settings
from services.ledger.store import LedgerStore
from services.ledger.writer import BatchResult, now_ns

NAME = "ledger"
R = TypeVar("R", bound=Message)
ACK_WAIT = 30.0
#: Batches fetched and not yet booked, the one in the writer included (3 x LEDGER_BATCH_SIZE stays
#: below the consumer's max_ack_pending of 4 x LEDGER_BATCH_SIZE).
PREFETCH = 3
#: Messages decoded between two yields to the event loop (see LedgerService._decode_yielding).
DECODE_SLICE = 32
log = get_logger("ledger")


@dataclass
class LedgerStats:
    """Counters of what this ledger process has done (also the test hook's state)."""

    batches: int = 0
    messages: int = 0  # acked or terminated, after their batch committed
    fills_booked: int = 0
    events_stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    snapshots: int = 0
    strategies_seen: int = 0
    prices_seen: int = 0


@dataclass
class _Batch:
    """One fetch, decoded: the bookings of the good messages, and the malformed ones."""

    msgs: list[Msg]
    good: list[Msg] = field(default_factory=list)
    bookings: list[Booking] = field(default_factory=list)
    bad: list[Msg] = field(default_factory=list)
    result: BatchResult | None = None  # once booked


class LedgerService:
    """``start`` wires everything onto a :class:`ServiceRuntime`; construction does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = LedgerStore(settings.ledger_db_path, settings.ledger_default_initial_cash)
        self.stats = LedgerStats()
        self.prices: dict[str, Decimal] = {}
        self._changed = asyncio.Event()
        self._runtime: ServiceRuntime | None = None
        self.consumer: DurablePull | None = None

    # -- observable state -------------------------------------------------------------------------

    async def wait_for(self, predicate: Callable[[LedgerStats], bool], timeout: float = 10.0) -> LedgerStats:
        """Wait until ``predicate(stats)`` holds (checked after every batch, snapshot and KV update)."""
        async with asyncio.timeout(timeout):
            while not predicate(self.stats):
                await self._changed.wait()
        return self.stats

    async def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()  # wake every waiter, for the next change
        changed.set()

    # -- start ----------------------------------------------------------------------------------

    @property
    def durable(self) -> str:
        """This replica's consumer on EXECUTIONS: ``ledger`` (the single ledger's) or ``ledger-<instance>``."""
        instance = self.settings.ledger_instance
        return f"{subjects.LEDGER_DURABLE}-{instance}" if instance else subjects.LEDGER_DURABLE

    async def start(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        lock = FileLock(self.settings.ledger_db_path).take()  # FileInUse: another ledger writes this file
        runtime.stack.callback(lock.release)
        await self.store.open()
        runtime.stack.push_async_callback(self.store.close)

        js = runtime.js
        await streams.ensure_stream(js, streams.EXECUTIONS)
        await streams.ensure_bucket(js, subjects.KV_PRICES)
        await streams.ensure_bucket(js, subjects.KV_STRATEGIES)
        # Specs and prices first, so the first batch already knows members and initial cash. Only
        # checked values (desk.bus.kv): labelled, and the id inside equal to the key.
        await kv.follower(js, subjects.KV_STRATEGIES, self._on_strategy).start(runtime)
        await kv.follower(js, subjects.KV_PRICES, self._on_price).start(runtime)

        self.consumer = consumer = DurablePull(
            js,
            subjects.STREAM_EXECUTIONS,
            self._consumer_config(),
            batch_handler=self._book,
            prepare=self._decode_yielding,
            after=self._booked,
            batch=self.settings.ledger_batch_size,
            fetch_timeout=self.settings.ledger_fetch_timeout,
            prefetch=PREFETCH,
            linger=self.settings.ledger_linger,
            on_handler_error=None,  # the store failed: stop, nothing of the batch acked
            stop=runtime.stop,
        )
        info = await consumer.ensure()  # created (or brought to our config), retried through elections

        svc = await add_service(runtime, NAME, desk.__version__, "the desk's books: orders, fills, positions, P&L")
        refusals = svc.stats_data

        def stats_data(endpoint: EndpointStats) -> dict[str, Any]:
            return {**refusals(endpoint), "consumer": consumer.stats_data()}

        svc.stats_data = stats_data  # type: ignore[method-assign]
        await svc.add_endpoint("positions", subjects.LEDGER_POSITIONS, ledger_pb2.LedgerQuery, self.positions)
        await svc.add_endpoint("orders", subjects.LEDGER_ORDERS, ledger_pb2.LedgerQuery, self.orders)
        await svc.add_endpoint("fills", subjects.LEDGER_FILLS, ledger_pb2.LedgerQuery, self.fills)
        await svc.add_endpoint("pnl", subjects.LEDGER_PNL, ledger_pb2.LedgerQuery, self.pnl)
        await svc.add_endpoint("leaderboard", subjects.LEDGER_LEADERBOARD, ledger_pb2.LedgerQuery, self.leaderboard)
        await svc.add_endpoint("equity", subjects.LEDGER_EQUITY, ledger_pb2.LedgerQuery, self.equity)
        # A strategy's own books (its NATS user may publish only these): scoped by the subject.
        for kind, handler in (
            (subjects.LEDGER_POSITIONS, self.positions),
            (subjects.LEDGER_ORDERS, self.orders),
            (subjects.LEDGER_PNL, self.pnl),
        ):
            await svc.add_endpoint(
                f"own_{subjects.token(kind, -1)}",
                subjects.ledger_own(kind, "*"),
                ledger_pb2.LedgerQuery,
                _scoped_to_subject(handler),
            )

        consuming = runtime.spawn(consumer.run(), "ledger.consume")
        runtime.spawn(self._snapshots(runtime), "ledger.snapshots")

        async def finish_batch() -> None:
            # Runs before the spawn's cancel (LIFO): the loop sees ``stop`` and ends after the batch
            # in hand is committed and acked, instead of being cancelled in the middle of it.
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(consuming), self.settings.drain_timeout)

        runtime.stack.push_async_callback(finish_batch)
        log.info(
            "ledger.ready",
            db=str(self.store.path),
            consumer=self.durable,
            resume_stream_seq=info.ack_floor.stream_seq if info and info.ack_floor else 0,
            pending=info.num_pending if info else 0,
            ack_pending=info.num_ack_pending if info else 0,
            schema_version=await self.store.schema_version(),
        )

    # -- consumer -------------------------------------------------------------------------------

    def _consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.durable,
            name=self.durable,
            filter_subject=subjects.EXEC_ALL,
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_ack_pending=max(1000, self.settings.ledger_batch_size * 4),
            description="the ledger: books every execution once",
        )

    async def _decode_yielding(self, msgs: list[Msg]) -> _Batch:
        """Decode and check every message (the malformed are logged here and terminated once the batch
        is booked), in slices, yielding to the event loop between them: a batch the writer has just
        committed is acked, and the next one handed to the writer, without waiting for the rest."""
        batch = _Batch(msgs)
        now = now_ns()
        for start in range(0, len(msgs), DECODE_SLICE):
            self._decode_into(batch, msgs[start : start + DECODE_SLICE], now)
            await asyncio.sleep(0)  # a yield, not a wait
        return batch

    def _decode_into(self, batch: _Batch, msgs: list[Msg], now: int) -> None:
        decode, report_type = codec.decode, executions_pb2.ExecutionReport
        for msg in msgs:
            report: executions_pb2.ExecutionReport | None = None
            try:
                report = decode(msg.data, report_type, msg.headers)
                batch.bookings.append(parse_booking(report, msg.data, now))
                batch.good.append(msg)
            except DeskError as err:
                batch.bad.append(msg)
                with structlog.contextvars.bound_contextvars(
                    execution_id=report.execution_id if report else "", strategy_id=report.strategy_id if report else ""
                ):
                    log.warning(
                        "execution.malformed",
                        subject=msg.subject,
                        stream_seq=_stream_seq(msg),
                        code=err.code,
                        reason=err.message,
                    )

    async def _book(self, batch: _Batch) -> list[Outcome]:
        """Book ``batch`` in one transaction; once it is committed, the good are acked and the bad
        terminated (by the consumer, in fetch order), then :meth:`_booked` counts them."""
        batch.result = await self.store.apply_batch(batch.bookings)
        bad = {id(msg) for msg in batch.bad}
        return [Outcome.TERM if id(msg) in bad else Outcome.ACK for msg in batch.msgs]

    async def _booked(self, batch: _Batch, outcomes: Sequence[Outcome]) -> None:
        result = batch.result
        assert result is not None
        if result.duplicates:
            log.debug("execution.duplicates", execution_ids=result.duplicates)
        msgs = batch.msgs
        self.stats.batches += 1
        self.stats.messages += len(msgs)
        self.stats.fills_booked += result.fills_booked
        self.stats.events_stored += result.events_stored
        self.stats.duplicates += len(result.duplicates)
        self.stats.malformed += len(batch.bad)
        log.info(
            "fills.booked",
            count=result.fills_booked,
            events=result.events_stored,
            duplicates=len(result.duplicates),
            malformed=len(batch.bad),
            last_stream_seq=_stream_seq(msgs[-1]) if msgs else 0,
        )
        await self._notify()

    # -- KV watches -----------------------------------------------------------------------------

    async def _on_strategy(self, change: kv.Change[strategy_pb2.StrategySpec]) -> None:
        if change.value is None:
            return  # a strategy undeployed keeps its books
        try:
            spec = change.value
            strategy_id = change.key
            if not subjects.STRATEGY_ID_RE.match(strategy_id):
                raise DeskError("INVALID_FIELD", f"strategy_id {strategy_id!r} is not a valid strategy id")
            initial = parse_decimal("initial_cash", spec.initial_cash, required=False)
        except DeskError as err:
            log.warning("strategy.malformed", key=change.key, code=err.code, reason=err.message)
            return
        await self.store.upsert_strategy(strategy_id, spec.member_id, initial, spec.name, now_ns())
        self.stats.strategies_seen += 1
        log.info("strategy.upserted", strategy_id=strategy_id, member_id=spec.member_id, initial_cash=fmt(initial))
        await self._notify()

    async def _on_price(self, change: kv.Change[marketdata_pb2.Trade]) -> None:
        if change.value is None:
            self.prices.pop(change.key, None)
            return
        try:
            price = parse_decimal("price", change.value.price)
        except DeskError as err:
            log.warning("price.malformed", key=change.key, code=err.code, reason=err.message)
            return
        assert price is not None
        self.prices[change.key] = price
        self.stats.prices_seen += 1
        await self._notify()

    # -- equity snapshots -----------------------------------------------------------------------

    async def _snapshots(self, runtime: ServiceRuntime) -> None:
        while True:
            try:
                await asyncio.wait_for(runtime.stop.wait(), self.settings.ledger_snapshot_interval)
                return
            except TimeoutError:
                pass
            written = await self.snapshot()
            log.debug("equity.snapshot", strategies=written)

    async def snapshot(self) -> int:
        """Write one equity row per strategy, valued at the last known prices."""
        ts = now_ns()
        valuations = await self._valuations("", "")
        rows = [
            ledger_pb2.EquityPoint(
                strategy_id=v.strategy_id,
                member_id=v.member_id,
                ts_ns=ts,
                equity=fmt(v.equity),
                cash=fmt(v.cash),
                realized_pnl=fmt(v.realized_pnl),
                unrealized_pnl=fmt(v.unrealized_pnl),
            )
            for v in valuations
        ]
        written = await self.store.write_snapshots(rows)
        self.stats.snapshots += 1
        await self._notify()
        return written

    # -- queries --------------------------------------------------------------------------------

    async def _valuations(self, strategy_id: str, member_id: str) -> list[queries.Valuation]:
        accounts = await self.store.accounts(strategy_id, member_id)
        positions = await self.store.positions(strategy_id, member_id)
        counts = await self.store.fill_counts()
        by_strategy: dict[str, list[Any]] = {}
        for row in positions:
            by_strategy.setdefault(row.strategy_id, []).append(row.position)
        return [
            queries.value_strategy(
                a.strategy_id,
                a.member_id,
                a.account,
                by_strategy.get(a.strategy_id, []),
                self.prices,
                counts.get(a.strategy_id, 0),
            )
            for a in accounts
        ]

    async def positions(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PositionsReply:
        _check_query(query)
        rows = await self.store.positions(query.strategy_id, query.member_id, query.symbol)
        reply = ledger_pb2.PositionsReply(
            positions=[
                queries.position_message(
                    r.strategy_id, r.member_id, r.position, self.prices.get(r.position.symbol), r.updated_ns
                )
                for r in rows[: queries.effective_limit(query.limit)]
            ]
        )
        return _fit(reply, reply.positions)

    async def orders(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.OrdersReply:
        _check_query(query)
        reply = ledger_pb2.OrdersReply(orders=await self.store.orders(query, queries.effective_limit(query.limit)))
        return _fit(reply, reply.orders)

    async def fills(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.FillsReply:
        _check_query(query)
        reply = ledger_pb2.FillsReply(fills=await self.store.fills(query, queries.effective_limit(query.limit)))
        return _fit(reply, reply.fills)

    async def pnl(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.PnlReply:
        _check_query(query)
        valuations = await self._valuations(query.strategy_id, query.member_id)
        limit = queries.effective_limit(query.limit)
        reply = ledger_pb2.PnlReply(
            strategies=[v.to_row() for v in valuations[:limit]],
            members=[m.to_row() for m in queries.member_totals(valuations)[:limit]],
        )
        return _fit(reply, reply.strategies)

    async def leaderboard(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.LeaderboardReply:
        _check_query(query)
        valuations = await self._valuations(query.strategy_id, query.member_id)
        rows = queries.leaderboard(queries.member_totals(valuations))
        reply = ledger_pb2.LeaderboardReply(rows=rows[: queries.effective_limit(query.limit)])
        return _fit(reply, reply.rows)

    async def equity(self, query: ledger_pb2.LedgerQuery, subject: str) -> ledger_pb2.EquityReply:
        _check_query(query)
        reply = ledger_pb2.EquityReply(points=await self.store.equity(query, queries.effective_limit(query.limit)))
        return _fit(reply, reply.points, from_front=True)


def _scoped_to_subject(
    handler: Callable[[ledger_pb2.LedgerQuery, str], Awaitable[R]],
) -> Callable[[ledger_pb2.LedgerQuery, str], Awaitable[R]]:
    """``handler`` for the strategy named by the subject's last token only (member filter dropped)."""

    async def scoped(query: ledger_pb2.LedgerQuery, subject: str) -> R:
        strategy_id = subjects.token(subject, -1)
        if not subjects.STRATEGY_ID_RE.match(strategy_id):
            raise DeskError("WRONG_SUBJECT", f"{subject!r} does not end in a valid strategy id")
        if query.strategy_id and query.strategy_id != strategy_id:
            raise DeskError(
                "WRONG_SUBJECT",
                f"strategy_id {query.strategy_id!r} does not match the subject's strategy {strategy_id!r}: "
                "a strategy's own query reads only its own books",
            )
        own = ledger_pb2.LedgerQuery()
        own.CopyFrom(query)
        own.strategy_id, own.member_id = strategy_id, ""
        return await handler(own, subject)

    return scoped


def _check_query(query: ledger_pb2.LedgerQuery) -> None:
    if query.strategy_id and not subjects.STRATEGY_ID_RE.match(query.strategy_id):
        raise DeskError("INVALID_FIELD", f"strategy_id {query.strategy_id!r} is not a valid strategy id")
    if query.symbol and not subjects.SYMBOL_RE.match(query.symbol):
        raise DeskError("INVALID_FIELD", f"symbol {query.symbol!r} is not a valid symbol")
    if len(query.member_id) > 64:
        raise DeskError("INVALID_FIELD", "member_id is longer than 64 characters")
    if query.since_ns < 0:
        raise DeskError("INVALID_FIELD", "since_ns must not be negative")


def _fit(reply: R, rows: Any, from_front: bool = False) -> R:
    """Drop rows until the reply fits the desk's message limit (callers refuse larger bodies)."""
    while rows and reply.ByteSize() > codec.MAX_MESSAGE_BYTES - 1024:
        del rows[0 if from_front else -1]
    return reply


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - only for logging
        return 0
