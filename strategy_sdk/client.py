"""The strategy's side of the bus: connecting, subscribing, orders, the books at start, heartbeats.

Everything here talks to NATS; the run loop (:mod:`strategy_sdk.runner`) and the old-desk wrapper
(:mod:`strategy_sdk.legacy`) wire these pieces together.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from decimal import Decimal
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import AuthorizationError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from desk.bus import codec, confine, subjects
from desk.bus.decimals import dec
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.bus.servers import env_auth, open_connection
from desk.core.orders import ORDER_TYPE_WORDS, TIME_IN_FORCE_WORDS, side_name, status_name
from desk.v1 import executions_pb2, ledger_pb2, orders_pb2, strategy_pb2
from strategy_sdk.models import CancelResult, OpenOrder, OrderResult
from strategy_sdk.orders import Account

__all__ = [
    "EXIT_CONNECT",
    "SDK_VERSION",
    "ConnectRefused",
    "ConnectStopped",
    "NatsGateway",
    "connect_nats",
    "heartbeat_loop",
    "recover_books",
    "subscribe",
    "unsubscribe_all",
]

#: Sent in every heartbeat; also ``strategy_sdk.__version__``.
SDK_VERSION = "0.1.0"
#: The runner's exit code when NATS cannot be reached (the orchestrator treats it as transient).
EXIT_CONNECT = 1
log = logging.getLogger("strategy_sdk")


# Connection and subscriptions ---------------------------------------------------------------------
#: Refused logins at connect (Authorization Violation, bad credentials) before connect_nats gives up:
#: credentials do not get better by retrying; an unreachable server is retried (the desk may be starting).
MAX_AUTH_FAILURES = 3
#: While the first connection is not made, one "still trying" line every this many failed attempts.
CONNECT_LOG_EVERY = 20
#: The stop event of the strategy being run (set by the runner): connect_nats gives up when it is set.
current_stop: contextvars.ContextVar[asyncio.Event | None] = contextvars.ContextVar("current_stop", default=None)


class ConnectRefused(Exception):
    """NATS refused the strategy's credentials: a clear one-line reason, never retried forever."""


class ConnectStopped(BaseException):
    """A stop (SIGTERM/SIGINT) came while connecting. Not an error (like CancelledError, it is a
    BaseException): the runner ends with exit code 0."""


def _refused_login(exc: BaseException) -> bool:
    return isinstance(exc, AuthorizationError) or "authorization" in str(exc).lower()


def _credentials_hint(env: Mapping[str, str]) -> str:
    if env.get("NATS_CREDS"):
        return f"the credentials file NATS_CREDS={env['NATS_CREDS']}"
    if env.get("NATS_USER"):
        return f"user NATS_USER={env['NATS_USER']!r} and its NATS_PASSWORD"
    return (
        "no credentials: the desk runs NATS with authorization; set NATS_USER/NATS_PASSWORD "
        "(or NATS_CREDS) to a user allowed to run this strategy, or let the desk run it (desk deploy NAME)"
    )


async def connect_nats(
    url: str, strategy_id: str, env: Mapping[str, str] | None = None, stop: asyncio.Event | None = None
) -> Client:
    """Connect with reconnects forever; NATS_USER/NATS_PASSWORD, NATS_CREDS, NATS_INBOX_PREFIX honoured.

    Replies come under the strategy's own inbox (``_INBOX_S.<id>``, desk.bus.confine): the desk
    answers a strategy nowhere else, so that is the default inbox prefix.

    The first connection: a server that refuses the credentials :data:`MAX_AUTH_FAILURES` times is
    :class:`ConnectRefused` (one line saying which credentials); an unreachable one is retried, with a
    line every :data:`CONNECT_LOG_EVERY` attempts; ``stop`` (default: :data:`current_stop`) being set
    ends the attempt at once with :class:`ConnectStopped`. Once connected, reconnects are forever."""
    name = f"strategy-{strategy_id}"
    env = os.environ if env is None else env
    stop = stop if stop is not None else current_stop.get()
    options: dict[str, Any] = env_auth(env)
    options["inbox_prefix"] = env.get("NATS_INBOX_PREFIX") or confine.strategy_inbox_prefix(strategy_id)
    holder: list[Client] = []
    refusals: list[BaseException] = []
    failures = 0
    gave_up = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        nonlocal failures
        if holder:  # connected once: nats-py reconnects forever, each failure is worth a line
            log.warning("nats.error: %r", exc)
            return
        failures += 1
        if _refused_login(exc):
            refusals.append(exc)
            if len(refusals) >= MAX_AUTH_FAILURES:
                gave_up.set()
        elif failures == 1 or failures % CONNECT_LOG_EVERY == 0:
            log.warning("nats.connect_retrying: %s: %r (attempt %d; retrying until it answers)", url, exc, failures)

    async def disconnected_cb() -> None:
        closing = holder and (holder[0].is_closed or holder[0].is_draining)
        log.log(logging.INFO if closing else logging.WARNING, "nats.disconnected")

    async def reconnected_cb() -> None:
        log.info("nats.reconnected")

    connecting = asyncio.ensure_future(
        open_connection(
            url,
            forever=True,
            name=name,
            connect_timeout=5,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            **options,
        )
    )
    waits: set[asyncio.Future[Any]] = {connecting, asyncio.ensure_future(gave_up.wait())}
    if stop is not None:
        waits.add(asyncio.ensure_future(stop.wait()))
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waits - {connecting}:
            waiter.cancel()
    if not connecting.done():
        connecting.cancel()
        with contextlib.suppress(BaseException):
            await connecting
        if gave_up.is_set():
            raise ConnectRefused(
                f"NATS at {url} refused the login {len(refusals)} times ({refusals[-1]}); tried "
                f"{_credentials_hint(env)}"
            )
        raise ConnectStopped("stopped while connecting to NATS")
    nc = connecting.result()
    holder.append(nc)
    return nc


