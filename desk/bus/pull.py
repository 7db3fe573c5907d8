"""A durable JetStream pull consumer that survives what a server and a cluster put it through.

:class:`DurablePull` creates or binds a durable consumer, fetches batches, hands them to an async
handler and acks, naks or terminates each message as the handler says, until :meth:`DurablePull.stop`
(or the ``stop`` event it was given) ends it. Nothing transient ends it:

- a reconnect (nats.py #504: pull subscriptions can go quiet after a server restart) re-creates the
  subscription before the next fetch;
- a JetStream timeout, ``503 no responders`` or an election error while creating the consumer,
  fetching or acking is retried inside the loop after a bounded exponential backoff with jitter
  (:class:`desk.bus.retry.Backoff`), each retry logged (``pull.retry``) and counted; :meth:`ensure`
  raises what is not transient (:func:`desk.bus.retry.transient`: a wrong config) at once;
- a consumer deleted under it (the next fetch is answered 503) is created again, from the config.

A message is data: a handler that raises for it gets it terminated (by default), logged
(``pull.handler_failed``) and counted, and the loop goes on. Only a closed connection (the service is
shutting down) ends the loop without ``stop``.

Two handler shapes:

- ``handler(msg) -> Outcome | None``: one message at a time (None is :data:`Outcome.ACK`);
- ``batch_handler(batch) -> Sequence[Outcome] | Outcome | None``: the whole fetch at once, one outcome
  per message in fetch order (a single outcome applies to all). ``prepare(msgs)`` (optional) turns
  the fetched messages into the ``batch`` the handler gets; it runs in the fetcher, so with
  ``prefetch > 1`` the next batches are fetched and prepared while the handler works on this one.

Outcomes are settled in fetch order once the handler has returned (ack after the work is done); a
message the handler has settled itself is left alone. ``after(batch, outcomes)`` runs once they are
sent. Counters (:class:`PullStats`, ``stats_data()`` for a micro endpoint's STATS) say what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo

from desk.bus.fetch import fetch_available
from desk.bus.logging import get_logger
from desk.bus.retry import CLOSED, Backoff, transient
from desk.bus.streams import differences

log = get_logger("desk.bus")


class Outcome(enum.Enum):
    """What to tell JetStream about one message once the handler is done with it."""

    ACK = "ack"  # done: never again
    NAK = "nak"  # not now: redeliver (after ``nak_delay``)
    TERM = "term"  # never: it will not get better (bad data)


@dataclass
class PullStats:
    """What one :class:`DurablePull` has done (since it was made)."""

    fetched: int = 0  # messages fetched
    handled: int = 0  # messages the handler has given an outcome
    acked: int = 0
    naked: int = 0
    termed: int = 0
    handler_errors: int = 0  # messages whose handler raised (then settled as ``on_handler_error``)
    retries: int = 0  # transient errors retried (subscribe, fetch, ack)
    ack_failures: int = 0  # acks/naks/terms that did not reach the server (redelivered later)
    resubscribes: int = 0  # subscriptions re-created (reconnect, error, consumer gone)
    consumers_created: int = 0  # the durable was missing and was created

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _Retry(Exception):
    """Internal: a transient failure in ``phase``; back off, re-create the subscription, go on."""

    def __init__(self, phase: str, error: BaseException) -> None:
        super().__init__(phase, error)
        self.phase, self.error = phase, error


_CLOSED = CLOSED
__all__ = ["Backoff", "DurablePull", "Outcome", "PullStats"]


@dataclass
class _Fetched:
    """One fetch on its way to the handler: the messages, what ``prepare`` made of them (or raised)."""

    msgs: list[Msg]
    prepared: Any
    error: Exception | None = None


def _differences(found: ConsumerConfig, wanted: ConsumerConfig) -> dict[str, tuple[Any, Any]]:
    """The fields ``wanted`` sets that ``found`` has otherwise (:func:`desk.bus.streams.differences`); a
    single filter subject the server reports as ``filter_subjects`` is the same filter."""
    out = differences(found, wanted, tuple(f.name for f in fields(ConsumerConfig)), unordered=frozenset())
    if "filter_subject" in out and found.filter_subject is None and found.filter_subjects == [wanted.filter_subject]:
        del out["filter_subject"]
    return out


class DurablePull:
    """One durable pull consumer ``config.durable_name`` on ``stream`` (see the module docstring).

    ``batch``: messages per fetch; ``fetch_timeout``: how long one fetch waits (bounds how long
    :meth:`stop` waits for the fetcher); ``prefetch``: batches fetched and not yet settled, the one
    in the handler included; ``linger``: after a fetch that came back short, wait this long so light
    traffic gathers into fewer, larger batches; ``ack_sync``: wait for the server to confirm each
    ack (work queues); ``nak_delay``: redelivery delay of a NAK; ``on_handler_error``: the outcome of
    the messages a raising handler was given (None: the error ends :meth:`run`, nothing of that batch
    is settled, so it is redelivered); ``update``: bring an existing consumer whose config differs
    to ``config`` (always logged as a warning, with the differences). ``stop``: an event that ends
    the loop (e.g. the service's), else one of its own.
    """

    def __init__(
        self,
        js: JetStreamContext,
        stream: str,
        config: ConsumerConfig,
        handler: Callable[[Msg], Awaitable[Outcome | None]] | None = None,
        *,
        batch_handler: Callable[[Any], Awaitable[Sequence[Outcome] | Outcome | None]] | None = None,
        prepare: Callable[[list[Msg]], Awaitable[Any]] | None = None,
        after: Callable[[Any, Sequence[Outcome]], Awaitable[None] | None] | None = None,
        batch: int = 1,
        fetch_timeout: float = 1.0,
        prefetch: int = 1,
        linger: float = 0.0,
        ack_sync: bool = False,
        ack_timeout: float = 5.0,
        nak_delay: float | None = None,
        on_handler_error: Outcome | None = Outcome.TERM,
        update: bool = True,
        backoff: Backoff = Backoff(),  # noqa: B008 - frozen
        stop: asyncio.Event | None = None,
    ) -> None:
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        if not config.durable_name:
            raise ValueError("a durable pull consumer needs config.durable_name")
        if batch < 1 or prefetch < 1 or fetch_timeout <= 0:
            raise ValueError("batch and prefetch must be >= 1, fetch_timeout > 0")
        self.js = js
        self.stream = stream
        self.config = config
        self.durable: str = config.durable_name
        self.handler = handler
        self.batch_handler = batch_handler
        self.prepare = prepare
        self.after = after
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.prefetch = prefetch
        self.linger = linger
        self.ack_sync = ack_sync
        self.ack_timeout = ack_timeout
        self.nak_delay = nak_delay
        self.on_handler_error = on_handler_error
        self.update = update
        self.backoff = backoff
        self.stats = PullStats()
        self._stop = stop if stop is not None else asyncio.Event()
        self._nc = js._nc
        self._sub: JetStreamContext.PullSubscription | None = None
        self._settle_failed: BaseException | None = None  # set by the settler, seen by the fetcher
        self._attempt = 0
        self._log = log.bind(stream=stream, durable=self.durable)

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """End :meth:`run` after the fetch in hand; what was fetched is still handled and settled."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stats_data(self) -> dict[str, int]:
        return self.stats.as_dict()

    async def ensure(self) -> ConsumerInfo | None:
        """Create (or bring to ``config``) the durable, retrying transient errors; its info, or None
        if stopped first. :meth:`run` does this itself; call it to have the consumer before running."""
        while not self.stopping:
            try:
                info = await self._ensure()
                self._attempt = 0
                return info
            except _CLOSED:
                raise
            except Exception as exc:
                if not transient(exc):
                    raise  # a wrong config, a refused permission: surfaced at once (desk.bus.retry)
                await self._back_off(_Retry("consumer", exc))  # timeout, 503, election: retried
        return None

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Fetch, handle and settle until stopped (or the connection is closed for good)."""
        ready: asyncio.Queue[_Fetched | None] = asyncio.Queue()  # None: the fetcher ended
        room = asyncio.Semaphore(self.prefetch)
        fetcher = asyncio.create_task(self._fetch_loop(ready, room), name=f"pull.{self.durable}.fetch")
        try:
            while (item := await ready.get()) is not None:
                await self._handle(item)
                room.release()
            await fetcher
        finally:
            if not fetcher.done():
                fetcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await fetcher
            await self._unsubscribe()

    async def _fetch_loop(self, ready: asyncio.Queue[_Fetched | None], room: asyncio.Semaphore) -> None:
        reconnects = self._nc.stats["reconnects"]
        try:
            while not self.stopping:
                await room.acquire()
                if self.stopping:
                    return
                msgs: list[Msg] = []
                try:
                    if self._settle_failed is not None:
                        failed, self._settle_failed = self._settle_failed, None
                        raise _Retry("ack", failed)
                    if self._nc.stats["reconnects"] != reconnects:
                        reconnects = self._nc.stats["reconnects"]
                        self._log.info("pull.resubscribing", reason="reconnected", reconnects=reconnects)
                        await self._unsubscribe()
                    if self._sub is None:
                        self._sub = await self._subscribe()
                    msgs = await self._fetch(self._sub)
                except _CLOSED:
                    room.release()
                    if not self.stopping:
                        self._log.warning("pull.connection_closed")
                    return
                except _Retry as retry:
                    room.release()
                    await self._unsubscribe()
                    await self._back_off(retry)
                    continue
                self._attempt = 0
                if not msgs:
                    room.release()
                    continue
                self.stats.fetched += len(msgs)
                fetched = _Fetched(msgs, msgs)
                if self.prepare is not None:
                    try:
                        fetched.prepared = await self.prepare(msgs)
                    except Exception as exc:  # noqa: BLE001 - judged like the handler raising (_handle)
                        fetched.error = exc
                ready.put_nowait(fetched)  # its slot is released once it is settled
                if len(msgs) < self.batch and self.linger > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), self.linger)
        finally:
            ready.put_nowait(None)

    async def _fetch(self, sub: JetStreamContext.PullSubscription) -> list[Msg]:
        try:
            # not sub.fetch(batch): on an idle consumer it waits to fill the batch (desk.bus.fetch)
            return await fetch_available(sub, self.batch, self.fetch_timeout)
        except nats.errors.TimeoutError:
            return []  # nothing to fetch (also: a disconnect; the reconnect check re-subscribes)
        except _CLOSED:
            raise
        except Exception as exc:
            raise _Retry("fetch", exc) from exc

    async def _back_off(self, retry: _Retry) -> None:
        self._attempt += 1
        self.stats.retries += 1
        delay = self.backoff.delay(self._attempt)
        self._log.warning(
            "pull.retry", phase=retry.phase, attempt=self._attempt, delay=round(delay, 3), error=repr(retry.error)
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), delay)

    # -- the consumer ----------------------------------------------------------------------------

    async def _ensure(self) -> ConsumerInfo:
        try:
            found: ConsumerInfo | None = await self.js.consumer_info(self.stream, self.durable)
        except nats.js.errors.NotFoundError:
            found = None
        if found is None:
            info = await self.js.add_consumer(self.stream, self.config)
            self.stats.consumers_created += 1
            self._log.info("pull.consumer_created")
            return info
        differences = _differences(found.config, self.config)
        if not differences:
            return found
        shown = {name: {"found": str(have), "wanted": str(want)} for name, (have, want) in differences.items()}
        if not self.update:
            self._log.warning("pull.consumer_differs", differences=shown, action="kept the server's")
            return found
        self._log.warning("pull.consumer_differs", differences=shown, action="updating to ours")
        try:
            return await self.js.add_consumer(self.stream, self.config)
        except nats.js.errors.BadRequestError as err:  # a field the server will not change: keep its
            self._log.warning("pull.consumer_update_refused", error=err.description, err_code=err.err_code)
            return found

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        try:
            await self._ensure()
            sub = await self.js.pull_subscribe_bind(durable=self.durable, stream=self.stream)
        except _CLOSED:
            raise
        except Exception as exc:
            raise _Retry("consumer", exc) from exc
        self.stats.resubscribes += 1
        self._log.debug("pull.subscribed")
        return sub

    async def _unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # -- handling and settling -------------------------------------------------------------------

    async def _handle(self, fetched: _Fetched) -> None:
        msgs, prepared = fetched.msgs, fetched.prepared
        if self.handler is not None and fetched.error is None:
            outcomes = [await self._one(msg) for msg in msgs]
        else:
            try:
                if fetched.error is not None:
                    raise fetched.error  # prepare raised: judged as the handler raising
                assert self.batch_handler is not None
                result = await self.batch_handler(prepared)
            except Exception as exc:
                self.stats.handler_errors += len(msgs)
                self._log.error(
                    "pull.handler_failed",
                    messages=len(msgs),
                    error=repr(exc),
                    exc_info=exc,
                    outcome=self.on_handler_error.value if self.on_handler_error else "raised",
                )
                if self.on_handler_error is None:
                    raise
                result = self.on_handler_error
            outcomes = self._outcomes(result, len(msgs))
        self.stats.handled += len(msgs)
        await self._settle(msgs, outcomes)
        if self.after is not None:
            done = self.after(prepared, outcomes)
            if inspect.isawaitable(done):
                await done

    async def _one(self, msg: Msg) -> Outcome:
        try:
            return (await self.handler(msg) if self.handler else None) or Outcome.ACK
        except Exception as exc:
            self.stats.handler_errors += 1
            self._log.warning(
                "pull.handler_failed",
                subject=msg.subject,
                stream_seq=_stream_seq(msg),
                error=repr(exc),
                outcome=self.on_handler_error.value if self.on_handler_error else "raised",
            )
            if self.on_handler_error is None:
                raise
            return self.on_handler_error

    @staticmethod
    def _outcomes(result: Sequence[Outcome] | Outcome | None, count: int) -> list[Outcome]:
        if result is None:
            return [Outcome.ACK] * count
        if isinstance(result, Outcome):
            return [result] * count
        outcomes = list(result)
        if len(outcomes) != count:
            raise ValueError(f"the batch handler gave {len(outcomes)} outcomes for {count} messages")
        return outcomes

    async def _settle(self, msgs: list[Msg], outcomes: list[Outcome]) -> None:
        """Ack, nak or term each message (those the handler has not settled itself), in order."""
        pending: list[tuple[Msg, Outcome]] = [(m, o) for m, o in zip(msgs, outcomes, strict=True) if not m.is_acked]
        results: list[BaseException | None]
        if self.ack_sync:
            results = list(await asyncio.gather(*(self._send(m, o) for m, o in pending), return_exceptions=True))
        else:
            results = []
            for m, o in pending:
                try:
                    await self._send(m, o)
                    results.append(None)
                except Exception as exc:  # noqa: BLE001 - counted below; redelivered after ack_wait
                    results.append(exc)
        failures = [r for r in results if isinstance(r, BaseException)]
        for (_, outcome), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                continue
            if outcome is Outcome.ACK:
                self.stats.acked += 1
            elif outcome is Outcome.NAK:
                self.stats.naked += 1
            else:
                self.stats.termed += 1
        if failures:
            self.stats.ack_failures += len(failures)
            self._log.warning("pull.settle_failed", count=len(failures), of=len(pending), error=repr(failures[0]))
            self._settle_failed = failures[0]

    async def _send(self, msg: Msg, outcome: Outcome) -> None:
        if outcome is Outcome.ACK:
            if self.ack_sync:
                await msg.ack_sync(timeout=self.ack_timeout)
            else:
                await msg.ack()
        elif outcome is Outcome.NAK:
            await msg.nak(delay=self.nak_delay)
        else:
            await msg.term()


def _stream_seq(msg: Msg) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:  # noqa: BLE001 - only for logging
        return 0
