"""NATS micro registration and typed endpoints.

Every service registers with :func:`add_service` so ``nats micro ls|info|stats`` shows it. Typed
endpoints decode the request, call the handler, and answer refusals (:class:`DeskError`) with the
micro error headers *and* a typed body; refusals are counted per reason and shown in each
endpoint's STATS ``data`` (``{"errors": {"MALFORMED": 2, ...}}``).

Every endpoint answers only its asker (:mod:`desk.bus.confine`): a request whose reply subject is
not the asking strategy's own inbox (or, on endpoints no strategy can reach, not an inbox at all) is
dropped before it is decoded, counted per reason in STATS ``data`` (``{"dropped": {"REPLY_NOT_INBOX":
1}}``) and logged once per asker and minute.

nats-py runs one subscription's callbacks one at a time, so by default an endpoint handles one
request at a time. ``add_endpoint(..., concurrency=n)`` (n > 1) handles up to ``n`` requests at once,
each in its own task; only for handlers that are safe when their awaits interleave.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from google.protobuf.message import Message
from nats.micro import add_service as _add_service
from nats.micro.request import Request
from nats.micro.service import EndpointStats, Service

from desk.bus import codec, confine
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.v1 import common_pb2

log = get_logger("desk.bus")

#: How long shutdown waits for requests still being handled by concurrent endpoints.
DRAIN_TIMEOUT = 10.0
#: A dropped request is logged at most once per asker (strategy, or subject) and this many seconds.
DROP_LOG_INTERVAL = 60.0

Req = TypeVar("Req", bound=Message)
Handler = Callable[[Req, str], Awaitable[Message]]
ErrorBody = Callable[[DeskError, str, Req | None], Message]


class DeskService:
    """A registered micro service plus per-endpoint refusal counters."""

    def __init__(self, service: Service, drain_timeout: float = DRAIN_TIMEOUT) -> None:
        self.service = service
        self.drain_timeout = drain_timeout
        self.refusals: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        #: requests dropped unanswered, per endpoint and reason (see desk.bus.confine)
        self.dropped: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self._drop_logged: dict[str, tuple[float, int]] = {}  # asker -> (last logged, dropped since)
        self._in_flight: set[asyncio.Task[None]] = set()  # requests of concurrent endpoints being handled

    def stats_data(self, endpoint: EndpointStats) -> dict[str, Any]:
        return {
            "errors": dict(self.refusals.get(endpoint.name, {})),
            "dropped": dict(self.dropped.get(endpoint.name, {})),
        }

    def _admit(self, endpoint: str, req: Request) -> bool:
        """Whether ``req`` may be handled: its reply subject is its asker's own (desk.bus.confine)."""
        reply = req._msg.reply  # micro's Request does not expose it; the Msg underneath does
        reason = confine.check_reply(req.subject, reply)
        if reason is None:
            return True
        self.dropped[endpoint][reason] += 1
        asker = confine.asker(req.subject) or req.subject
        now = time.monotonic()
        last, since = self._drop_logged.get(asker, (float("-inf"), 0))
        if now - last >= DROP_LOG_INTERVAL:
            log.warning(
                "request.dropped",
                endpoint=endpoint,
                subject=req.subject,
                reply=(reply or "")[:120],
                reason=reason,
                strategy_id=confine.asker(req.subject) or "",
                dropped_since_last_log=since,
            )
            self._drop_logged[asker] = (now, 0)
            if len(self._drop_logged) > 10_000:  # bounded: forget the quietest askers
                self._drop_logged.pop(next(iter(self._drop_logged)))
        else:
            self._drop_logged[asker] = (last, since + 1)
        return False

    async def add_endpoint(
        self,
        name: str,
        subject: str,
        request_type: type[Req],
        handler: Handler[Req],
        *,
        error_body: ErrorBody[Req] | None = None,
        queue_group: str | None = None,
        concurrency: int = 1,
        accept: Callable[[str], bool] | None = None,
    ) -> None:
        """Serve ``subject`` with ``handler(request, subject) -> reply``.

        A :class:`DeskError` from decoding or from the handler is answered with the micro error
        headers (code = its status) and a body: ``error_body(err, subject, request)`` when given
        (an ``OrderAck`` saying why, say), an ``ErrorReply`` otherwise. Any other exception is a bug:
        logged with its traceback and answered 500 INTERNAL; the service keeps serving.

        ``concurrency`` > 1 handles up to that many requests at once, each in its own task (the
        subscription waits for a free slot before taking the next message, so a burst queues in
        nats-py, not in memory here). The handler must then be safe under interleaving. Shutdown
        waits up to ``drain_timeout`` for requests in flight, then cancels the rest. With
        concurrency, micro's own ``processing_time`` covers only taking the request, not handling it.

        ``accept(subject)`` False: the request is not this instance's to answer (another instance
        answers it: the router's partitions) and is left unanswered, before anything else is done.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")

        async def serve(req: Request) -> None:  # an admitted request
            request: Req | None = None
            try:
                request = codec.decode(req.data, request_type, req.headers)
                reply = await handler(request, req.subject)
            except DeskError as err:
                await self._refuse(name, req, err, error_body(err, req.subject, request) if error_body else None)
                return
            except Exception as exc:
                log.error("endpoint.internal_error", endpoint=name, subject=req.subject, error=repr(exc), exc_info=exc)
                internal = DeskError("INTERNAL", f"internal error: {exc!r}", status=500)
                body = error_body(internal, req.subject, request) if error_body else None
                await self._refuse(name, req, internal, body)
                return
            data, headers = codec.encode(reply)
            await req.respond(data, headers=headers)

        if concurrency == 1:

            async def handle(req: Request) -> None:
                if (accept is None or accept(req.subject)) and self._admit(name, req):
                    await serve(req)

            await self.service.add_endpoint(name=name, subject=subject, handler=handle, queue_group=queue_group)
            return

        slots = asyncio.Semaphore(concurrency)

        async def handle_in_task(req: Request) -> None:
            try:
                await serve(req)
            except Exception as exc:  # a failed reply (connection gone) must not go unseen
                log.error("endpoint.reply_failed", endpoint=name, subject=req.subject, error=repr(exc), exc_info=exc)

        async def dispatch(req: Request) -> None:
            if (accept is not None and not accept(req.subject)) or not self._admit(name, req):
                return
            await slots.acquire()
            task = asyncio.create_task(handle_in_task(req), name=f"{name}-request")
            self._in_flight.add(task)

            def done(t: asyncio.Task[None]) -> None:
                self._in_flight.discard(t)
                slots.release()

            task.add_done_callback(done)

        await self.service.add_endpoint(name=name, subject=subject, handler=dispatch, queue_group=queue_group)

    @property
    def in_flight(self) -> int:
        """Requests of concurrent endpoints being handled right now."""
        return len(self._in_flight)

    async def wait_in_flight(self) -> None:
        """Shutdown: let requests in flight finish (up to ``drain_timeout``), then cancel the rest."""
        if not self._in_flight:
            return
        pending = set(self._in_flight)
        _, late = await asyncio.wait(pending, timeout=self.drain_timeout)
        if late:
            log.warning("endpoint.requests_cancelled", count=len(late), timeout=self.drain_timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)  # their CancelledErrors, not ours

    async def _refuse(self, endpoint: str, req: Request, err: DeskError, body: Message | None) -> None:
        self.refusals[endpoint][err.code] += 1
        log.warning("request.refused", endpoint=endpoint, subject=req.subject, code=err.code, reason=err.message)
        message = body if body is not None else common_pb2.ErrorReply(code=err.code, message=err.message)
        data, headers = codec.encode(message)
        await req.respond_error(str(err.status), f"{err.code}: {err.message}", data=data, headers=headers)


async def add_service(
    runtime: ServiceRuntime, name: str, version: str, description: str, metadata: dict[str, str] | None = None
) -> DeskService:
    """Register ``name`` as a NATS micro service for the life of ``runtime``."""
    holder: list[DeskService] = []

    def stats_handler(endpoint: EndpointStats) -> dict[str, Any]:
        return holder[0].stats_data(endpoint) if holder else {}

    service = await _add_service(
        runtime.nc,
        name=name,
        version=version,
        description=description,
        metadata=metadata or {},
        stats_handler=stats_handler,
    )
    desk_service = DeskService(service)
    holder.append(desk_service)
    # The stack unwinds last-in first-out: stop taking requests first, then let those in flight finish.
    runtime.stack.push_async_callback(desk_service.wait_in_flight)
    runtime.stack.push_async_callback(service.stop)
    return desk_service
