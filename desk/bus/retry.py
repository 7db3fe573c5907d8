"""One way to retry a JetStream call through an election: :func:`retrying`, :func:`publish`.

On a cluster, the loss of a node makes JetStream calls fail for a few seconds while a stream's (or
the meta group's) leader is elected again: requests time out, are answered ``503`` (no responders,
``ServiceUnavailableError``, err_code 10008 "JetStream system temporarily unavailable") or ``500``
("JetStream cluster can not handle request", a stream or consumer "offline"). Those are
:func:`transient` and retried after a bounded exponential backoff with jitter (:class:`Backoff`),
each retry logged (``retry``, with ``what`` and the attempt). Anything else is permanent and raised
at once: a wrong config (400), something missing (404: the caller decides what that means), a
refused login, a bad argument, the connection closed for good (the service is shutting down).

``deadline`` bounds the retrying (seconds; the last error is raised when it passes); ``None`` retries
until it succeeds or ``stop`` is set (then the last error is raised). A service's loop uses
``None`` with its stop event; a request handler uses a deadline below its caller's timeout.

:func:`publish` is a JetStream publish retried with the same ``Nats-Msg-Id`` on every attempt: an
attempt whose PubAck was lost in the election (it landed, the answer did not) is deduplicated by the
stream, as long as the retrying ends inside the stream's ``duplicate_window`` (ORDERS: 2 min,
EXECUTIONS: 10 min, desk.bus.streams). A ``duplicate`` PubAck after a retry may be that attempt's own
(:attr:`Published.attempts` says whether there was one).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from desk.bus.logging import get_logger

T = TypeVar("T")

log = get_logger("desk.bus")

#: JetStream error codes that clear on their own once a leader is elected again.
TRANSIENT_CODES = frozenset(
    {
        10008,  # JetStream system temporarily unavailable (no meta leader / no quorum)
        10009,  # JetStream cluster can not handle request (not the leader)
    }
)
#: Descriptions of the same conditions where the code is missing or another one.
TRANSIENT_TEXT = (
    "temporarily unavailable",
    "not currently available",
    "offline",
    "leadership",
    "no response from stream",
    "can not handle request",
)

#: Closed or closing for good: the service is ending; never retried.
CLOSED = (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError)

#: Transport failures of a connection that is reconnecting (nats-py fails over to another server).
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TimeoutError,  # asyncio's, and nats.errors.TimeoutError (a subclass)
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
)


@dataclass(frozen=True)
class Backoff:
    """Pause before retry ``attempt`` (1, 2, ...): ``initial * factor**(attempt-1)``, at most
    ``maximum``, spread by +-``jitter`` (a fraction) so replicas do not retry in step."""

    initial: float = 0.1
    maximum: float = 5.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt - 1))
        return max(0.0, base * (1.0 + random.uniform(-self.jitter, self.jitter)))


def transient(exc: BaseException) -> bool:
    """Whether ``exc`` is what an election (or a fail-over to another server) looks like: retry it."""
    if isinstance(exc, CLOSED):
        return False
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, nats.js.errors.APIError):
        # nats-py's KV errors (KeyNotFoundError, KeyWrongLastSequenceError...) are APIErrors whose
        # __init__ sets none of these: an answer about the key, never an election's
        if getattr(exc, "err_code", None) in TRANSIENT_CODES:
            return True
        text = (getattr(exc, "description", None) or "").lower()
        if any(marker in text for marker in TRANSIENT_TEXT):
            return True
        # 503 is "unavailable"; a 500 on a cluster is a leader that is not one (yet). 4xx: our mistake.
        return getattr(exc, "code", None) in (500, 503) and not isinstance(
            exc, (nats.js.errors.BadRequestError, nats.js.errors.NotFoundError)
        )
    return False


async def retrying(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    log: Any = log,
    deadline: float | None = None,
    backoff: Backoff = Backoff(),
    stop: asyncio.Event | None = None,
    is_transient: Callable[[BaseException], bool] = transient,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> T:
    """``await op()`` until it succeeds; a transient error (:func:`transient`) is retried after
    ``backoff``, a permanent one raised at once. ``deadline``: seconds after which the last error
    is raised (None: no bound). ``stop``: an event that ends the retrying (the last error is raised).
    ``on_retry(attempt, error)``: called before each pause (counters)."""
    loop = asyncio.get_running_loop()
    end = None if deadline is None else loop.time() + deadline
    attempt = 0
    while True:
        try:
            return await op()
        except Exception as exc:
            if not is_transient(exc):
                raise
            attempt += 1
            delay = backoff.delay(attempt)
            now = loop.time()
            if (end is not None and now + delay > end) or (stop is not None and stop.is_set()):
                log.warning("retry.gave_up", what=what, attempts=attempt, error=repr(exc))
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            log.warning("retry", what=what, attempt=attempt, delay=round(delay, 3), error=repr(exc))
            if stop is None:
                await asyncio.sleep(delay)  # a retry pause, not synchronisation
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                if stop.is_set():
                    raise


@dataclass(frozen=True)
class Published:
    """A publish's PubAck and how many attempts it took (>1: a ``duplicate`` may be our own)."""

    ack: PubAck
    attempts: int


async def publish(
    js: JetStreamContext,
    subject: str,
    data: bytes,
    *,
    msg_id: str,
    headers: Mapping[str, str] | None = None,
    stream: str | None = None,
    timeout: float | None = None,
    what: str | None = None,
    deadline: float | None = 60.0,
    backoff: Backoff = Backoff(),
    stop: asyncio.Event | None = None,
    log: Any = log,
    on_retry: Callable[[int, BaseException], None] | None = None,
) -> Published:
    """``js.publish`` retried through elections with ``Nats-Msg-Id: msg_id`` on every attempt (see
    the module docstring). Keep ``deadline`` well inside the stream's duplicate window."""
    if not msg_id:
        raise ValueError("a retried publish needs a Nats-Msg-Id, or a landed attempt is stored twice")
    sent = {**(headers or {}), Header.MSG_ID: msg_id}
    attempts = 0

    async def once() -> PubAck:
        nonlocal attempts
        attempts += 1
        options: dict[str, Any] = {"headers": sent, "stream": stream}
        if timeout is not None:
            options["timeout"] = timeout
        return await js.publish(subject, data, **options)

    ack = await retrying(
        once,
        what=what or f"publish {subject}",
        log=log,
        deadline=deadline,
        backoff=backoff,
        stop=stop,
        on_retry=on_retry,
    )
    return Published(ack, attempts)
