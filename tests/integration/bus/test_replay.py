"""desk.bus.replay against a real nats-server: empty, filtered, growing while read, apply raising,
the server restarted mid-replay, and follow() taking over exactly where the replay stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from desk.bus.pull import Backoff
from desk.bus.replay import follow, replay_to_last
from desk.bus.testing import NatsServer

pytestmark = pytest.mark.integration

STREAM = "LOG"
BOUND = 8.0
FAST = Backoff(initial=0.05, maximum=0.5)


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    await nc.jetstream().add_stream(name=STREAM, subjects=["log.>"])
    try:
        yield nc
    finally:
        await nc.close()


async def publish(js: JetStreamContext, subject: str, *bodies: str) -> None:
    for body in bodies:
        await js.publish(subject, body.encode())


def bodies(seen: list[Msg]) -> list[str]:
    return [m.data.decode() for m in seen]


async def test_an_empty_stream_replays_nothing_at_once(client: Client) -> None:
    seen: list[Msg] = []
    replayed = await asyncio.wait_for(replay_to_last(client.jetstream(), STREAM, "log.>", seen.append), 1.0)
    assert (replayed.last_seq, replayed.count, seen) == (0, 0, [])


async def test_every_message_up_to_the_last_is_applied_in_order_filtered(client: Client) -> None:
    js = client.jetstream()
    for i in range(300):
        await publish(js, "log.a" if i % 3 else "log.b", f"m{i}")
    seen: list[Msg] = []
    replayed = await replay_to_last(js, STREAM, "log.a", seen.append)
    assert bodies(seen) == [f"m{i}" for i in range(300) if i % 3]
    assert (replayed.last_seq, replayed.count, replayed.failed, replayed.retries) == (300, 200, 0, 0)

    everything: list[Msg] = []
    assert (await replay_to_last(js, STREAM, "log.>", everything.append)).count == 300
    # a filter with nothing up to the end returns at once, without waiting out a fetch
    nothing: list[Msg] = []
    replayed = await asyncio.wait_for(replay_to_last(js, STREAM, "log.none", nothing.append, stall=5), 1.0)
    assert (replayed.last_seq, replayed.count) == (300, 0)


async def test_a_stream_growing_while_read_is_read_up_to_its_last_sequence_at_the_start(client: Client) -> None:
    js = client.jetstream()
    await publish(js, "log.a", *(f"old{i}" for i in range(10)))
    seen: list[Msg] = []

    async def apply(msg: Msg) -> None:
        seen.append(msg)
        if len(seen) == 1:
            await publish(js, "log.a", *(f"new{i}" for i in range(5)))  # arrives during the replay

    replayed = await replay_to_last(js, STREAM, "log.>", apply)
    assert bodies(seen) == [f"old{i}" for i in range(10)]
    assert (replayed.last_seq, replayed.count) == (10, 10)

    followed: asyncio.Queue[Msg] = asyncio.Queue()
    sub = await follow(js, STREAM, "log.>", followed.put_nowait, after_seq=replayed.last_seq)
    try:
        got = [await asyncio.wait_for(followed.get(), BOUND) for _ in range(5)]
        await publish(js, "log.a", "live")
        got.append(await asyncio.wait_for(followed.get(), BOUND))
    finally:
        await sub.unsubscribe()
    assert bodies(got) == [f"new{i}" for i in range(5)] + ["live"]  # nothing missed, nothing twice


async def test_apply_raising_is_counted_and_the_replay_goes_on(client: Client) -> None:
    js = client.jetstream()
    await publish(js, "log.a", "ok1", "bad", "ok2")
    seen: list[str] = []

    def apply(msg: Msg) -> None:
        if msg.data == b"bad":
            raise ValueError("bad data")
        seen.append(msg.data.decode())

    replayed = await replay_to_last(js, STREAM, "log.>", apply)
    assert seen == ["ok1", "ok2"]
    assert (replayed.count, replayed.failed) == (3, 1)


async def test_a_server_restart_mid_replay_resumes_after_the_last_message_applied(
    nats_server: NatsServer, client: Client
) -> None:
    js = client.jetstream(timeout=0.5)
    total, pad = 10_000, b"." * 1000  # 10 MB: more than a flow-control window is in flight at once
    await asyncio.gather(*[await js.publish_async("log.a", f"{i}:".encode() + pad) for i in range(total)])
    seen: list[int] = []

    async def apply(msg: Msg) -> None:
        seen.append(int(msg.data.split(b":", 1)[0]))
        if len(seen) == 50:
            # the replay's consumer (memory, ephemeral) is gone with the server; the stream is not
            await asyncio.to_thread(nats_server.restart)

    replayed = await replay_to_last(js, STREAM, "log.>", apply, stall=0.5, backoff=FAST, timeout=BOUND)
    assert seen == list(range(total))  # in order, each once
    assert (replayed.last_seq, replayed.count) == (total, total)
    assert replayed.retries >= 1  # the restart was felt, and recovered from


async def test_a_replay_that_cannot_finish_in_time_raises(nats_server: NatsServer, client: Client) -> None:
    js = client.jetstream(timeout=0.2)
    await publish(js, "log.a", "m")
    nats_server.stop()
    try:
        with pytest.raises(TimeoutError):
            await replay_to_last(js, STREAM, "log.>", lambda m: None, timeout=0.8, backoff=FAST)
    finally:
        await asyncio.to_thread(nats_server.start)  # the client closes cleanly on a live server
    seen: list[Msg] = []
    assert (await replay_to_last(js, STREAM, "log.>", seen.append, timeout=BOUND, backoff=FAST)).count == 1
