"""Per-strategy NATS identities against a real nats-server running the desk's authorization:
a strategy cannot act as another strategy, read another's fills or replies, or see the desk's
internals; the refusal comes from the server and is logged by the strategy's SDK."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import auth, codec, subjects
from desk.bus import testing as bus_testing
from desk.bus.testing import NatsServer
from desk.v1 import executions_pb2, orders_pb2
from strategy_sdk.client import connect_nats

pytestmark = pytest.mark.integration

PASSWORDS = {"admin": "admin-pw", "alpha": "alpha-pw", "beta": "beta-pw"}


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[NatsServer]:
    users = [auth.user_entry(auth.ADMIN_USER, auth.hash_password(PASSWORDS["admin"]))]
    users += [auth.strategy_entry(s, auth.hash_password(PASSWORDS[s])) for s in ("alpha", "beta")]
    server = bus_testing.secured_server(tmp_path, users)
    try:
        yield server
    finally:
        server.cleanup()


class Violations:
    def __init__(self) -> None:
        self.errors: asyncio.Queue[str] = asyncio.Queue()

    async def record(self, exc: Exception) -> None:
        self.errors.put_nowait(str(exc).lower())

    async def next(self) -> str:
        return await asyncio.wait_for(self.errors.get(), 10)


@pytest.fixture
async def admin(secured_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(secured_server.url, user=auth.ADMIN_USER, password=PASSWORDS["admin"])
    yield nc
    await nc.close()


async def strategy(server: NatsServer, strategy_id: str, violations: Violations) -> Client:
    return await nats.connect(
        server.url,
        user=auth.strategy_user(strategy_id),
        password=PASSWORDS[strategy_id],
        inbox_prefix=auth.strategy_inbox_prefix(strategy_id),
        error_cb=violations.record,
    )


async def test_anonymous_and_wrong_passwords_are_refused(secured_server: NatsServer) -> None:
    for options in ({}, {"user": auth.strategy_user("alpha"), "password": "guess"}):
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises its own error types for each
            await nats.connect(
                secured_server.url, max_reconnect_attempts=1, reconnect_time_wait=0.1, connect_timeout=2, **options
            )


async def test_a_strategy_places_and_hears_only_its_own_orders(secured_server: NatsServer, admin: Client) -> None:
    async def router(msg: Msg) -> None:
        await msg.respond(
            orders_pb2.OrderAck(accepted=True, strategy_id=msg.subject.split(".")[-1]).SerializeToString()
        )

    await admin.subscribe(subjects.ORDER_SUBMIT_ALL, cb=router)
    await admin.flush()
    violations = Violations()
    alpha = await strategy(secured_server, "alpha", violations)
    try:
        reply = await alpha.request(subjects.order_submit("alpha"), b"", timeout=5)
        assert codec.decode(reply.data, orders_pb2.OrderAck).strategy_id == "alpha"

        await alpha.publish(subjects.order_submit("beta"), b"an order as beta")
        assert "permissions violation for publish" in await violations.next()
        with pytest.raises(nats.errors.TimeoutError):  # refused: nobody answers, no order placed as beta
            await alpha.request(subjects.order_submit("beta"), b"", timeout=1)
    finally:
        await alpha.close()


@pytest.mark.parametrize(
    "subject", ["desk.exec.beta", "desk.>", ">", "_INBOX.>", "_INBOX_S.beta.>", "desk.order.submit.*", "$JS.API.>"]
)
async def test_a_strategy_cannot_read_another_strategys_fills_replies_or_the_desk(
    secured_server: NatsServer, admin: Client, subject: str
) -> None:
    violations = Violations()
    alpha = await strategy(secured_server, "alpha", violations)
    try:
        got: asyncio.Queue[Msg] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            got.put_nowait(msg)

        await alpha.subscribe(subject, cb=collect)
        assert "permissions violation for subscription" in await violations.next()
        fill, headers = codec.encode(executions_pb2.ExecutionReport(strategy_id="beta", execution_id="x1"))
        await admin.publish("desk.exec.beta", fill, headers=headers)
        await admin.publish("_INBOX_S.beta.reply", b"beta's reply")
        await admin.flush()
        # A message the strategy may see, published after the forbidden ones: once one arrives, nothing
        # else came first. (nats-py's flush does not prove the SUB reached the server, so publish until
        # the subscription is there.)
        await alpha.subscribe("md.bar.AAPL", cb=collect)
        first: Msg | None = None
        async with asyncio.timeout(10):
            while first is None:
                await admin.publish("md.bar.AAPL", b"bar")
                with contextlib.suppress(TimeoutError):
                    first = await asyncio.wait_for(got.get(), 0.1)
        assert first.subject == "md.bar.AAPL"
    finally:
        await alpha.close()


async def test_the_sdk_logs_the_servers_refusal(secured_server: NatsServer) -> None:
    logged: asyncio.Queue[str] = asyncio.Queue()

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.put_nowait(record.getMessage().lower())

    handler = Catch(logging.WARNING)
    sdk_log = logging.getLogger("strategy_sdk")
    sdk_log.addHandler(handler)
    env = {
        "NATS_USER": auth.strategy_user("alpha"),
        "NATS_PASSWORD": PASSWORDS["alpha"],
        "NATS_INBOX_PREFIX": auth.strategy_inbox_prefix("alpha"),
    }
    nc = await connect_nats(secured_server.url, "alpha", env)
    try:
        await nc.subscribe("desk.exec.beta")
        await nc.flush()
        async with asyncio.timeout(10):
            while "permissions violation for subscription" not in (line := await logged.get()):
                pass
        assert "desk.exec.beta" in line
    finally:
        sdk_log.removeHandler(handler)
        await nc.close()


async def test_a_strategy_may_ask_the_ledger_for_its_own_books_only(secured_server: NatsServer, admin: Client) -> None:
    async def ledger(msg: Msg) -> None:
        await msg.respond(msg.subject.encode())

    await admin.subscribe("desk.ledger.>", cb=ledger)
    await admin.flush()
    violations = Violations()
    alpha = await strategy(secured_server, "alpha", violations)
    try:
        for kind in subjects.LEDGER_OWN_KINDS:
            reply = await alpha.request(subjects.ledger_own(kind, "alpha"), b"", timeout=5)
            assert reply.data == subjects.ledger_own(kind, "alpha").encode()
        for forbidden in (
            subjects.LEDGER_POSITIONS,
            subjects.ledger_own(subjects.LEDGER_POSITIONS, "beta"),
            subjects.LEDGER_FILLS,
            subjects.LEDGER_LEADERBOARD,
        ):
            await alpha.publish(forbidden, b"")
            assert "permissions violation for publish" in await violations.next()
    finally:
        await alpha.close()
