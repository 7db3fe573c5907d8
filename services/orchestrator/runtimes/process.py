"""The ``process`` runtime: each strategy is a local subprocess in its own process group.

The child gets a clean environment (never the orchestrator's own, so never broker keys): PATH,
HOME, LANG, PYTHONPATH (the repo root, so ``strategy_sdk``, ``desk_client`` and ``desk`` import),
PYTHONUNBUFFERED, the strategy's ``config.json`` env, then the desk's variables (NATS_URL,
DESK_STRATEGY_ID, DESK_MEMBER_ID, DESK_SYMBOLS), which win over the config.

Its stdout and stderr go, line by line, to ``<log_dir>/<strategy_id>.log`` (appended, one
"--- started pid N at <iso> ---" line per start) and to a ring buffer of the last lines for the
``logs`` endpoint. The last stderr line that looks like an error becomes ``last_error``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shlex
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from desk.bus.logging import get_logger
from desk.bus.process import die_with_parent
from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.base import ExitInfo, RunHandle, is_error_line

log = get_logger("orchestrator")

DEFAULT_COMMAND = "{python} -m strategy_sdk run {path}"
RING_LINES = 1000
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
MAX_LINE = 4000


@dataclass
class _Run:
    handle: RunHandle
    process: asyncio.subprocess.Process
    log_file: IO[str]
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    last_error: str = ""
    last_stderr: str = ""
    exit_info: ExitInfo | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)


class ProcessRuntime:
    def __init__(
        self,
        *,
        nats_url: str,
        log_dir: Path,
        repo_root: Path,
        command: str = DEFAULT_COMMAND,
        python: str = sys.executable,
        base_env: dict[str, str] | None = None,
    ) -> None:
        self.nats_url = nats_url
        self.log_dir = log_dir
        self.repo_root = repo_root
        self.command = command
        self.python = python
        source = os.environ if base_env is None else base_env
        self.base_env = {k: source[k] for k in BASE_ENV_KEYS if k in source}
        self._rings: dict[str, collections.deque[str]] = {}
        self._runs: dict[int, _Run] = {}

    @property
    def name(self) -> str:
        return "process"

    def argv(self, spec: strategy_pb2.StrategySpec) -> list[str]:
        values = {"python": self.python, "path": spec.path, "strategy_id": spec.strategy_id}
        return [part.format(**values) for part in shlex.split(self.command)]

    def environment(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        env.setdefault("PATH", os.defpath)
        env["PYTHONPATH"] = str(self.repo_root)
        env["PYTHONUNBUFFERED"] = "1"
        env.update(spec.env)
        env.update(
            NATS_URL=self.nats_url,
            DESK_STRATEGY_ID=spec.strategy_id,
            DESK_MEMBER_ID=spec.member_id,
            DESK_SYMBOLS=",".join(spec.symbols),
        )
        env.update(secrets or {})
        return env

    def _ring(self, strategy_id: str) -> collections.deque[str]:
        return self._rings.setdefault(strategy_id, collections.deque(maxlen=RING_LINES))

    async def start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> RunHandle:
        argv = self.argv(spec)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *argv,
            cwd=spec.path or None,
            env=self.environment(spec, secrets),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its own process group: a stop reaches its children too
            preexec_fn=die_with_parent,  # and an orchestrator killed outright takes it along
        )
        handle = RunHandle(strategy_id=spec.strategy_id, pid=process.pid, started_ns=time.time_ns())
        log_file = (self.log_dir / f"{spec.strategy_id}.log").open("a", encoding="utf-8")
        banner = f"--- started pid {process.pid} at {datetime.now(UTC).isoformat(timespec='seconds')} ---"
        log_file.write(banner + "\n")
        log_file.flush()
        self._ring(spec.strategy_id).append(banner)
        run = _Run(handle=handle, process=process, log_file=log_file)
        assert process.stdout is not None and process.stderr is not None
        run.readers = [
            asyncio.create_task(self._read(run, process.stdout, is_stderr=False), name=f"{spec.strategy_id}.stdout"),
            asyncio.create_task(self._read(run, process.stderr, is_stderr=True), name=f"{spec.strategy_id}.stderr"),
        ]
        self._runs[process.pid] = run
        return handle

    async def _read(self, run: _Run, stream: asyncio.StreamReader, *, is_stderr: bool) -> None:
        ring = self._ring(run.handle.strategy_id)
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the stream limit: take what is there
                raw = await stream.read(64 * 1024)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")[:MAX_LINE]
            ring.append(line)
            run.log_file.write(line + "\n")
            run.log_file.flush()
            if is_stderr and line.strip():
                run.last_stderr = line.strip()
                if is_error_line(line):
                    run.last_error = line.strip()

    async def wait(self, handle: RunHandle) -> ExitInfo:
        run = self._runs[handle.pid]
        if run.exit_info is not None:
            return run.exit_info
        code = await run.process.wait()
        await asyncio.gather(*run.readers, return_exceptions=True)
        # Children the strategy left behind in its process group go with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGKILL)
        if code < 0:
            try:
                reason = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                reason = f"killed by signal {-code}"
        else:
            reason = f"exited with code {code}"
        last_error = "" if code == 0 else (run.last_error or run.last_stderr)
        footer = f"--- pid {handle.pid} {reason} at {datetime.now(UTC).isoformat(timespec='seconds')} ---"
        run.log_file.write(footer + "\n")
        run.log_file.close()
        self._ring(handle.strategy_id).append(footer)
        run.exit_info = ExitInfo(exit_code=code, reason=reason, last_error=last_error)
        self._runs.pop(handle.pid, None)
        run.done.set()
        return run.exit_info

    async def stop(self, handle: RunHandle, timeout: float) -> None:
        run = self._runs.get(handle.pid)
        if run is None or run.process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(handle.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(run.process.wait()), timeout)
        except TimeoutError:
            log.warning("strategy.kill", strategy_id=handle.strategy_id, pid=handle.pid, timeout=timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
            await run.process.wait()

    async def cleanup(self) -> None:
        """Nothing to do: strategy processes die with the orchestrator (PR_SET_PDEATHSIG)."""

    async def logs(self, strategy_id: str, tail: int) -> list[str]:
        ring = self._rings.get(strategy_id)
        if ring is not None:
            return list(ring)[-tail:] if tail > 0 else []
        path = self.log_dir / f"{strategy_id}.log"
        if not path.is_file():
            return []
        return await asyncio.to_thread(_tail_file, path, tail)


def _tail_file(path: Path, tail: int) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in collections.deque(handle, maxlen=max(tail, 0))]
