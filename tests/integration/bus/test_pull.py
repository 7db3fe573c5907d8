"""desk.bus.pull.DurablePull against a real nats-server: the flow, bad messages, a server restart,
a consumer deleted under it, JetStream down at start, a consumer found with another config.

Waiting is on observables (what the handler has seen, consumer info), each bounded; no sleeps.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator, Sequence

import nats
import nats.js.errors
import pytest
import structlog.testing
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from desk.bus.pull import Backoff, DurablePull, Outcome
from desk.bus.testing import NatsServer
from tests.support import poll

pytestmark = pytest.mark.integration

STREAM, SUBJECT, DURABLE = "WORK", "work.>", "worker"
BOUND = 8.0
FAST = Backoff(initial=0.05, maximum=0.5)


def config(**overrides: object) -> ConsumerConfig:
    options: dict[str, object] = {
        "durable_name": DURABLE,
        "ack_policy": AckPolicy.EXPLICIT,
        "deliver_policy": DeliverPolicy.ALL,
        "ack_wait": 30.0,
        "max_ack_pending": 100,
        "filter_subject": SUBJECT,
    }
    options.update(overrides)
    return ConsumerConfig(**options)  # type: ignore[arg-type]


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    await nc.jetstream().add_stream(name=STREAM, subjects=[SUBJECT])
    try:
        yield nc
    finally:
        await nc.close()


class Seen:
    """What the handler was given, by body, with a condition to wait on."""

    def __init__(self) -> None:
        self.bodies: list[str] = []
        self.changed = asyncio.Condition()

    async def add(self, *bodies: str) -> None:
        async with self.changed:
            self.bodies.extend(bodies)
            self.changed.notify_all()

    async def wait(self, count: int, timeout: float = BOUND) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.bodies) >= count), timeout)

    @property
    def counts(self) -> collections.Counter[str]:
        return collections.Counter(self.bodies)


async def publish(js: JetStreamContext, *bodies: str) -> None:
    for body in bodies:
        await js.publish(f"work.{body.split('-')[0]}", body.encode())


@contextlib.asynccontextmanager
async def running(pull: DurablePull) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(pull.run())
    try:
        yield task
    finally:
        pull.stop()
        await asyncio.wait_for(task, BOUND)


async def settled(js: JetStreamContext, floor: int) -> bool:
    try:
        info = await js.consumer_info(STREAM, DURABLE)
    except nats.js.errors.NotFoundError:
        return False  # not created yet
    return info.ack_floor.stream_seq >= floor and info.num_ack_pending == 0 and info.num_pending == 0


async def test_messages_are_handled_in_order_and_acked(client: Client) -> None:
    js, seen = client.jetstream(), Seen()

    async def handle(msg: Msg) -> None:
        await seen.add(msg.data.decode())

    pull = DurablePull(js, STREAM, config(), handle, batch=8, backoff=FAST)
    bodies = [f"a-{i}" for i in range(30)]
    async with running(pull):
        await publish(js, *bodies)
        await seen.wait(30)
        await poll(lambda: settled(js, 30), "all 30 acked", timeout=BOUND, every=0.05)
    assert seen.bodies == bodies
    assert (pull.stats.fetched, pull.stats.handled, pull.stats.acked, pull.stats.termed) == (30, 30, 30, 0)
    assert pull.stats.consumers_created == 1 and pull.stats.retries == 0
    assert set(pull.stats_data()) >= {"fetched", "handled", "termed", "retries"}


async def test_a_handler_raising_gets_its_message_termed_and_the_loop_goes_on(client: Client) -> None:
    js, seen = client.jetstream(), Seen()

    async def handle(msg: Msg) -> Outcome | None:
        body = msg.data.decode()
        if body == "a-bad":
            raise ValueError("not a message this handler understands")
        await seen.add(body)
        return None

    pull = DurablePull(js, STREAM, config(), handle, batch=4, backoff=FAST)
    with structlog.testing.capture_logs() as logs:
        async with running(pull):
            await publish(js, "a-1", "a-bad", "a-2", "a-3")
            await seen.wait(3)
            await poll(lambda: settled(js, 4), "all 4 settled", timeout=BOUND, every=0.05)
    assert seen.bodies == ["a-1", "a-2", "a-3"]
    assert (pull.stats.termed, pull.stats.handler_errors, pull.stats.acked) == (1, 1, 3)
    assert [e["stream_seq"] for e in logs if e["event"] == "pull.handler_failed"] == [2]


async def test_batch_outcomes_ack_nak_and_term_each_message(client: Client) -> None:
    js, seen = client.jetstream(), Seen()
    naked: set[str] = set()
    after: list[int] = []

    async def prepare(msgs: list[Msg]) -> list[str]:
        return [m.data.decode() for m in msgs]

    async def handle(bodies: list[str]) -> Sequence[Outcome]:
        outcomes = []
        for body in bodies:
            if body.endswith("retry") and body not in naked:
                naked.add(body)
                outcomes.append(Outcome.NAK)  # comes back once
            elif body.endswith("junk"):
                outcomes.append(Outcome.TERM)
            else:
                await seen.add(body)
                outcomes.append(Outcome.ACK)
        return outcomes

    pull = DurablePull(
        js,
        STREAM,
        config(),
        batch_handler=handle,
        prepare=prepare,
        after=lambda b, o: after.append(len(b)),
        batch=10,
        prefetch=3,
        nak_delay=0.05,
        backoff=FAST,
    )
    async with running(pull):
        await publish(js, "b-1", "b-retry", "b-junk", "b-2")
        await seen.wait(3)
        await poll(lambda: settled(js, 4), "all settled", timeout=BOUND, every=0.05)
    assert sorted(seen.bodies) == ["b-1", "b-2", "b-retry"]
    assert (pull.stats.acked, pull.stats.naked, pull.stats.termed) == (3, 1, 1)
    assert sum(after) == pull.stats.handled == 5  # the naked one was handled twice


async def test_nats_server_restarted_mid_run_the_loop_resumes_and_nothing_is_lost_or_handled_twice(
    nats_server: NatsServer, client: Client
) -> None:
    js, seen = client.jetstream(), Seen()

    async def handle(msg: Msg) -> None:
        await seen.add(msg.data.decode())

    pull = DurablePull(js, STREAM, config(), handle, batch=5, fetch_timeout=0.5, backoff=FAST)
    first, second = [f"c-{i}" for i in range(20)], [f"d-{i}" for i in range(20)]
    async with running(pull) as task:
        await publish(js, *first)
        await seen.wait(20)
        await poll(lambda: settled(js, 20), "the first 20 acked on the server", timeout=BOUND, every=0.05)
        await asyncio.to_thread(nats_server.restart)  # same port, same store: the durable survives
        await poll(lambda: client.is_connected, "client reconnected", timeout=BOUND, every=0.05)
        await publish(js, *second)
        await seen.wait(40)
        await poll(lambda: settled(js, 40), "all 40 acked", timeout=BOUND, every=0.05)
        assert not task.done()
    assert seen.counts == collections.Counter(first + second)  # each exactly once
    assert seen.bodies[20:] == second
    assert pull.stats.resubscribes >= 2  # re-created after the reconnect


async def test_a_consumer_deleted_under_the_loop_is_created_again(client: Client) -> None:
    js, seen = client.jetstream(), Seen()

    async def handle(msg: Msg) -> None:
        await seen.add(msg.data.decode())

    pull = DurablePull(
        js, STREAM, config(deliver_policy=DeliverPolicy.NEW), handle, batch=5, fetch_timeout=0.3, backoff=FAST
    )
    with structlog.testing.capture_logs() as logs:
        async with running(pull):
            await poll(lambda: pull.stats.consumers_created == 1, "consumer created", timeout=BOUND, every=0.02)
            await publish(js, "e-1")
            await seen.wait(1)
            await js.delete_consumer(STREAM, DURABLE)
            await poll(lambda: pull.stats.consumers_created == 2, "consumer re-created", timeout=BOUND, every=0.02)
            await publish(js, "e-2")
            await seen.wait(2)
    assert seen.bodies == ["e-1", "e-2"]
    assert pull.stats.retries >= 1
    assert any(e["event"] == "pull.retry" and e["phase"] == "fetch" for e in logs)


async def test_jetstream_down_at_start_is_retried_until_it_is_back(nats_server: NatsServer, client: Client) -> None:
    js, seen = client.jetstream(), Seen()

    async def handle(msg: Msg) -> None:
        await seen.add(msg.data.decode())

    js_short = client.jetstream(timeout=0.3)  # API requests time out fast while the server is down
    pull = DurablePull(js_short, STREAM, config(), handle, fetch_timeout=0.3, backoff=FAST)
    nats_server.stop()
    async with running(pull) as task:
        await poll(lambda: pull.stats.retries >= 2, "create retried", timeout=BOUND, every=0.02)
        assert not task.done()
        await asyncio.to_thread(nats_server.start)
        await poll(lambda: client.is_connected, "client reconnected", timeout=BOUND, every=0.05)
        await publish(js, "f-1")
        await seen.wait(1)
    assert pull.stats.consumers_created == 1


async def test_a_consumer_found_with_another_config_is_reported_and_updated(client: Client) -> None:
    js, seen = client.jetstream(), Seen()
    await js.add_consumer(STREAM, config(max_ack_pending=500, ack_wait=60.0))

    async def handle(msg: Msg) -> None:
        await seen.add(msg.data.decode())

    pull = DurablePull(js, STREAM, config(), handle, backoff=FAST)
    with structlog.testing.capture_logs() as logs:
        info = await pull.ensure()
    assert info is not None and info.config.max_ack_pending == 100
    [warning] = [e for e in logs if e["event"] == "pull.consumer_differs"]
    assert set(warning["differences"]) == {"max_ack_pending", "ack_wait"}
    assert warning["differences"]["max_ack_pending"] == {"found": "500", "wanted": "100"}

    kept = DurablePull(js, STREAM, config(max_ack_pending=50), handle, update=False)
    with structlog.testing.capture_logs() as logs:
        info = await kept.ensure()
    assert info is not None and info.config.max_ack_pending == 100
    assert [e["action"] for e in logs if e["event"] == "pull.consumer_differs"] == ["kept the server's"]


async def test_stop_ends_the_loop_and_what_was_fetched_is_settled(client: Client) -> None:
    js = client.jetstream()
    entered, release = asyncio.Event(), asyncio.Event()

    async def handle(msg: Msg) -> None:
        entered.set()
        await release.wait()

    pull = DurablePull(js, STREAM, config(), handle, fetch_timeout=0.3, backoff=FAST)
    task = asyncio.create_task(pull.run())
    await publish(js, "g-1")
    await asyncio.wait_for(entered.wait(), BOUND)
    pull.stop()
    release.set()
    await asyncio.wait_for(task, BOUND)
    assert pull.stats.acked == 1
    await poll(lambda: settled(js, 1), "acked", timeout=BOUND, every=0.05)


async def test_a_batch_handler_raising_terms_its_batch_or_with_no_policy_ends_the_run_unacked(client: Client) -> None:
    js, seen = client.jetstream(), Seen()
    fail = True

    async def handle(msgs: list[Msg]) -> None:
        if fail:
            raise RuntimeError("cannot book this batch")
        await seen.add(*(m.data.decode() for m in msgs))

    pull = DurablePull(js, STREAM, config(), batch_handler=handle, batch=10, backoff=FAST)
    async with running(pull):
        await publish(js, "h-1", "h-2")
        await poll(lambda: settled(js, 2), "both settled", timeout=BOUND, every=0.05)
    assert (pull.stats.termed, pull.stats.handler_errors, seen.bodies) == (2, 2, [])

    strict = DurablePull(js, STREAM, config(), batch_handler=handle, batch=10, on_handler_error=None, backoff=FAST)
    task = asyncio.create_task(strict.run())
    await publish(js, "h-3")
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(task, BOUND)
    assert strict.stats.acked == strict.stats.termed == 0
    fail = False  # the next run gets the unsettled message again (after its ack wait: made short here)
    again = DurablePull(js, STREAM, config(ack_wait=0.5), batch_handler=handle, batch=10, backoff=FAST)
    async with running(again):
        await seen.wait(1)
    assert seen.bodies == ["h-3"]
