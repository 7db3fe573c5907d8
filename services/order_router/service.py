"""The order router's async shell: KV watches, the executions follower and the micro endpoints.

All decisions live in :mod:`desk.core.orders` and :mod:`desk.core.risk`, the kill switch's state in
:mod:`services.order_router.halts` and the order-id bookkeeping and acks in
:mod:`services.order_router.acks` (both pure); this module only moves messages:

* ``submit`` (``desk.order.submit.*``): decode -> subject/fields -> known strategy and symbol -> halt
  -> idempotency -> a gateway serves ``ROUTER_VENUE`` (:mod:`.venue`; else ``VENUE_UNAVAILABLE``) -> risk
  -> publish ``RoutedOrder`` (``Nats-Msg-Id`` = order id, retried through an election for
  :data:`ROUTE_DEADLINE` with that id: :meth:`OrderRouterService._routed_before` says when a
  ``duplicate`` PubAck is our own attempt) -> reply, and store the ack in ``DESK_ORDER_IDS`` (written
  as the reply goes out, not awaited before it; the create is retried, docs/cluster.md). Up to
  ``SUBMIT_CONCURRENCY`` orders are handled at once: the risk check and the reservation are one step
  (no await between), a reservation is released if routing fails, and a request repeating a client
  order id that is still being handled waits for its ack.

  Idempotency costs no server round trip: every replica watches the keys of ``DESK_ORDER_IDS``
  (headers only) into ``order_ids``, so "seen before?" is a set lookup; a repeat that no replica has
  recorded yet (milliseconds) is caught by JetStream's duplicate window on the routed order's
  ``Nats-Msg-Id`` (the order id is derived from strategy and client order id), and then its stored ack
  is read. One round trip (the routed order's publish) stands between a request and its ack.
* **Partitions** (:mod:`.partitions`): every replica gets every submit and cancel (a queue group of
  its own) and answers those of the strategies whose partition lease it holds, so one replica at a
  time enforces a strategy's limits; a partition taken over has its rate-limit windows rebuilt from
  ``DESK_ORDER_IDS`` first (:meth:`OrderRouterService._on_take`).
* ``cancel`` (``desk.order.cancel.*``): forwards a ``RoutedOrder{cancel}`` for an open order (also
  while halted).
* ``halt`` / ``resume`` / ``risk_status`` (``desk.risk.*``): the kill switch in ``DESK_RISK``; every
  replica watches the bucket, so a halt applies everywhere and survives restarts.

Start-up loads the three KV buckets and replays the whole ``EXECUTIONS`` stream up to its last
sequence (:func:`desk.bus.replay.replay_to_last`) before the endpoints are registered, so a replica
never answers from half-built accounts; from there an ordered push consumer follows it
(:func:`desk.bus.replay.follow`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import structlog
from nats.aio.msg import Msg
from nats.js.errors import KeyDeletedError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KeyValue

import desk
from desk.bus import codec, kv, retry, streams, subjects
from desk.bus.decimals import dec, fmt
from desk.bus.errors import DeskError
from desk.bus.kv import Change, KvFollower
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from desk.bus.replay import follow, replay_to_last
from desk.core.ids import order_id_for
from desk.core.orders import ValidOrder, check_known, refusal, validate_cancel, validate_halt, validate_order
from desk.core.risk import RATE_WINDOW_SECONDS, Clock, Limits, VirtualAccount, report_numbers
from desk.specs import validate_spec
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2, strategy_pb2
from services.order_router.acks import AckT, OrderIds, accepted_ack, duplicate_of, refused_ack, stored_ack_matches
from services.order_router.halts import Halts
from services.order_router.partitions import Partitions
from services.order_router.settings import Settings
from services.order_router.venue import VenueCheck

NAME = "order_router"

log = get_logger(NAME)

#: Orders one replica handles at once (each waits on three server round trips). Safe because the
#: risk check and the reservation happen without an await between them, and a second request with
#: the same client order id waits for the first (``OrderRouterService._in_flight``).
SUBMIT_CONCURRENCY = 32
#: How long a cancel of an order no replica has recorded waits for another replica's ack to be stored.
CANCEL_GRACE = 0.25
#: The bucket's TTL (desk.bus.streams), and how often the router forgets the keys it has expired.
ORDER_IDS_TTL = streams.BUCKETS[subjects.KV_ORDER_IDS].ttl or 7 * streams.DAY
ORDER_IDS_PRUNE_EVERY = 600.0
#: Routing a publish to ORDERS through an election (desk.bus.retry.publish, same Nats-Msg-Id): each
#: attempt waits ROUTE_TIMEOUT at the most, and no attempt starts after ROUTE_DEADLINE, so an order
#: is answered (INTERNAL when the stream still has no leader) within ~1.1 s: below the fault suites'
#: 2 s request timeout and the SDK's 5 s one, which re-send it with the same client order id.
ROUTE_TIMEOUT = 0.5
ROUTE_DEADLINE = 1.0
#: Reading a stored ack (DESK_ORDER_IDS) inside a request: per attempt, and retried for at most.
READ_TIMEOUT = 0.5
READ_DEADLINE = 1.0
#: Storing an ack (DESK_ORDER_IDS, in the background): retried well inside ORDERS' 2-minute window.
STORE_DEADLINE = 30.0
#: The kill switch's KV writes (a halt's put, a resume's delete marker), retried for at most.
RISK_DEADLINE = 3.0


class OrderRouterService:
    """One router replica. Construct (no I/O), then ``await start(runtime)`` inside ``serve``."""

    def __init__(self, settings: Settings, clock: Clock = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self.defaults = Limits(
            max_order_notional=settings.router_default_max_order_notional,
            max_position_notional=settings.router_default_max_position_notional,
            max_orders_per_minute=settings.router_default_max_orders_per_minute,
            allow_short=False,
        )
        self.prices: dict[str, Decimal | None] = {}  # symbol -> last price (None: unusable)
        self.strategies: dict[str, strategy_pb2.StrategySpec] = {}
        self.halts = Halts()  # DESK_RISK, by the KV revisions applied
        self.accounts: dict[str, VirtualAccount] = {}
        self.applied_executions: set[str] = set()
        # set (and replaced) after every KV update and execution report: what wait_until waits on
        self._changed = asyncio.Event()
        self._runtime: ServiceRuntime | None = None
        self._kv: dict[str, KeyValue] = {}
        self.followers: dict[str, KvFollower[Any]] = {}  # bucket -> its checked follower
        # order-id key -> the submit handling it now; resolves to its ack (None when it failed)
        self._in_flight: dict[str, asyncio.Future[orders_pb2.OrderAck | None]] = {}
        #: keys of DESK_ORDER_IDS (``<strategy>.<client order id>``) -> when stored (epoch s): every order
        #: accepted within the bucket's TTL (expiry does not reach a watch: see prune_order_ids)
        self.order_ids = OrderIds(ORDER_IDS_TTL, ORDER_IDS_PRUNE_EVERY, time.time())
        self._storing: set[asyncio.Task[None]] = set()  # acks being written to DESK_ORDER_IDS
        self.venue: VenueCheck | None = None  # is ROUTER_VENUE served by a gateway? (venue.py)
        #: the strategies this replica answers for (partitions.py); set in start
        self.partitions = Partitions(
            settings.router_partitions,
            settings.service_instance,
            on_take=self._on_take,
            drain=self._drain_partition,
            on_change=self._signal,
        )

    # -- start-up ---------------------------------------------------------------------------------
    async def start(self, runtime: ServiceRuntime) -> None:
        self._runtime = runtime
        js = runtime.js
        await streams.ensure_stream(js, streams.ORDERS)
        await streams.ensure_stream(js, streams.EXECUTIONS)
        self.venue = VenueCheck(js, self.settings.router_venue, self.settings.router_venue_wait)
        for bucket in (subjects.KV_PRICES, subjects.KV_STRATEGIES, subjects.KV_RISK, subjects.KV_ORDER_IDS):
            self._kv[bucket] = await streams.ensure_bucket(js, bucket)

        await self._watch(runtime, subjects.KV_STRATEGIES, self._on_strategy)
        await self._watch(runtime, subjects.KV_PRICES, self._on_price)
        await self._watch(runtime, subjects.KV_RISK, self._on_risk)
        await self._watch(runtime, subjects.KV_ORDER_IDS, self._on_order_id, meta_only=True)
        await self._follow_executions(runtime)
        # Accounts and order ids are current: take this replica's share of the partitions (all, alone).
        await self.partitions.start(runtime, self.settings.lease_ttl)
        # Unwound after the endpoints have stopped and their requests finished (the stack is LIFO).
        runtime.stack.push_async_callback(self._finish_storing)

        svc = await add_service(
            runtime,
            NAME,
            desk.__version__,
            "validation, pre-trade risk and routing of strategy orders",
            metadata={"venue": self.settings.router_venue},
        )
        # Orders and cancels: every replica gets each one (a queue group of its own), and answers it
        # only when it holds the strategy's partition. Halts and status: any one replica (the default).
        own_group = f"{NAME}-{self.partitions.holder.term}"
        await svc.add_endpoint(
            "submit",
            subjects.ORDER_SUBMIT_ALL,
            orders_pb2.OrderRequest,
            self.submit,
            error_body=self._order_refused,
            concurrency=SUBMIT_CONCURRENCY,
            queue_group=own_group,
            accept=self.answers,
        )
        await svc.add_endpoint(
            "cancel",
            subjects.ORDER_CANCEL_ALL,
            orders_pb2.CancelRequest,
            self.cancel,
            error_body=self._cancel_refused,
            queue_group=own_group,
            accept=self.answers,
        )
        await svc.add_endpoint("halt", subjects.RISK_HALT, orders_pb2.HaltRequest, self.halt)
        await svc.add_endpoint("resume", subjects.RISK_RESUME, orders_pb2.HaltRequest, self.resume)
        await svc.add_endpoint("risk_status", subjects.RISK_STATUS, orders_pb2.HaltRequest, self.risk_status)
        log.info(
            "router.ready",
            venue=self.settings.router_venue,
            strategies=len(self.strategies),
            symbols=len(self.prices),
            halts=self.halts.keys(),
            executions=len(self.applied_executions),
            partitions=self.partitions.holds(),
        )

    async def _watch(
        self, runtime: ServiceRuntime, bucket: str, apply: Callable[[Change[Any]], None], meta_only: bool = False
    ) -> None:
        """Follow every key of ``bucket`` (checked values only: desk.bus.kv); returns once the current
        values are applied."""

        async def applied(change: Change[Any]) -> None:
            try:
                apply(change)
            except DeskError as err:
                log.warning("kv.bad_value", bucket=bucket, key=change.key, code=err.code, error=err.message)
            await self._notify()

        self.followers[bucket] = follower = kv.follower(runtime.js, bucket, applied, meta_only=meta_only)
        await follower.start(runtime, self.settings.router_startup_timeout)

    def _on_strategy(self, change: Change[strategy_pb2.StrategySpec]) -> None:
        if change.value is None:
            self.strategies.pop(change.key, None)
            return
        validate_spec(change.value)  # the rules deploy applies (desk.specs): a refused spec is no strategy
        self.strategies[change.key] = change.value
        account = self.accounts.get(change.key)
        if account is not None:
            account.initial_cash = self._initial_cash(change.key)

    def _on_price(self, change: Change[marketdata_pb2.Trade]) -> None:
        if change.value is None:
            self.prices.pop(change.key, None)
            return
        try:
            price: Decimal | None = dec(change.value.price)
        except ArithmeticError:
            price = None
        self.prices[change.key] = price if price is not None and price.is_finite() and price > 0 else None

    def _on_order_id(self, change: Change[orders_pb2.OrderAck]) -> None:
        if change.value is None:
            self.order_ids.forget(change.key)
            return
        now = time.time()
        self.order_ids.record(change.key, change.created.timestamp() if change.created is not None else now)
        if self.order_ids.prune_due(now):
            self.prune_order_ids(now)

    def prune_order_ids(self, now: float) -> int:
        """Forget the keys DESK_ORDER_IDS has expired (its TTL); returns how many were dropped."""
        expired = self.order_ids.prune(now)
        if expired:
            log.info("order_ids.pruned", expired=expired, kept=len(self.order_ids))
        return expired

    def _on_risk(self, change: Change[orders_pb2.HaltRequest]) -> None:
        # Our own halt/resume already applied its revision; an older event must not undo a newer one.
        if not self.halts.apply(change.key, change.revision, change.value):
            return
        if change.value is None:
            log.info("risk.resumed", key=change.key, source="watch")
        else:
            log.warning("risk.halted", key=change.key, reason=change.value.reason, source="watch")

    async def _follow_executions(self, runtime: ServiceRuntime) -> None:
        """Every report of EXECUTIONS up to its last sequence now, then each new one as it comes;
        returns once the start-up backlog is applied."""
        replayed = await replay_to_last(
            runtime.js,
            subjects.STREAM_EXECUTIONS,
            subjects.EXEC_ALL,
            self._on_report,
            timeout=self.settings.router_startup_timeout,
        )
        sub = await follow(
            runtime.js, subjects.STREAM_EXECUTIONS, subjects.EXEC_ALL, self._on_report, after_seq=replayed.last_seq
        )
        runtime.stack.push_async_callback(sub.unsubscribe)
        log.info("executions.replayed", last_seq=replayed.last_seq, accounts=len(self.accounts))

    async def _on_report(self, msg: Msg) -> None:
        try:
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            await self.apply_report(report)
        except DeskError as err:
            log.warning("execution.bad_report", subject=msg.subject, code=err.code, error=err.message)
        except Exception as exc:
            log.error("execution.apply_failed", subject=msg.subject, error=repr(exc), exc_info=exc)

    # -- accounts ---------------------------------------------------------------------------------
    def _initial_cash(self, strategy_id: str) -> Decimal:
        spec = self.strategies.get(strategy_id)
        if spec is not None and spec.initial_cash:
            try:
                cash = Decimal(spec.initial_cash)
            except ArithmeticError:
                cash = Decimal(0)
            if cash.is_finite() and cash > 0:
                return cash
        return self.settings.router_default_initial_cash

    def account(self, strategy_id: str) -> VirtualAccount:
        account = self.accounts.get(strategy_id)
        if account is None:
            account = VirtualAccount(strategy_id, self._initial_cash(strategy_id), clock=self.clock)
            self.accounts[strategy_id] = account
        return account

    async def apply_report(self, report: executions_pb2.ExecutionReport) -> None:
        with structlog.contextvars.bound_contextvars(
            strategy_id=report.strategy_id, client_order_id=report.client_order_id, execution_id=report.execution_id
        ):
            if report_numbers(report) is None:
                log.warning(
                    "execution.refused",
                    reason="no execution id, or a fill number that is not a finite, non-negative decimal",
                )
            elif self.account(report.strategy_id).apply(report):
                log.debug("execution.applied", exec_type=executions_pb2.ExecType.Name(report.exec_type))
        self.applied_executions.add(report.execution_id)
        await self._notify()

    async def _notify(self) -> None:
        self._signal()

    def _signal(self) -> None:
        # one Event.set() per change: no lock, no await (nothing else runs for whoever never waits)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- partitions -------------------------------------------------------------------------------
    def answers(self, subject: str) -> bool:
        """Whether this replica answers an order or cancel sent on ``subject`` (its strategy's
        partition is held here). A malformed subject is answered by its token's partition's holder."""
        return self.partitions.owns(subject.rsplit(".", 1)[-1])

    def _on_take(self, partition: int) -> None:
        """A partition just taken: rebuild its strategies' rate-limit windows from DESK_ORDER_IDS (every
        order accepted in the last minute, by whichever replica held it then), before it is answered."""
        now_epoch, now = time.time(), self.clock()
        horizon = now_epoch - RATE_WINDOW_SECONDS
        windows: dict[str, list[float]] = {}
        for key, stored in self.order_ids.items():
            if stored > horizon:
                strategy_id = key.split(".", 1)[0]
                if self.partitions.partition(strategy_id) == partition:
                    windows.setdefault(strategy_id, []).append(now - (now_epoch - stored))
        for strategy_id in {*windows, *(s for s in self.accounts if self.partitions.partition(s) == partition)}:
            self.account(strategy_id).restore_window(windows.get(strategy_id, []))
        log.info("partition.windows_restored", partition=partition, strategies=len(windows))

    def _partition_busy(self, partition: int) -> bool:
        keys = [*self._in_flight, *(task.get_name().removeprefix("store-ack-") for task in self._storing)]
        return any(self.partitions.partition(key.split(".", 1)[0]) == partition for key in keys)

    async def _drain_partition(self, partition: int) -> None:
        """Hand-over: wait for this replica's submits of ``partition`` in flight and their acks' writes."""
        while self._partition_busy(partition):
            await self._changed.wait()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Return once ``predicate()`` holds on the router's state (halts, accounts, prices, specs,
        applied reports), checked after each KV update and execution report; TimeoutError after
        ``timeout`` s. The router's state is observable this way (tests wait on it, not on time)."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    async def wait_for_execution(self, execution_id: str, timeout: float = 5.0) -> None:
        """Return once the report ``execution_id`` has been applied (see :meth:`wait_until`)."""
        await self.wait_until(lambda: execution_id in self.applied_executions, timeout)

    # -- submit -----------------------------------------------------------------------------------
    async def submit(self, request: orders_pb2.OrderRequest, subject: str) -> orders_pb2.OrderAck:
        with structlog.contextvars.bound_contextvars(
            strategy_id=request.strategy_id, client_order_id=request.client_order_id
        ):
            return await self._submit(request, subject)

    async def _submit(self, request: orders_pb2.OrderRequest, subject: str) -> orders_pb2.OrderAck:
        order = validate_order(request, subject)
        check_known(order, self.strategies, self.prices)
        self.halts.check(order.strategy_id)

        key = subjects.order_id_key(order.strategy_id, order.client_order_id)
        # Requests are handled concurrently: the same (strategy, client order id) arriving again while
        # the first is still being handled waits for it and gets its ack. If the first one failed, the
        # next one tries itself, exactly as a retry after it would have.
        while (first_attempt := self._in_flight.get(key)) is not None:
            first_ack = await asyncio.shield(first_attempt)
            if first_ack is not None:
                ack = duplicate_of(first_ack)
                log.info("order.duplicate", order_id=ack.order_id, in_flight=True)
                return ack
        attempt: asyncio.Future[orders_pb2.OrderAck | None] = asyncio.get_running_loop().create_future()
        self._in_flight[key] = attempt
        ack_or_none: orders_pb2.OrderAck | None = None
        try:
            ack_or_none = await self._submit_once(order, request, key)
            return ack_or_none
        finally:
            del self._in_flight[key]
            attempt.set_result(ack_or_none)
            self._signal()

    async def _submit_once(self, order: ValidOrder, request: orders_pb2.OrderRequest, key: str) -> orders_pb2.OrderAck:
        if key in self.order_ids:
            return await self._duplicate_ack(order, key, reason="stored")
        if self.venue is not None and not await self.venue.served():
            log.warning("order.venue_unavailable", venue=self.settings.router_venue, symbol=order.symbol)
            raise refusal("VENUE_UNAVAILABLE", self.venue.reason())

        # From the risk check to the reservation nothing awaits: a concurrent order of the same
        # strategy sees this one's reservation. Halts and specs may have changed while a request
        # waited for an earlier attempt with its client order id.
        check_known(order, self.strategies, self.prices)
        self.halts.check(order.strategy_id)
        spec = self.strategies[order.strategy_id]
        account = self.account(order.strategy_id)
        if order.replaces and not self._replaceable(account, order):
            raise refusal("UNKNOWN_ORDER", f"no order {order.replaces} for strategy {order.strategy_id} to replace")
        reservation = account.check(order, Limits.resolve(spec.risk, self.defaults), self.prices.get(order.symbol))
        order_id = order.order_id
        hold = account.reserve(order_id, reservation, by_notional=order.notional is not None)

        routed = orders_pb2.RoutedOrder(
            order_id=order_id,
            strategy_id=order.strategy_id,
            member_id=spec.member_id,
            routed_ns=time.time_ns(),
            new_order=request,
        )
        try:
            published = await self._route(routed, msg_id=order_id)
        except BaseException:
            account.release(hold)  # not routed: the reservation and the rate-limit slot go back
            raise
        if await self._routed_before(published, key):
            # JetStream had this order id within its duplicate window: another replica (or an attempt
            # that died before answering) routed it. That attempt holds the reservation, or its reports
            # will; the order still counts against the rate limit here (its first router may be gone).
            account.release(hold, keep_slot=True)
            return await self._duplicate_ack(order, key, reason="routed_before")

        ack = accepted_ack(order, time.time_ns())
        self._store_ack(key, ack)
        log.debug(
            "order.accepted",
            order_id=order_id,
            symbol=order.symbol,
            side=codec.enum_word(common_pb2.Side, order.side),
            qty=fmt(reservation.qty),
            notional=fmt(reservation.notional, 2),
        )
        return ack

    def _replaceable(self, account: VirtualAccount, order: ValidOrder) -> bool:
        """Whether the order a replace names is known: open in the account, or accepted (its ack
        recorded) with no report yet; a final one is refused by the risk check (ORDER_CLOSED)."""
        replaced = order_id_for(order.strategy_id, order.replaces)
        key = subjects.order_id_key(order.strategy_id, order.replaces)
        return account.is_open(replaced) or account.is_closed(replaced) or key in self.order_ids

    async def _routed_before(self, published: retry.Published, key: str) -> bool:
        """Whether the order was routed before this request routed it: its publish was answered
        ``duplicate``. After one attempt that is certain. After several, the duplicate may be our own
        earlier attempt that landed while its PubAck was lost in an election: the order is then ours
        (kept reserved, answered as accepted, its ack stored), unless another attempt has recorded
        its ack meanwhile (a replica's ``DESK_ORDER_IDS`` entry: that attempt answered first)."""
        if not published.ack.duplicate:
            return False
        if published.attempts == 1 or key in self.order_ids:
            return True
        try:
            stored = await self._stored_ack(key)
        except DeskError:
            stored = None  # unreadable now: what we know is that one of our attempts may have landed
        log.info("order.route_retried", attempts=published.attempts, stored_before=stored is not None)
        return stored is not None

    async def _duplicate_ack(self, order: ValidOrder, key: str, reason: str) -> orders_pb2.OrderAck:
        """The first ack of an order seen before, marked duplicate (rebuilt if not stored yet)."""
        stored = await self._stored_ack(key)
        # None: the first attempt's ack is still being written (or that attempt died)
        ack = duplicate_of(stored if stored is not None else accepted_ack(order, time.time_ns()))
        log.info("order.duplicate", order_id=ack.order_id, seen=reason)
        return ack

    async def _stored_ack(self, key: str) -> orders_pb2.OrderAck | None:
        """The ack stored under ``key`` (None: none, or not that key's). Read through an election for
        READ_DEADLINE at the most; then ``INTERNAL`` (the caller's answer: "retry")."""
        bucket = self._kv[subjects.KV_ORDER_IDS]
        try:
            entry = await self._retry(
                lambda: asyncio.wait_for(bucket.get(key), READ_TIMEOUT), f"read {key}", READ_DEADLINE
            )
        except (KeyNotFoundError, KeyDeletedError):
            return None
        except Exception as exc:
            if not _transient(exc):
                raise
            raise refusal(
                "INTERNAL", f"could not read the order's ack ({exc!r}); retry with the same client_order_id"
            ) from exc
        ack = codec.decode(entry.value or b"", orders_pb2.OrderAck)
        if not stored_ack_matches(key, ack):
            log.warning("kv.value_ignored", bucket=subjects.KV_ORDER_IDS, key=key, reason=kv.KEY_MISMATCH)
            return None
        return ack

    def _store_ack(self, key: str, ack: orders_pb2.OrderAck) -> None:
        """Record the first ack in DESK_ORDER_IDS while the reply goes out (the order is routed already)."""
        self.order_ids.record(key, time.time())
        task = asyncio.create_task(self._write_ack(key, ack), name=f"store-ack-{key}")
        self._storing.add(task)
        task.add_done_callback(self._stored)

    def _stored(self, task: asyncio.Task[None]) -> None:
        self._storing.discard(task)
        self._signal()

    async def _retry(self, op: Callable[[], Awaitable[Any]], what: str, deadline: float) -> Any:
        """``op`` retried through an election (desk.bus.retry) for ``deadline`` s, or until the stop."""
        assert self._runtime is not None
        return await retry.retrying(
            op, what=what, log=log, deadline=deadline, stop=self._runtime.stop, is_transient=_transient
        )

    async def _write_ack(self, key: str, ack: orders_pb2.OrderAck) -> None:
        """Store the first ack (create: only if the key holds nothing), retried through an election.
        A retried create whose earlier attempt landed is refused "wrong last sequence": the value
        stored is read back and, when it is this ack, that is our own write."""
        assert self._runtime is not None
        js = self._runtime.js
        try:
            await self._retry(lambda: kv.create(js, subjects.KV_ORDER_IDS, key, ack), f"store {key}", STORE_DEADLINE)
        except KeyWrongLastSequenceError:
            try:
                stored = await self._stored_ack(key)
            except Exception as exc:  # noqa: BLE001 - logged: the order is routed, only its record is unsure
                log.warning("order.ack_unverified", key=key, order_id=ack.order_id, error=repr(exc))
                return
            if stored == ack:
                log.debug("order.ack_stored_by_retry", key=key, order_id=ack.order_id)
                return
            # Stored by an attempt older than JetStream's duplicate window that this replica had not
            # seen: the order id was routed twice. Nothing more to do here but say so loudly.
            log.error("order.routed_twice", key=key, order_id=ack.order_id)
        except Exception as exc:  # noqa: BLE001 - the order is routed; a retry is deduped by Nats-Msg-Id
            log.warning("order.ack_not_stored", key=key, order_id=ack.order_id, error=repr(exc))

    async def _finish_storing(self) -> None:
        """Shutdown: let the acks being written land (bounded by the KV request timeout)."""
        if self._storing:
            await asyncio.gather(*self._storing, return_exceptions=True)

    async def _route(self, routed: orders_pb2.RoutedOrder, msg_id: str) -> retry.Published:
        """Publish to the venue's work stream with ``Nats-Msg-Id: msg_id``, retried through an
        election with that id (desk.bus.retry.publish) for ROUTE_DEADLINE at the most; its PubAck
        (``duplicate``: JetStream had that id already; see :meth:`_routed_before`) and attempts."""
        assert self._runtime is not None
        data, headers = codec.encode(routed)
        try:
            return await retry.publish(
                self._runtime.js,
                subjects.broker_orders(self.settings.router_venue),
                data,
                msg_id=msg_id,
                headers=headers,
                stream=subjects.STREAM_ORDERS,
                timeout=ROUTE_TIMEOUT,
                deadline=ROUTE_DEADLINE,
                stop=self._runtime.stop,
                what=f"route {routed.order_id}",
                log=log,
            )
        except Exception as exc:  # answered as a specific, retryable refusal
            log.error("order.route_failed", order_id=routed.order_id, error=repr(exc))
            raise refusal(
                "INTERNAL", f"could not route the order ({exc!r}); retry with the same client_order_id"
            ) from exc

    def _order_refused(
        self, err: DeskError, subject: str, request: orders_pb2.OrderRequest | None
    ) -> orders_pb2.OrderAck:
        return self._refused(orders_pb2.OrderAck, "order.rejected", err, subject, request)

    @staticmethod
    def _refused(
        ack_type: type[AckT],
        event: str,
        err: DeskError,
        subject: str,
        request: orders_pb2.OrderRequest | orders_pb2.CancelRequest | None,
    ) -> AckT:
        """The refusal body of an order or a cancel (:func:`acks.refused_ack`), logged."""
        ack = refused_ack(ack_type, err, subject, request, time.time_ns())
        log.warning(
            event,
            strategy_id=ack.strategy_id,
            client_order_id=ack.client_order_id,
            reason=orders_pb2.RejectReason.Name(ack.reason).removeprefix("REJECT_REASON_"),
            message=err.message,
        )
        return ack

    # -- cancel -----------------------------------------------------------------------------------
    async def cancel(self, request: orders_pb2.CancelRequest, subject: str) -> orders_pb2.CancelAck:
        with structlog.contextvars.bound_contextvars(
            strategy_id=request.strategy_id, client_order_id=request.client_order_id
        ):
            order_id = validate_cancel(request, subject)
            account = self.accounts.get(request.strategy_id)
            if account is not None and account.is_closed(order_id):
                raise refusal("ORDER_CLOSED", f"order {request.client_order_id} is already final")
            known = account is not None and account.is_open(order_id)
            if not known:
                # Accepted (here or by another replica) but no execution report seen yet. Another
                # replica's ack may still be on its way into DESK_ORDER_IDS: give it a moment.
                key = subjects.order_id_key(request.strategy_id, request.client_order_id)
                known = key in self.order_ids or await self._stored_ack(key) is not None
                if not known:
                    try:
                        await self.wait_until(lambda: key in self.order_ids, CANCEL_GRACE)
                        known = True
                    except TimeoutError:
                        known = False
            if not known:
                raise refusal("UNKNOWN_ORDER", f"no order {request.client_order_id} for strategy {request.strategy_id}")
            spec = self.strategies.get(request.strategy_id)
            routed = orders_pb2.RoutedOrder(
                order_id=order_id,
                strategy_id=request.strategy_id,
                member_id=spec.member_id if spec is not None else "",
                routed_ns=time.time_ns(),
                cancel=request,
            )
            # its own message id, the same on each attempt: a retried cancel is forwarded once
            await self._route(routed, msg_id=f"{order_id}.cancel.{uuid.uuid4().hex}")
            log.info("cancel.forwarded", order_id=order_id)
            return orders_pb2.CancelAck(
                strategy_id=request.strategy_id,
                client_order_id=request.client_order_id,
                order_id=order_id,
                accepted=True,
                ts_ns=time.time_ns(),
            )

    def _cancel_refused(
        self, err: DeskError, subject: str, request: orders_pb2.CancelRequest | None
    ) -> orders_pb2.CancelAck:
        return self._refused(orders_pb2.CancelAck, "cancel.rejected", err, subject, request)

    # -- kill switch ------------------------------------------------------------------------------
    async def halt(self, request: orders_pb2.HaltRequest, subject: str) -> orders_pb2.HaltAck:
        validate_halt(request)
        key = subjects.halt_key(request.strategy_id)
        if request.strategy_id and request.strategy_id not in self.strategies:
            raise refusal(
                "UNKNOWN_STRATEGY",
                f"no strategy {request.strategy_id!r} on the desk: nothing to halt (`desk status` lists them)",
            )
        assert self._runtime is not None
        revision = await kv.put(
            self._runtime.js, subjects.KV_RISK, key, request, deadline=RISK_DEADLINE, stop=self._runtime.stop
        )
        self.halts.apply(key, revision, request)
        log.warning(
            "risk.halted",
            strategy_id=request.strategy_id or "*",
            reason=request.reason,
            requested_by=request.requested_by,
        )
        return self.halts.state(f"halted {'the desk' if not request.strategy_id else request.strategy_id}")

    async def resume(self, request: orders_pb2.HaltRequest, subject: str) -> orders_pb2.HaltAck:
        validate_halt(request)
        key = subjects.halt_key(request.strategy_id)
        # A halt stays liftable after its strategy's spec is gone (a stale halt.<id> in DESK_RISK would
        # otherwise refuse the strategy's orders for ever once it is deployed again).
        if request.strategy_id and request.strategy_id not in self.strategies and key not in self.halts:
            raise refusal(
                "UNKNOWN_STRATEGY",
                f"no strategy {request.strategy_id!r} on the desk and no halt of it: nothing to resume",
            )
        assert self._runtime is not None
        # kv.delete() does not return the marker's revision, which we need to order it against the
        # watch; so publish the KV delete marker ourselves (the KV protocol: KV-Operation: DEL).
        # Retried through an election with one message id: a marker that landed is not written twice.
        published = await retry.publish(
            self._runtime.js,
            f"$KV.{subjects.KV_RISK}.{key}",
            b"",
            msg_id=f"resume.{key}.{uuid.uuid4().hex}",
            headers={KV_OP: KV_DEL},
            timeout=ROUTE_TIMEOUT * 2,
            deadline=RISK_DEADLINE,
            stop=self._runtime.stop,
            log=log,
        )
        self.halts.apply(key, published.ack.seq, None)
        log.info("risk.resumed", strategy_id=request.strategy_id or "*", requested_by=request.requested_by)
        return self.halts.state(f"resumed {'the desk' if not request.strategy_id else request.strategy_id}")

    async def risk_status(self, request: orders_pb2.HaltRequest, subject: str) -> orders_pb2.HaltAck:
        return self.halts.state("")


def _transient(exc: BaseException) -> bool:
    """desk.bus.retry.transient, minus the KV answers: nats-py's KeyNotFoundError, KeyDeletedError and
    KeyWrongLastSequenceError are APIErrors without ``err_code`` (retry.transient would raise
    AttributeError on them), and each is an answer, not an election."""
    if isinstance(exc, (KeyNotFoundError, KeyDeletedError, KeyWrongLastSequenceError)):
        return False
    return retry.transient(exc)
