"""A desk service as its own OS process (``python -m services.<module>``), so it can be killed with SIGKILL,
and what active/standby tests ask of it: which instance holds a lease, when that changed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from nats.js import JetStreamContext

from desk.bus import lease as leases
from desk.bus import subjects
from desk.bus.process import die_with_parent, terminate

ROOT = Path(__file__).resolve().parents[2]


class ServiceProcess:
    """One instance of a service: ``start()``, ``kill()`` (kill -9), ``stop()`` (SIGTERM), its log."""

    def __init__(self, module: str, instance: str, url: str, data: Path, env: dict[str, str] | None = None) -> None:
        self.module, self.instance, self.url, self.data = module, instance, url, data
        self.env = env or {}
        self.process: asyncio.subprocess.Process | None = None
        self.log = data / f"{module}-{instance}.log"

    async def start(self) -> None:
        env = {
            **os.environ,
            "NATS_URL": self.url,
            "SERVICE_LEASE": "true",
            "SERVICE_INSTANCE": self.instance,
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "DRAIN_TIMEOUT": "5",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
            **self.env,
        }
        self.data.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as handle:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{self.module}",
                env=env,
                cwd=str(ROOT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def kill(self) -> None:
        assert self.process is not None and not self.exited(), f"{self.module} {self.instance} is not running"
        os.kill(self.process.pid, signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def stop(self) -> int | None:
        if self.process is not None and not self.exited():
            await terminate(self.process, 20)
        return self.process.returncode if self.process else None

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def lease_holder(js: JetStreamContext, key: str) -> leases.Holder | None:
    """Who holds lease ``key`` now (None: free, or the server did not answer)."""
    with contextlib.suppress(Exception):
        kv = await js.key_value(subjects.KV_LEASES)
        holder, _ = await leases.holder_of(kv, key)
        return holder
    return None


async def wait_holder(js: JetStreamContext, key: str, instance: str, bound: float, every: float = 0.05) -> float:
    """Wait (at most ``bound`` s) until ``instance`` holds lease ``key``; the monotonic time it was seen."""
    deadline = time.monotonic() + bound
    while True:
        holder = await lease_holder(js, key)
        if holder is not None and holder.instance == instance:
            return time.monotonic()
        assert time.monotonic() < deadline, (
            f"{instance} does not hold lease {key} within {bound:g} s (holder: {holder.describe() if holder else None})"
        )
        await asyncio.sleep(every)  # polling the KV key, bounded
