"""Read a stream from its first message up to its last sequence now, then (optionally) follow it.

:func:`replay_to_last` is what a service does at start-up to rebuild state from a stream (the
router's virtual accounts, the sim gateway's book): it notes the stream's last sequence, reads every
message up to it (those of ``subject_filter``) in stream order through an ephemeral ordered consumer
of its own (nats.py's: push, flow-controlled), hands each to ``apply`` and returns :class:`Replayed`.
Messages published meanwhile (past that last sequence) are not applied: :func:`follow` from
``Replayed.last_seq`` takes them, so nothing is missed and nothing is applied twice.

Transient errors (a timeout, ``503``, an election, a consumer lost with a server restart: no
delivery for ``stall`` seconds) are retried after a bounded backoff, reading on after the last
message applied (each message is applied once); only ``timeout`` bounds the whole replay
(``TimeoutError``). ``apply`` raising for a message is logged (``replay.apply_failed``), counted,
and the replay goes on: a message is data.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from desk.bus.logging import get_logger
from desk.bus.retry import CLOSED, Backoff, retrying, transient

log = get_logger("desk.bus")

Apply = Callable[[Msg], Awaitable[None] | None]
#: How long the server keeps a replay's consumer after its reader has gone (a crashed replay).
INACTIVE_THRESHOLD = 30.0


@dataclass(frozen=True)
class Replayed:
    """``last_seq``: the stream's last sequence when the replay started (read up to it; follow from
    there); ``count``: messages handed to ``apply``; ``failed``: of those, how many raised;
    ``retries``: transient errors retried."""

    last_seq: int
    count: int
    failed: int = 0
    retries: int = 0


class _Resume(Exception):
    """Internal: re-create the consumer after the last message applied."""


_CLOSED = CLOSED


async def _call(apply: Apply, msg: Msg) -> None:
    result = apply(msg)
    if inspect.isawaitable(result):
        await result


async def replay_to_last(
    js: JetStreamContext,
    stream: str,
    subject_filter: str,
    apply: Apply,
    *,
    timeout: float = 120.0,
    stall: float = 2.0,
    backoff: Backoff = Backoff(),  # noqa: B008 - frozen
) -> Replayed:
    """Apply every message of ``stream`` matching ``subject_filter`` up to its last sequence now.

    ``stall``: seconds without a delivery (while ``apply`` is not running) after which the
    consumer is taken for lost (a server restart drops it) and made again after the last message
    applied.
    """
    state = _State()
    try:
        async with asyncio.timeout(timeout):
            return await _replay(js, stream, subject_filter, apply, state, stall, backoff)
    except TimeoutError:
        log.error(
            "replay.timed_out",
            stream=stream,
            timeout=timeout,
            applied=state.count,
            next_seq=state.next_seq,
            last_seq=state.last_seq,
        )
        raise


@dataclass
class _State:
    last_seq: int = 0
    next_seq: int = 1
    count: int = 0
    failed: int = 0
    retries: int = 0


class _Reader:
    """One consumer's deliveries: applied in stream order, each once, up to ``state.last_seq``."""

    def __init__(self, state: _State, apply: Apply) -> None:
        self.state, self.apply = state, apply
        self.done = asyncio.Event()
        self.received = 0  # deliveries of this consumer
        self.applying = False
        self.closed = False

    async def on_msg(self, msg: Msg) -> None:
        if self.closed or self.done.is_set():
            return
        self.received += 1
        meta = msg.metadata
        seq = int(meta.sequence.stream)
        state = self.state
        if seq > state.last_seq:
            self.done.set()  # published after the replay began: follow() takes it
            return
        if seq < state.next_seq:
            return  # already applied (delivered again after a consumer was made anew)
        self.applying = True
        try:
            await _call(self.apply, msg)
        except Exception as exc:  # noqa: BLE001 - a message is data: logged, counted, skipped
            state.failed += 1
            log.warning("replay.apply_failed", subject=msg.subject, stream_seq=seq, error=repr(exc))
        finally:
            self.applying = False
        state.count += 1
        state.next_seq = seq + 1
        if seq >= state.last_seq or meta.num_pending == 0:
            self.done.set()


