"""Start the real desk for a measurement: nats-server (temp store) and services as separate processes.

Mirrors ``desk up`` (desk/cli/embedded.py): each service is ``python -m services.<name>`` with
NATS_URL and LEDGER_DB_PATH in a temp dir, ready when it answers ``$SRV.PING.<name>``. Workers
(:mod:`bench.worker`) are separate processes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from nats.aio.client import Client

from desk.bus import codec, streams, subjects
from desk.bus import kv as desk_kv
from desk.bus.servers import open_connection
from desk.bus.testing import NatsServer
from desk.v1 import marketdata_pb2, strategy_pb2

ROOT = Path(__file__).resolve().parents[1]
BENCH_SYMBOL = "BENCH"
BENCH_PRICE = "100.00"


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time ``pid`` has used so far (Linux /proc), None when unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB (Linux /proc), None when unavailable."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


#: EVENT_LOOP of every process the bench starts, services and workers alike: the desk's default
#: (``auto``: uvloop when installed), or ``asyncio`` for the comparison section.
EVENT_LOOP = "auto"


class Worker:
    """One ``bench.worker`` process."""

    def __init__(self, role: str, args: dict[str, Any]) -> None:
        self.role, self.args = role, args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, wait_ready: bool = False, timeout: float = 20.0) -> Self:
        argv = [sys.executable, "-m", "bench.worker", self.role, json.dumps(self.args)]
        self.proc = await asyncio.create_subprocess_exec(
            *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL, env=_env({})
        )
        if wait_ready:
            assert self.proc.stdout is not None
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            if line.strip() != b"READY":
                raise RuntimeError(f"worker {self.role} did not start: {line!r}")
        return self

    async def result(self, timeout: float = 300.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        await self.proc.wait()
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"worker {self.role} exited {self.proc.returncode} without a result")
        result: dict[str, Any] = json.loads(lines[-1])
        return result

    async def stop(self) -> dict[str, Any] | None:
        if self.proc is None or self.proc.returncode is not None:
            return None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return await self.result(timeout=20)
        except (RuntimeError, TimeoutError):
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
            return None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
        LOG_FORMAT="json",
        EVENT_LOOP=EVENT_LOOP,
    )
    env.update(extra)
    return env


class Desk:
    """nats-server plus the named services; ``async with Desk(...) as desk``."""

    def __init__(self, services: tuple[str, ...], env: dict[str, str] | None = None) -> None:
        self.services = services
        self.extra_env = env or {}
        self.tmp = tempfile.TemporaryDirectory(prefix="desk-bench-")
        self.dir = Path(self.tmp.name)
        self.server = NatsServer(store_dir=self.dir / "nats")
        self.procs: dict[str, list[asyncio.subprocess.Process]] = {}
        self.nc: Client | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def db_path(self) -> Path:
        return self.dir / "ledger.db"

    def env(self) -> dict[str, str]:
        return _env({"NATS_URL": self.url, "LEDGER_DB_PATH": str(self.db_path), "BROKER": "sim", **self.extra_env})

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.server.start)
        self.nc = await open_connection(self.url, forever=True)
        await streams.ensure_all(self.nc.jetstream())
        for name in self.services:
            await self.spawn(name)
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        for name in reversed(list(self.procs)):
            for proc in self.procs[name]:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 20)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
        if self.nc is not None:
            await self.nc.close()
        await asyncio.to_thread(self.server.stop)
        self.tmp.cleanup()

    async def spawn(self, name: str, timeout: float = 30.0) -> asyncio.subprocess.Process:
        """Start one more process of service ``name``; returns once all its replicas answer PING."""
        log = (self.dir / f"{name}-{len(self.procs.get(name, []))}.log").open("ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{name}",
                cwd=ROOT,
                env=self.env(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.procs.setdefault(name, []).append(proc)
        await self.wait_ready(name, len(self.procs[name]), timeout)
        return proc

    async def wait_ready(self, name: str, replicas: int, timeout: float) -> None:
        assert self.nc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p.returncode is not None for p in self.procs[name]):
                raise RuntimeError(f"{name} exited during start-up; see {self.dir}")
            if await self.instances(name) >= replicas:
                return
            await asyncio.sleep(0.2)  # start-up in progress; bounded by ``timeout``
        raise RuntimeError(f"{name} not ready within {timeout}s")

    async def instances(self, name: str, window: float = 0.3) -> int:
        """How many processes answer ``$SRV.PING.<name>`` within ``window`` seconds."""
        assert self.nc is not None
        inbox = self.nc.new_inbox()
        ids: set[str] = set()

        async def on_msg(msg: Any) -> None:
            with contextlib.suppress(Exception):
                ids.add(json.loads(msg.data)["id"])

        sub = await self.nc.subscribe(inbox, cb=on_msg)
        await self.nc.publish(f"$SRV.PING.{name}", b"", reply=inbox)
        await asyncio.sleep(window)
        await sub.unsubscribe()
        return len(ids)

    def pids(self, name: str) -> list[int]:
        return [p.pid for p in self.procs.get(name, [])]

    def cpu(self) -> dict[str, float]:
        """CPU seconds used so far by nats-server and the first process of each service."""
        pids = {name: self.pids(name)[0] for name in self.procs if self.pids(name)}
        if self.server.process is not None:
            pids["nats-server"] = self.server.process.pid
        used = {name: cpu_seconds(pid) for name, pid in pids.items()}
        return {name: seconds for name, seconds in used.items() if seconds is not None}

    async def register_strategy(self, strategy_id: str) -> None:
        """A StrategySpec with limits no benchmark reaches."""
        assert self.nc is not None
        spec = strategy_pb2.StrategySpec(
            strategy_id=strategy_id,
            member_id="bench",
            name=strategy_id,
            initial_cash="1000000000000",
            risk=strategy_pb2.RiskLimits(
                max_order_notional="1000000000",
                max_position_notional="1000000000000",
                max_orders_per_minute=100_000_000,
                allow_short=True,
            ),
        )
        await desk_kv.put(self.nc.jetstream(), subjects.KV_STRATEGIES, strategy_id, spec)

    async def set_price(self, symbol: str = BENCH_SYMBOL, price: str = BENCH_PRICE) -> None:
        """Price in DESK_PRICES (router) and one md.trade without size (the sim: unlimited liquidity)."""
        assert self.nc is not None
        trade = marketdata_pb2.Trade(symbol=symbol, price=price, ts_ns=time.time_ns(), source="bench")
        await desk_kv.put(self.nc.jetstream(), subjects.KV_PRICES, symbol, trade)
        body, headers = codec.encode(trade)
        await self.nc.publish(subjects.md_trade(symbol), body, headers=headers)
        await self.nc.flush()
