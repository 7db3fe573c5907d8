"""Every client gets the whole server list: a dead first server does not stop a strategy, the orchestrator's
check or a service from reaching the live one."""

from __future__ import annotations

import nats.errors
import pytest

from desk.bus.connect import connect
from desk.bus.servers import open_connection
from desk.bus.settings import BusSettings
from desk.bus.testing import NatsServer
from strategy_sdk.client import connect_nats
from tests.support import free_port


async def test_a_list_with_a_dead_server_first_reaches_the_live_one(nats_server: NatsServer) -> None:
    servers = f"nats://127.0.0.1:{free_port()},{nats_server.url}"
    strategy = await connect_nats(servers, "alpha", env={})
    service = await connect(BusSettings(nats_url=servers), "test-service")
    once = await open_connection(servers, forever=False)
    try:
        for nc in (strategy, service, once):
            assert nc.is_connected and nc.connected_url is not None
            assert nc.connected_url.port == int(nats_server.url.rsplit(":", 1)[1])
            await nc.flush(timeout=2)
    finally:
        for nc in (strategy, service, once):
            await nc.close()


async def test_a_command_gives_up_when_no_server_answers() -> None:
    errors: list[Exception] = []
    with pytest.raises(nats.errors.NoServersError):
        await open_connection(
            f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}",
            forever=False,
            connect_timeout=0.5,
            errors=errors,
        )
    assert errors  # what nats-py reported, for a command to explain
