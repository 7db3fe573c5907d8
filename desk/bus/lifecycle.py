"""The one lifecycle every service has.

SIGINT/SIGTERM set an ``asyncio.Event``; an ``AsyncExitStack`` holds connect -> micro service ->
the service's own tasks; on the way out everything is closed in reverse and the connection is
drained within a bounded timeout, with a log line if work was left behind.

Active/standby (``SERVICE_LEASE=true`` and a ``lease`` key given to :func:`serve`): after connecting,
the service waits to hold its lease (desk.bus.lease) before ``start`` runs, so a standby registers no
endpoint and consumes nothing. Once active, a task renews the lease; losing it ends the service at once
with exit code 1 (its supervisor starts it again, as a standby). A clean stop releases the lease after
the service has shut down, so the standby takes over within one poll (<= 0.5 s) instead of the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from desk.bus import lease as leases
from desk.bus.connect import connect
from desk.bus.logging import configure_logging, get_logger
from desk.bus.settings import BusSettings

log = get_logger("desk.bus")


@dataclass
class ServiceRuntime:
    """What a service's start function gets: the connection, an exit stack, a stop event."""

    name: str
    nc: Client
    js: JetStreamContext
    stack: contextlib.AsyncExitStack
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    failure: BaseException | None = None
    lease: leases.Lease | None = None  # held while the service is active (SERVICE_LEASE)
    _tasks: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` for the life of the service; if it fails, the service stops with an error.

        The task is cancelled (and awaited) when the service shuts down.
        """
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                log.error("service.task_failed", task=name, error=repr(exc), exc_info=exc)
                self.failure = exc
                self.stop.set()

        task.add_done_callback(done)

        async def cancel() -> None:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

        self.stack.push_async_callback(cancel)
        return task


StartFn = Callable[[ServiceRuntime], Awaitable[None]]


async def serve(
    name: str,
    settings: BusSettings,
    start: StartFn,
    *,
    install_signals: bool = True,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    lease: str | None = None,
) -> int:
    """Connect, (hold the lease,) run ``start``, wait for a signal or a failed task, then shut down cleanly.

    Tests run services in-process with ``install_signals=False``, their own ``stop`` event, and
    wait on ``ready`` (set once ``start`` has returned and the service is serving). ``lease``: the
    service's lease key, used when ``settings.service_lease`` is on (a standby waits before ``start``).
    Returns the process exit code: 0 after a signal, 1 after a failure (a lost lease included).
    """
    nc = await connect(settings, name)
    runtime = ServiceRuntime(name=name, nc=nc, js=nc.jetstream(), stack=contextlib.AsyncExitStack())
    if stop is not None:
        runtime.stop = stop
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, runtime.stop.set)
    try:
        async with runtime.stack:
            if lease is not None and settings.service_lease and not await _become_active(runtime, settings, lease):
                log.info("service.stopping", name=name, reason="signal while standby")
            else:
                await start(runtime)
                await barrier(nc)
                log.info("service.started", name=name)
                if ready is not None:
                    ready.set()
                await runtime.stop.wait()
                log.info("service.stopping", name=name, reason="failure" if runtime.failure else "signal")
    except Exception as exc:  # start-up failed: say why, exit non-zero
        log.error("service.start_failed", name=name, error=repr(exc), exc_info=exc)
        runtime.failure = exc
    finally:
        if runtime.lease is not None and not isinstance(runtime.failure, leases.LeaseLost):
            await runtime.lease.release()  # after the shutdown: the standby starts once we have stopped
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        await drain(nc, settings.drain_timeout)
    log.info("service.stopped", name=name)
    return 1 if runtime.failure else 0


async def _become_active(runtime: ServiceRuntime, settings: BusSettings, key: str) -> bool:
    """Wait to hold lease ``key`` (False: stopped first), then keep it renewed for the service's life."""
    kv, ttl = await leases.open_bucket(runtime.js, settings.lease_ttl)
    holder = leases.Holder(
        service=runtime.name,
        instance=settings.service_instance or leases.default_instance(),
        host=socket.gethostname(),
        pid=os.getpid(),
        since_ns=time.time_ns(),
    )
    lease = leases.Lease(kv, key, ttl, holder)
    began = time.monotonic()
    if not await lease.acquire(runtime.stop):
        return False
    runtime.lease = lease
    log.info("service.active", name=runtime.name, lease=key, waited_s=round(time.monotonic() - began, 3), ttl_s=ttl)
    runtime.spawn(lease.keep(runtime.stop), f"{runtime.name}.lease")  # LeaseLost -> failure -> stop
    return True


async def barrier(nc: Client, timeout: float = 5.0) -> None:
    """Return once the server has processed every SUB sent so far.

    nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of the buffered SUB
    commands, so a service could report ready before its endpoints are subscribed. A request goes
    through the same buffer as the SUBs: its "no responders" answer proves they were processed.
    """
    with contextlib.suppress(Exception):
        await nc.request(nc.new_inbox(), b"", timeout=timeout)


async def drain(nc: Client, timeout: float) -> None:
    """Drain ``nc`` (in-flight handlers and acks finish) within ``timeout`` seconds, then close."""
    if nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except (TimeoutError, Exception) as exc:  # noqa: BLE001 - shutdown must finish whatever happened
        pending = nc.pending_data_size if hasattr(nc, "pending_data_size") else None
        log.warning("service.drain_incomplete", error=repr(exc), timeout=timeout, pending_bytes=pending)
        with contextlib.suppress(Exception):
            await nc.close()


def run(name: str, settings: BusSettings, start: StartFn, *, lease: str | None = None) -> None:
    """Entry point for ``python -m services.<name>``: logging, then :func:`serve`, then exit.
    ``lease``: the service's lease key (active/standby when ``SERVICE_LEASE`` is on)."""
    configure_logging(name, settings.log_level, settings.log_format)
    loop_factory, loop_name = event_loop_factory(settings.event_loop)
    log.info("service.event_loop", loop=loop_name)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        code = runner.run(serve(name, settings, start, lease=lease))
    raise SystemExit(code)


def event_loop_factory(choice: str) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The loop factory for ``EVENT_LOOP`` (auto, uvloop, asyncio) and its name.

    uvloop cuts the desk's order latency by about a tenth (docs/performance.md); ``auto`` uses it
    when it is installed, ``uvloop`` insists on it, ``asyncio`` never uses it.
    """
    if choice == "asyncio":
        return None, "asyncio"
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("EVENT_LOOP=uvloop, but uvloop is not installed (pip install uvloop)") from None
        return None, "asyncio"
    return uvloop.new_event_loop, "uvloop"
