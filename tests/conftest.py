"""Fixtures shared by every test: a real nats-server per test, connections, temp dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import nats
import pytest
from nats.aio.client import Client

from desk.bus import streams
from desk.bus.testing import NatsServer


@pytest.fixture
def nats_server(tmp_path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream on a free 127.0.0.1 port, its store under tmp_path."""
    server = NatsServer(store_dir=tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    """A client connected to ``nats_server``, with every desk stream and bucket created."""
    client = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
    await streams.ensure_all(client.jetstream())
    try:
        yield client
    finally:
        await client.close()
