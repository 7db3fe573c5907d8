"""Child processes of the desk (nats-server, services, strategies): they die with their parent, are
stopped the same way, and are ready when they answer on the bus."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import signal
import time
from collections.abc import Callable

import nats.errors
from nats.aio.client import Client

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for child processes: SIGTERM when the parent dies (Linux), so a killed
    ``desk up``, orchestrator or test run never leaves a server or strategy behind."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: nothing to do
        pass


async def terminate(process: asyncio.subprocess.Process, timeout: float) -> bool:
    """SIGTERM ``process``, SIGKILL it if it has not exited within ``timeout`` s, and reap it.

    Returns True when it had to be killed."""
    if process.returncode is not None:
        return False
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), timeout)
        return False
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return True


async def wait_until_serving(
    nc: Client, name: str, timeout: float, give_up: Callable[[], bool], pause: float = 0.2
) -> bool:
    """True once micro service ``name`` answers its PING; False when ``give_up()`` says so (its process
    exited, a stop was asked) or ``timeout`` s pass.

    A starting process gives no other readiness signal than answering on the bus, so this asks again
    every ``pause`` s, bounded by ``timeout``; any NATS error (no responders yet, our own reconnect) is
    "not yet"."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not give_up():
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=0.5)
            return True
        except nats.errors.Error:
            await asyncio.sleep(pause)
    return False
