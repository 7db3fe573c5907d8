"""Defence in depth: each service's NATS user may publish only what that service needs. Connected as
each service's own user to a real nats-server running the desk's authorization, the writes a tricked
service could be steered into are refused by the server, and the streams and buckets keep their data."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from desk.bus import auth, kv, streams, subjects
from desk.bus.testing import NatsServer, secured_server
from desk.v1 import strategy_pb2

pytestmark = pytest.mark.integration

SERVICES = tuple(auth.SERVICE_PUBLISH)
ADMIN_PASSWORD = "admin-pw"

# What no service but the named one may publish; what no service at all may.
FORBIDDEN_UNLESS = {
    "$KV.DESK_RISK.halt._global": "order_router",
    "$KV.DESK_ORDER_IDS.alpha.c-1": "order_router",
    "$KV.DESK_STRATEGIES.alpha": "orchestrator",
    "$KV.DESK_PRICES.AAPL": "marketdata",
    "desk.exec.alpha": "broker_gateway",
    "desk.broker.sim.orders": "order_router",
    "md.trade.AAPL": "marketdata",
    "$SRV.PING.some_other_service": "dashboard",  # the desk page checks every service's health
}
FORBIDDEN_TO_ALL = (
    "$JS.API.STREAM.PURGE.EXECUTIONS",
    "$JS.API.STREAM.DELETE.ORDERS",
    "$JS.API.STREAM.DELETE.KV_DESK_RISK",
    "$JS.API.STREAM.PURGE.KV_DESK_STRATEGIES",
    "$JS.API.STREAM.CREATE.SOMETHING_ELSE",
    "desk.order.submit.alpha",
    "desk.hb.alpha",
)


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[NatsServer]:
    users = [auth.service_entry(name, auth.hash_password(f"{name}-pw")) for name in SERVICES]
    users.append(auth.user_entry(auth.ADMIN_USER, auth.hash_password(ADMIN_PASSWORD)))
    server = secured_server(tmp_path, users)
    try:
        yield server
    finally:
        server.cleanup()


async def connect_as(server: NatsServer, service: str, errors: asyncio.Queue[str]) -> Client:
    async def record(exc: Exception) -> None:
        errors.put_nowait(str(exc))

    return await nats.connect(server.url, user=auth.service_user(service), password=f"{service}-pw", error_cb=record)


async def test_each_service_may_publish_only_what_it_needs(secured: NatsServer) -> None:
    admin = await nats.connect(secured.url, user=auth.ADMIN_USER, password=ADMIN_PASSWORD)
    js = admin.jetstream()
    await streams.ensure_all(js)
    await kv.put(js, subjects.KV_STRATEGIES, "alpha", strategy_pb2.StrategySpec(strategy_id="alpha", member_id="m"))
    await js.publish("desk.exec.alpha", b"a fill")
    before = {name: (await js.stream_info(name)).state.messages for name in ("EXECUTIONS", "KV_DESK_STRATEGIES")}

    refused: dict[str, list[str]] = {}
    allowed: dict[str, list[str]] = {}
    try:
        for service in SERVICES:
            errors: asyncio.Queue[str] = asyncio.Queue()
            nc = await connect_as(secured, service, errors)
            try:
                targets = [s for s, owner in FORBIDDEN_UNLESS.items() if owner != service] + list(FORBIDDEN_TO_ALL)
                for subject in targets:
                    await nc.publish(subject, b"forged", reply="_INBOX.never")
                    error = await asyncio.wait_for(errors.get(), 10)  # the server's answer to each publish
                    assert f'permissions violation for publish to "{subject.lower()}"' in error.lower(), (
                        service,
                        subject,
                        error,
                    )
                    refused.setdefault(service, []).append(subject)
                # and what it needs works: a service answers on an inbox, reads JetStream
                own = [s for s, owner in FORBIDDEN_UNLESS.items() if owner == service]
                for subject in own:
                    await nc.publish(subject, b"", headers={"Nats-Expected-Last-Sequence": "1000000"})
                await nc.publish("_INBOX.reply.to.someone", b"an answer")
                await nc.publish(f"$SRV.PING.{service}", b"", reply="_INBOX.health")  # its compose healthcheck
                await nc.jetstream().account_info()
                await nc.flush()
                assert errors.empty(), (service, errors.get_nowait())
                allowed[service] = own
            finally:
                await nc.close()
        after = {name: (await js.stream_info(name)).state.messages for name in ("EXECUTIONS", "KV_DESK_STRATEGIES")}
        assert after == before
        assert (await js.stream_info("ORDERS")).config.name == "ORDERS"
        halts = await js.stream_info("KV_DESK_RISK")
        assert halts.state.messages == 0
    finally:
        await admin.close()
    assert set(refused) == set(SERVICES)
    assert allowed["order_router"] == [
        "$KV.DESK_RISK.halt._global",
        "$KV.DESK_ORDER_IDS.alpha.c-1",
        "desk.broker.sim.orders",
    ]


def test_an_earlier_releases_users_file_gets_todays_permissions_and_keeps_its_passwords(tmp_path: Path) -> None:
    # Made as the previous release did: service users without permissions.
    old = [auth.user_entry(auth.service_user(name), f"hash-of-{name}") for name in SERVICES]
    old.append(auth.user_entry(auth.ADMIN_USER, "hash-of-admin"))
    auth.write_private(tmp_path / "base-users.json", json.dumps(old))
    assert auth.init_directory(tmp_path, SERVICES) is False  # exists: not made anew
    users = {u["user"]: u for u in auth.read_users(tmp_path / "base-users.json")}
    assert users[auth.service_user("ledger")]["password"] == "hash-of-ledger"
    assert users[auth.service_user("ledger")]["permissions"] == auth.service_permissions("ledger")
    assert "permissions" not in users[auth.ADMIN_USER]
    assert "$KV.DESK_RISK.>" in (tmp_path / "auth.conf").read_text()
    assert auth.upgrade_permissions(tmp_path, SERVICES) is False  # idempotent