async def _replay(
    js: JetStreamContext, stream: str, subject_filter: str, apply: Apply, state: _State, stall: float, backoff: Backoff
) -> Replayed:
    attempt = 0

    async def back_off(phase: str, exc: BaseException) -> None:
        nonlocal attempt
        attempt += 1
        state.retries += 1
        delay = backoff.delay(attempt)
        log.warning(
            "replay.retry",
            stream=stream,
            phase=phase,
            attempt=attempt,
            delay=round(delay, 3),
            next_seq=state.next_seq,
            error=repr(exc),
        )
        await asyncio.sleep(delay)  # a retry pause, not synchronisation

    while True:
        try:
            info = await js.stream_info(stream)
            break
        except Exception as exc:
            if not transient(exc):
                raise  # no such stream, connection closed: not an election (desk.bus.retry)
            await back_off("stream_info", exc)  # timeout, 503, election: retried
    state.last_seq = int(info.state.last_seq or 0)
    state.next_seq = max(1, int(info.state.first_seq or 1))
    if not info.state.messages:
        log.info("replay.done", stream=stream, last_seq=state.last_seq, count=0)
        return Replayed(state.last_seq, 0)

    while True:
        reader = _Reader(state, apply)
        sub: Subscription | None = None
        try:
            sub = await js.subscribe(
                subject_filter,
                stream=stream,
                cb=reader.on_msg,
                ordered_consumer=True,
                config=ConsumerConfig(
                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                    opt_start_seq=state.next_seq,
                    inactive_threshold=INACTIVE_THRESHOLD,
                ),
            )
            await _read(sub, reader, stall)
            break
        except _CLOSED:
            raise
        except Exception as exc:  # noqa: BLE001 - timeout, 503, election, a lost consumer: resume
            await back_off("read", exc)
        finally:
            reader.closed = True
            if sub is not None:
                await _close(js, stream, sub)
    log.info(
        "replay.done",
        stream=stream,
        last_seq=state.last_seq,
        count=state.count,
        failed=state.failed,
        retries=state.retries,
    )
    return Replayed(state.last_seq, state.count, state.failed, state.retries)


async def _read(sub: Subscription, reader: _Reader, stall: float) -> None:
    """Until ``reader`` is done; _Resume when deliveries stop coming (the consumer is lost)."""
    info = await sub.consumer_info()  # type: ignore[attr-defined]
    delivered = info.delivered.consumer_seq if info.delivered else 0
    if info.num_pending == 0 and delivered == 0:
        return  # nothing of this filter from here to the end of the stream
    seen = reader.received
    while not reader.done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader.done.wait(), stall)
            return
        if reader.received == seen and not reader.applying:
            raise _Resume(f"no delivery for {stall:g} s")
        seen = reader.received


async def _close(js: JetStreamContext, stream: str, sub: Subscription) -> None:
    consumer = getattr(sub, "_consumer", None)
    with contextlib.suppress(Exception):
        await sub.unsubscribe()
    if consumer:
        with contextlib.suppress(Exception):  # else the server drops it after INACTIVE_THRESHOLD
            await js.delete_consumer(stream, consumer)


async def follow(
    js: JetStreamContext, stream: str, subject_filter: str, apply: Apply, *, after_seq: int = 0, **options: Any
) -> Subscription:
    """Every message of ``subject_filter`` after ``after_seq`` (a :class:`Replayed`'s ``last_seq``),
    then live, to ``apply`` through an ordered push consumer (nats.py re-creates it after a gap or a
    reconnect); ``apply`` raising is logged (``follow.apply_failed``). Unsubscribe to end it."""

    async def on_msg(msg: Msg) -> None:
        try:
            await _call(apply, msg)
        except Exception as exc:  # noqa: BLE001 - a message is data
            log.warning("follow.apply_failed", subject=msg.subject, error=repr(exc))

    if after_seq > 0:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1)
    else:
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    # Creating the consumer is a JetStream API call: retried through an election (desk.bus.retry).
    return await retrying(
        lambda: js.subscribe(subject_filter, stream=stream, cb=on_msg, ordered_consumer=True, config=config, **options),
        what=f"follow {stream} {subject_filter}",
    )
