"""The desk's bus on a 3-node JetStream cluster (three real nats-servers clustered on loopback):
replicas are provisioned and never lowered by a service, a durable consumer rides out the loss of its
stream's leader, and a client given the server list fails over to another node."""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from desk.bus import streams, subjects
from desk.bus.pull import DurablePull, Outcome
from desk.bus.servers import open_connection
from desk.bus.testing import NatsCluster
from tests.support import poll

pytestmark = pytest.mark.cluster


async def test_provision_makes_every_stream_and_bucket_r3_and_a_service_start_keeps_it(nc: Client) -> None:
    js = nc.jetstream()
    done = await streams.provision(js, replicas=3)
    assert {d.action for d in done} == {"created"} and len(done) == 3 + len(streams.BUCKETS)
    names = [
        subjects.STREAM_EXECUTIONS,
        subjects.STREAM_ORDERS,
        *(f"KV_{b}" for b in streams.BUCKETS),
        f"OBJ_{subjects.OBJ_CODE}",
    ]
    for name in names:
        info = await js.stream_info(name)
        assert info.config.num_replicas == 3, name
        assert info.cluster is not None and len(info.cluster.replicas or []) == 2, name
    await streams.ensure_stream(js, streams.EXECUTIONS)  # every service does this when it starts
    await streams.ensure_stream(js, streams.ORDERS)
    for bucket in streams.BUCKETS:
        await streams.ensure_bucket(js, bucket)
    for name in names:
        assert (await js.stream_info(name)).config.num_replicas == 3, f"{name} lowered by a service start"
    assert {d.action for d in await streams.provision(js, replicas=3)} == {"unchanged"}


async def test_a_durable_consumer_rides_out_the_loss_of_its_streams_leader(cluster: NatsCluster, nc: Client) -> None:
    js = nc.jetstream()
    await streams.provision(js, replicas=3)
    subject = subjects.broker_orders("sim")
    seen: dict[str, int] = {}

    async def handle(msg: Msg) -> Outcome:
        key = msg.headers.get("Nats-Msg-Id", "") if msg.headers else ""
        seen[key] = seen.get(key, 0) + 1
        return Outcome.ACK

    pull = DurablePull(
        js,
        subjects.STREAM_ORDERS,
        ConsumerConfig(durable_name="cluster-test", ack_policy=AckPolicy.EXPLICIT, filter_subject=subject),
        handle,
        batch=8,
        fetch_timeout=1.0,
        ack_sync=True,
    )
    runner = asyncio.create_task(pull.run())

    async def publish(n: int) -> None:
        async with asyncio.timeout(60):  # an election answers 503 or times out: retried, bounded
            while True:
                try:
                    await js.publish(subject, b"x", headers={"Nats-Msg-Id": f"m{n}"}, timeout=2)
                    return
                except (nats.errors.TimeoutError, nats.js.errors.APIError, nats.errors.NoRespondersError):
                    await asyncio.sleep(0.1)  # a retry pause, not synchronisation

    try:
        for n in range(20):
            await publish(n)
        await poll(lambda: len(seen) == 20 or None, "the first 20 handled", timeout=30)
        leader = (await js.stream_info(subjects.STREAM_ORDERS)).cluster.leader  # type: ignore[union-attr]
        assert leader
        cluster.server_named(leader).stop()
        for n in range(20, 40):
            await publish(n)
        await poll(lambda: len(seen) == 40 or None, "all 40 handled after the leader was lost", timeout=60)
        assert all(count == 1 for count in seen.values()), {k: v for k, v in seen.items() if v != 1}
        new_leader = (await js.stream_info(subjects.STREAM_ORDERS)).cluster.leader  # type: ignore[union-attr]
        assert new_leader and new_leader != leader
    finally:
        pull.stop()
        await asyncio.wait_for(runner, 15)


async def test_a_client_given_the_server_list_fails_over_to_another_node(cluster: NatsCluster) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    client = await open_connection(cluster.url, forever=True, connect_timeout=5, reconnected_cb=on_reconnect)
    try:
        assert client.connected_url is not None and client.connected_url.port is not None
        first = client.connected_url.port
        cluster.servers[cluster.client_ports.index(first)].stop()
        await asyncio.wait_for(reconnected.wait(), 30)
        assert client.connected_url is not None and client.connected_url.port != first
        sub = await client.subscribe("probe")
        await client.publish("probe", b"after fail-over")
        assert (await sub.next_msg(timeout=5)).data == b"after fail-over"
    finally:
        await client.close()
