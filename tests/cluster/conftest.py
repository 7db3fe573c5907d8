"""The cluster suites' fixtures: three real nats-servers clustered on loopback, and a client given the
whole server list once JetStream has elected its meta leader."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client

from desk.bus.servers import open_connection
from desk.bus.testing import NatsCluster
from tests.support import poll

META_LEADER_BOUND = 60.0  # seconds a fresh cluster may take to elect its JetStream meta leader


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    nodes = NatsCluster(tmp_path / "cluster").start()
    try:
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
async def nc(cluster: NatsCluster) -> AsyncIterator[Client]:
    client = await open_connection(cluster.url, forever=True, connect_timeout=5)

    async def jetstream_ready() -> bool:
        try:
            await client.jetstream().account_info()
            return True
        except Exception:  # noqa: BLE001 - no meta leader yet: asked again
            return False

    await poll(jetstream_ready, "the cluster's JetStream meta leader", timeout=META_LEADER_BOUND)
    try:
        yield client
    finally:
        await client.close()
