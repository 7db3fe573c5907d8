"""desk.bus.retry: which errors are an election's (retried) and which are not (raised at once), the
deadline and the stop event, and against a real nats-server: a publish retried through a server
restart and through a stream that is not there yet lands once, deduplicated by its Nats-Msg-Id."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import nats
import nats.errors
import nats.js.errors
import pytest
from nats.aio.client import Client

from desk.bus.retry import Backoff, publish, retrying, transient
from desk.bus.testing import NatsServer

pytestmark = pytest.mark.integration

FAST = Backoff(initial=0.02, maximum=0.2)
BOUND = 15.0
API = nats.js.errors


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TimeoutError(), True),
        (nats.errors.TimeoutError(), True),
        (nats.errors.NoRespondersError(), True),
        (
            API.ServiceUnavailableError(
                code=503, err_code=10008, description="JetStream system temporarily unavailable"
            ),
            True,
        ),
        (API.APIError(code=503, err_code=10008, description="JetStream system temporarily unavailable"), True),
        (API.ServerError(code=500, err_code=10009, description="JetStream cluster can not handle request"), True),
        (API.ServerError(code=500, description="stream is offline"), True),
        (API.NoStreamResponseError(), True),
        (API.BadRequestError(code=400, err_code=10058, description="stream name already in use"), False),
        (API.NotFoundError(code=404, err_code=10059, description="stream not found"), False),
        (API.APIError(code=403, description="permissions violation"), False),
        (nats.errors.ConnectionClosedError(), False),
        (nats.errors.ConnectionDrainingError(), False),
        (nats.errors.AuthorizationError(), False),
        (ValueError("bad config"), False),
        (API.KeyNotFoundError(), False),  # answers about a key: no err_code, not an election
        (API.KeyWrongLastSequenceError(), False),
        (API.KeyDeletedError(), False),
    ],
)
def test_an_elections_errors_are_transient_and_the_rest_are_not(error: BaseException, expected: bool) -> None:
    assert transient(error) is expected


async def test_a_permanent_error_is_raised_at_once_and_a_transient_one_retried_until_it_clears() -> None:
    calls = 0

    async def wrong_config() -> None:
        nonlocal calls
        calls += 1
        raise API.BadRequestError(code=400, description="bad config")

    with pytest.raises(API.BadRequestError):
        await retrying(wrong_config, what="test", backoff=FAST)
    assert calls == 1

    answers: list[BaseException | int] = [nats.errors.NoRespondersError(), API.ServiceUnavailableError(code=503), 7]
    retried: list[int] = []

    async def election() -> int:
        answer = answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    assert await retrying(election, what="test", backoff=FAST, on_retry=lambda n, _: retried.append(n)) == 7
    assert retried == [1, 2]


async def test_the_deadline_and_the_stop_event_end_the_retrying_with_the_last_error() -> None:
    async def never() -> None:
        raise nats.errors.TimeoutError

    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(nats.errors.TimeoutError):
        await retrying(never, what="test", deadline=0.3, backoff=FAST)
    assert loop.time() - began < 2.0

    stop = asyncio.Event()
    loop.call_later(0.2, stop.set)
    with pytest.raises(nats.errors.TimeoutError):
        await asyncio.wait_for(retrying(never, what="test", backoff=FAST, stop=stop), BOUND)


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    try:
        yield nc
    finally:
        await nc.close()


async def test_a_publish_retried_through_a_server_restart_lands_once(nats_server: NatsServer, client: Client) -> None:
    js = client.jetstream()
    await js.add_stream(name="DEDUP", subjects=["dedup.>"], duplicate_window=60.0)
    retried = asyncio.Event()
    await asyncio.to_thread(nats_server.stop)  # mid-retry: the publish starts with the server down
    task = asyncio.create_task(
        publish(
            js,
            "dedup.a",
            b"one",
            msg_id="m-1",
            timeout=0.5,
            deadline=BOUND,
            backoff=FAST,
            on_retry=lambda *_: retried.set(),
        )
    )
    await asyncio.wait_for(retried.wait(), BOUND)
    await asyncio.to_thread(nats_server.start)  # same port, same store
    published = await asyncio.wait_for(task, BOUND + 5)
    assert published.attempts >= 2
    info = await js.stream_info("DEDUP")
    assert info.state.messages == 1  # an attempt buffered while disconnected and its retry: stored once
    again = await publish(js, "dedup.a", b"one", msg_id="m-1", backoff=FAST)  # a PubAck lost: sent again
    assert again.ack.duplicate and again.ack.seq == published.ack.seq
    assert (await js.stream_info("DEDUP")).state.messages == 1


async def test_a_publish_to_a_stream_not_there_yet_is_retried_until_it_is(client: Client) -> None:
    js = client.jetstream()
    retried = asyncio.Event()
    task = asyncio.create_task(
        publish(
            js,
            "later.a",
            b"x",
            msg_id="l-1",
            timeout=0.5,
            deadline=BOUND,
            backoff=FAST,
            on_retry=lambda *_: retried.set(),
        )
    )
    await asyncio.wait_for(retried.wait(), BOUND)  # 503 no responders: what a stream without a leader answers
    await js.add_stream(name="LATER", subjects=["later.>"])
    published = await asyncio.wait_for(task, BOUND + 5)
    assert published.ack.stream == "LATER" and not published.ack.duplicate
    with pytest.raises(ValueError, match="Nats-Msg-Id"):
        await publish(js, "later.a", b"x", msg_id="")