async def subscribe(
    nc: Client, subject_list: Iterable[str], cb: Callable[[Msg], Awaitable[None]]
) -> list[Subscription]:
    """One subscription per subject, in order, all delivering to ``cb``."""
    return [await nc.subscribe(subject, cb=cb) for subject in subject_list]


async def unsubscribe_all(subs: Iterable[Subscription]) -> None:
    """Unsubscribe each; a closed or reconnecting connection is not an error at shutdown."""
    for sub in subs:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


# Orders over NATS ----------------------------------------------------------------------------------
#: Sends of one order (the same client order id each time) before it is reported TIMEOUT: with the
#: default 5 s timeout, 15 s, which covers a router's failover (the lease TTL, 5 s, plus a tick).
ORDER_ATTEMPTS = 3


class NatsGateway:
    """Sends a strategy's orders to the router; re-sent with the same client order id on timeout, up to
    :data:`ORDER_ATTEMPTS` times in all: a router's failover (its partitions move to another replica
    after the lease TTL, 5 s: docs/cluster.md) leaves a request unanswered for that long."""

    def __init__(self, nc: Client, strategy_id: str, timeout: float = 5.0) -> None:
        self.nc = nc
        self.strategy_id = strategy_id
        self.timeout = timeout

    async def _ask(self, subject: str, message: Any, reply_type: Any) -> Any:
        """The reply, or a (reason, message) pair after the last failure."""
        last = ("TIMEOUT", f"no answer on {subject} within {self.timeout}s (tried {ORDER_ATTEMPTS} times)")
        for attempt in range(1, ORDER_ATTEMPTS + 1):
            try:
                return await request(self.nc, subject, message, reply_type, timeout=self.timeout)
            except NatsTimeoutError:
                last = ("TIMEOUT", f"no answer on {subject} within {self.timeout}s (tried {ORDER_ATTEMPTS} times)")
            except NoRespondersError:
                last = ("UNAVAILABLE", f"nobody serves {subject}: is the order router running?")
                if attempt == 1:
                    await asyncio.sleep(min(self.timeout, 0.5))  # give a restarting router a moment
            except DeskError as exc:
                return (exc.code, exc.message)
            log.warning("order.retry: %s on %s (attempt %d)", last[0], subject, attempt)
        return last

    async def submit(self, order: orders_pb2.OrderRequest) -> OrderResult:
        answer = await self._ask(subjects.order_submit(self.strategy_id), order, orders_pb2.OrderAck)
        if isinstance(answer, tuple):
            return OrderResult(False, "", order.client_order_id, answer[0], answer[1])
        return OrderResult(
            accepted=answer.accepted,
            order_id=answer.order_id,
            client_order_id=answer.client_order_id or order.client_order_id,
            reason=_reason(answer.reason) if not answer.accepted else "",
            message=answer.message,
            duplicate=answer.duplicate,
        )

    async def cancel(self, client_order_id: str) -> CancelResult:
        msg = orders_pb2.CancelRequest(strategy_id=self.strategy_id, client_order_id=client_order_id)
        answer = await self._ask(subjects.order_cancel(self.strategy_id), msg, orders_pb2.CancelAck)
        if isinstance(answer, tuple):
            return CancelResult(False, "", client_order_id, answer[0], answer[1])
        return CancelResult(
            accepted=answer.accepted,
            order_id=answer.order_id,
            client_order_id=client_order_id,
            reason=_reason(answer.reason) if not answer.accepted else "",
            message=answer.message,
        )


