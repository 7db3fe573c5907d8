"""Old-desk strategies, unchanged: a child process fed one JSON line per bar on its stdin.

The old desk ran ``python strategy.py`` with market data as JSON lines on stdin; the strategy
called ``from desk_client import place_order``. Here the runner starts that child with the same
interpreter (``cwd`` = its folder, ``PYTHONPATH`` including the folders holding ``desk_client`` and
``desk``), subscribes to bars and writes each as one line::

    {"symbol": "AAPL", "price": 187.12, "open": 187.0, "high": 187.3, "low": 186.9, "close": 187.12,
     "volume": 1200, "timestamp": "2026-01-02T14:30:00+00:00"}

Numbers are written as JSON numbers with the exact decimal digits of the wire (no float rounding
on our side). The child's stdout and stderr are ours. When the child exits, the runner exits with
its code; on SIGTERM the runner closes the child's stdin (a well-behaved old strategy ends its loop),
then terminates it if it is still there after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec
from desk.bus.decimals import fmt
from desk.bus.errors import DeskError
from desk.v1 import marketdata_pb2
from strategy_sdk.client import EXIT_CONNECT, connect_nats, heartbeat_loop, subscribe, unsubscribe_all
from strategy_sdk.config import RunnerConfig

__all__ = ["bar_to_json_line", "child_env", "run_legacy"]

log = logging.getLogger("strategy_sdk.legacy")
GRACE_SECONDS = 5.0


def _num(value: str) -> str:
    """A wire decimal string as a JSON number literal with its exact digits ("0" when empty)."""
    if not value:
        return "0"
    number = Decimal(value)
    if not number.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return fmt(number)


def bar_to_json_line(bar: marketdata_pb2.Bar) -> bytes:
    """The old desk's market data line for ``bar`` (``price`` is the close), newline-terminated."""

    ts = datetime.fromtimestamp(bar.start_ns / 1_000_000_000, tz=UTC).isoformat()
    parts = [
        f'"symbol": {json.dumps(bar.symbol)}',
        f'"price": {_num(bar.close)}',
        f'"open": {_num(bar.open)}',
        f'"high": {_num(bar.high)}',
        f'"low": {_num(bar.low)}',
        f'"close": {_num(bar.close)}',
        f'"volume": {_num(bar.volume)}',
        f'"timestamp": {json.dumps(ts)}',
    ]
    return ("{" + ", ".join(parts) + "}\n").encode()


def child_env(cfg: RunnerConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The child's environment: ours, config.json ``env``, identity, and a PYTHONPATH for desk_client."""
    import desk
    import desk_client

    env = dict(os.environ if base is None else base)
    for key, value in (cfg.config.get("env") or {}).items():
        env.setdefault(str(key), str(value))
    roots: list[str] = []
    for module in (desk_client, desk):
        root = str(Path(module.__file__ or "").resolve().parent.parent)
        if root not in roots:
            roots.append(root)
    if env.get("PYTHONPATH"):
        roots.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env["NATS_URL"] = cfg.nats_url
    env["DESK_STRATEGY_ID"] = cfg.strategy_id
    env["DESK_MEMBER_ID"] = cfg.member_id
    env.setdefault("PYTHONUNBUFFERED", "1")  # the child's prints reach the log as they happen
    return env


class _Feed:
    """Bars from the bus to the child's stdin, one JSON line each, and the counts its heartbeat reports."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()
        self.bars_seen = 0
        self.errors = 0
        self.last_error = ""
        self.writing_since: float | None = None  # when the write now blocked on the child's stdin began

    def stats(self) -> tuple[int, int, int, str]:
        return self.bars_seen, 0, self.errors, self.last_error

    async def on_bar(self, msg: Msg) -> None:
        try:
            line = bar_to_json_line(codec.decode(msg.data, marketdata_pb2.Bar, msg.headers or {}))
        except (DeskError, ArithmeticError, ValueError) as exc:
            self.errors += 1
            self.last_error = f"bad bar on {msg.subject}: {exc}"
            log.warning("message.undecodable on %s: %s", msg.subject, exc)
            return
        self.queue.put_nowait(line)

    async def feed(self, stdin: asyncio.StreamWriter) -> None:
        while True:
            line = await self.queue.get()
            self.writing_since = self.loop.time()
            try:
                stdin.write(line)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return  # the child is gone; its exit decides what happens next
            finally:
                self.writing_since = None
            self.bars_seen += 1


async def _end_child(proc: asyncio.subprocess.Process, exited: asyncio.Task[int], stdin: asyncio.StreamWriter) -> None:
    """On a requested stop: close the child's stdin, then terminate it, then kill it, a grace period apart."""
    stdin.close()
    try:
        await asyncio.wait_for(asyncio.shield(exited), GRACE_SECONDS)
    except TimeoutError:
        log.info("legacy.terminate: child still running %ss after stdin closed", GRACE_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(asyncio.shield(exited), GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def _clean_up(
    proc: asyncio.subprocess.Process, stdin: asyncio.StreamWriter, heartbeat: asyncio.Task[None], nc: Client
) -> None:
    """Whatever happened: no more beats, no child left behind, the connection drained."""
    heartbeat.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await heartbeat
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
    stdin.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.drain(), timeout=10)


async def run_legacy(cfg: RunnerConfig, stop_event: asyncio.Event) -> int:
    """Run an old-desk strategy as a child process until it exits or ``stop_event`` is set."""
    try:
        nc = await connect_nats(cfg.nats_url, cfg.strategy_id)
    except Exception as exc:  # noqa: BLE001 - any connect failure is reported as exit code 1
        log.error("nats.connect_failed: %s: %r", cfg.nats_url, exc)
        return EXIT_CONNECT
    loop = asyncio.get_running_loop()
    bars = _Feed(loop)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(cfg.file), cwd=str(cfg.folder), env=child_env(cfg), stdin=asyncio.subprocess.PIPE
    )
    log.info("legacy.started: %s pid %d (old-desk strategy fed on stdin)", cfg.strategy_id, proc.pid)
    assert proc.stdin is not None
    stdin = proc.stdin
    started = loop.time()

    def alive() -> bool:
        """Heartbeats only for a child that has lived one interval (code that cannot load dies first)
        and still reads its stdin (a child stuck for two intervals is hung: no beats, the watchdog acts)."""
        now = loop.time()
        if proc.returncode is not None or now - started < cfg.heartbeat_interval:
            return False
        return bars.writing_since is None or now - bars.writing_since < 2 * cfg.heartbeat_interval

    subs = await subscribe(nc, cfg.market_subjects("bar"), bars.on_bar)
    await nc.flush()
    feeder = asyncio.create_task(bars.feed(stdin), name="legacy-feed")
    heartbeat = asyncio.create_task(
        heartbeat_loop(nc, cfg.strategy_id, cfg.heartbeat_interval, bars.stats, alive), name="heartbeat"
    )
    exited = asyncio.create_task(proc.wait())
    stop_wait = asyncio.create_task(stop_event.wait())
    try:
        await asyncio.wait({exited, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        stopped = not exited.done()
        await unsubscribe_all(subs)
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        if stopped:
            await _end_child(proc, exited, stdin)
        code = await exited
    finally:
        stop_wait.cancel()
        await _clean_up(proc, stdin, heartbeat, nc)
    if stopped:
        log.info("legacy.stopped: %s child exit code %s", cfg.strategy_id, code)
        return 0
    log.info("legacy.exited: %s child exit code %s", cfg.strategy_id, code)
    return code