def _reason(value: int) -> str:
    try:
        name: str = orders_pb2.RejectReason.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"
    return name.removeprefix("REJECT_REASON_")


# The books at start ----------------------------------------------------------------------------------
def _open_order(o: ledger_pb2.OrderRecord) -> OpenOrder:
    return OpenOrder(
        order_id=o.order_id,
        client_order_id=o.client_order_id,
        symbol=o.symbol,
        side=side_name(o.side),
        type=ORDER_TYPE_WORDS.get(o.type, ""),
        time_in_force=TIME_IN_FORCE_WORDS.get(o.time_in_force, ""),
        qty=Decimal(o.qty) if o.qty else None,
        limit_price=Decimal(o.limit_price) if o.limit_price else None,
        stop_price=Decimal(o.stop_price) if o.stop_price else None,
        filled_qty=dec(o.filled_qty),
        status=status_name(o.status),
        created_ns=o.created_ns,
    )


async def recover_books(nc: Client, strategy_id: str, account: Account, timeout: float) -> None:
    """Position, cash and open orders from the ledger after a restart; fresh books without one."""
    query = ledger_pb2.LedgerQuery(strategy_id=strategy_id, limit=1000)

    def own(kind: str) -> str:  # the strategy's NATS user may ask for its own books only
        return subjects.ledger_own(kind, strategy_id)

    try:
        positions = await request(nc, own(subjects.LEDGER_POSITIONS), query, ledger_pb2.PositionsReply, timeout=timeout)
        pnl = await request(nc, own(subjects.LEDGER_PNL), query, ledger_pb2.PnlReply, timeout=timeout)
    except (NatsTimeoutError, NoRespondersError, DeskError) as exc:
        log.warning("books.fresh: ledger unavailable (%r); starting with cash %s and no positions", exc, account.cash)
        return
    for p in positions.positions:
        if p.strategy_id in ("", strategy_id) and p.symbol:
            account.positions[p.symbol] = dec(p.qty)
    for row in pnl.strategies:
        if row.strategy_id == strategy_id and row.cash:
            account.cash = Decimal(row.cash)
    with contextlib.suppress(NatsTimeoutError, NoRespondersError, DeskError):
        orders = await request(nc, own(subjects.LEDGER_ORDERS), query, ledger_pb2.OrdersReply, timeout=timeout)
        for o in orders.orders:
            if o.strategy_id == strategy_id and o.status in (
                executions_pb2.ORDER_STATUS_NEW,
                executions_pb2.ORDER_STATUS_PARTIALLY_FILLED,
            ):
                account.open_orders[o.client_order_id] = _open_order(o)
    log.info(
        "books.recovered: cash %s, positions %s, open orders %d",
        account.cash,
        {s: str(q) for s, q in account.positions.items() if q},
        len(account.open_orders),
    )


# Heartbeats ------------------------------------------------------------------------------------------
async def heartbeat_loop(
    nc: Client,
    strategy_id: str,
    interval: float,
    stats: Callable[[], tuple[int, int, int, str]],
    alive: Callable[[], bool] | None = None,
) -> None:
    """Publish a Heartbeat now and every ``interval`` seconds: (bars_seen, orders_sent, errors, last_error).

    With ``alive``, a beat is sent only while ``alive()`` says the strategy is working (the old-desk
    wrapper: its child has lived a while and still reads its input), so the orchestrator's watchdog
    sees a hung child as hung."""
    subject = subjects.heartbeat(strategy_id)
    while True:
        if alive is not None and not alive():
            await asyncio.sleep(min(interval, 0.25))  # beat as soon as it is alive again
            continue
        bars, orders, errors, last_error = stats()
        beat = strategy_pb2.Heartbeat(
            strategy_id=strategy_id,
            ts_ns=time.time_ns(),
            bars_seen=bars,
            orders_sent=orders,
            errors=errors,
            sdk_version=SDK_VERSION,
            last_error=last_error[:500],
        )
        data, headers = codec.encode(beat)
        try:
            await nc.publish(subject, data, headers=headers)
        except Exception as exc:  # noqa: BLE001 - a closed or reconnecting connection must not end the strategy
            log.warning("heartbeat.failed: %r", exc)
        await asyncio.sleep(interval)
