"""The ``process`` runtime: each strategy is a local process, sandboxed with bubblewrap and limited.

Confinement (``sandbox``, ORCH_SANDBOX): ``auto`` runs strategies under bwrap when bwrap works here
(probed once, when the runtime is made) and unconfined, with a loud warning, when it does not;
``bwrap`` requires it (a start is refused with the reason); ``none`` runs them unconfined. What a
sandboxed strategy sees is described in :mod:`services.orchestrator.runtimes.sandbox`: its own
folder, the Python runtime and the desk packages, read-only; a private ``/tmp``; its own pids only;
not ``var/`` (credentials, NATS users, the ledger), not the logs, not your home. It shares the
host's network (to reach NATS on 127.0.0.1). :attr:`ProcessRuntime.confinement` says which applies.

Limits (``resources`` of config.json, else ORCH_PROCESS_MEMORY / _CPUS / _PIDS): a cgroup per run
(v1 or v2, see :mod:`services.orchestrator.runtimes.limits`), the run placed into it before it execs;
without writable cgroups only memory is limited, approximately (RLIMIT_AS), and a warning says so.
A run killed for memory ends with ``killed: memory limit 256m exceeded`` as its reason and last
error; refused forks add ``pids limit 64 reached (fork refused N times)``.

The child gets a clean environment (never the orchestrator's own, so never broker keys): PATH,
HOME (``/tmp`` in the sandbox), LANG, PYTHONPATH (the repo root, so ``strategy_sdk``, ``desk_client``
and ``desk`` import), PYTHONUNBUFFERED, the strategy's ``config.json`` env, then the desk's variables
(NATS_URL, DESK_STRATEGY_ID, DESK_MEMBER_ID, DESK_SYMBOLS), which win over the config.

Its stdout and stderr go, line by line, to ``<log_dir>/<strategy_id>.log`` (appended, one
"--- started pid N at <iso> ---" line per start), rotated at ORCH_LOG_MAX_BYTES into ``.log.1`` ...
``.log.<ORCH_LOG_BACKUPS>`` and rate-limited (ORCH_LOG_RATE bytes/s; dropped lines are counted in a
"--- N lines dropped (log rate limit) ---" line), and to a ring of the last lines for the
``logs`` endpoint, numbered (:class:`~services.orchestrator.runtimes.base.LogRing`) so that
:meth:`ProcessRuntime.follow_logs` gives a follower each line once. The last stderr line that looks like an error becomes ``last_error``.

When the main process exits, whatever it left (its process group, the sandbox, the cgroup) is
killed and its output pipes are read for at most ``reader_grace`` seconds more: a stray child that
holds them never hangs a stop. Exit codes: bwrap reports a child killed by signal N as 128+N; it is
read back as -N ("killed by SIGKILL"), like an unconfined run's.
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
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from desk.bus.logging import get_logger
from desk.bus.process import die_with_parent
from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.base import ExitInfo, LogRing, LogSlice, RunHandle, is_error_line
from services.orchestrator.runtimes.limits import (
    Limits,
    LogSink,
    RunCgroup,
    cgroup_version,
    cleanup_stale,
    make_cgroup,
    rlimit_preexec,
)
from services.orchestrator.runtimes.sandbox import Sandbox, env_fd, sandboxed_main_pid

if TYPE_CHECKING:
    from services.orchestrator.settings import Settings

log = get_logger("orchestrator")

DEFAULT_COMMAND = "{python} -m strategy_sdk run {path}"
RING_LINES = 1000
BASE_ENV_KEYS = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT")
MAX_LINE = 4000
CHUNK = 64 * 1024
SandboxMode = Literal["auto", "bwrap", "none"]
LimitsMode = Literal["auto", "none"]


@dataclass
class _Run:
    handle: RunHandle
    process: asyncio.subprocess.Process
    log_file: LogSink
    sandboxed: bool = False
    cgroup: RunCgroup | None = None
    limits: Limits | None = None
    rlimited: bool = False
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
        sandbox: SandboxMode = "auto",
        bwrap: str = "bwrap",
        limits: LimitsMode = "auto",
        default_memory: str = "256m",
        default_cpus: str = "0.5",
        default_pids: int = 128,
        log_max_bytes: int = 10 * 1024**2,
        log_backups: int = 3,
        log_rate: int = 256 * 1024,
        reader_grace: float = 1.0,
    ) -> None:
        self.nats_url = nats_url
        self.log_dir = log_dir
        self.repo_root = repo_root
        self.command = command
        self.python = python
        source = os.environ if base_env is None else base_env
        self.base_env = {k: source[k] for k in BASE_ENV_KEYS if k in source}
        self.sandbox_mode: SandboxMode = sandbox
        self.limits_mode: LimitsMode = limits
        self.default_memory = default_memory
        self.default_cpus = default_cpus
        self.default_pids = default_pids
        self.log_max_bytes = log_max_bytes
        self.log_backups = log_backups
        self.log_rate = log_rate
        self.reader_grace = reader_grace
        self.sandbox = Sandbox(bwrap=bwrap, repo_root=repo_root, python=python)
        self._rings: dict[str, LogRing] = {}
        self._epoch = uuid.uuid4().hex
        self._runs: dict[int, _Run] = {}
        self.sandboxed = False
        self._unconfined_why = ""
        if sandbox == "none":
            self._unconfined_why = "ORCH_SANDBOX=none"
        else:
            usable, detail = self.sandbox.probe()
            self.sandboxed = usable
            if not usable:
                self._unconfined_why = f"bubblewrap unusable: {detail}"
        if not self.sandboxed:
            log.warning(
                "sandbox.unavailable",
                mode=sandbox,
                why=self._unconfined_why,
                effect="refusing to start strategies"
                if sandbox == "bwrap"
                else "STRATEGIES RUN UNCONFINED: they can read your files, other processes' environments, var/",
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> ProcessRuntime:
        """The runtime ORCH_* settings describe (what ``make_runtime`` should call)."""
        return cls(
            nats_url=settings.nats_url,
            log_dir=settings.orch_log_dir,
            repo_root=settings.orch_repo_root,
            command=settings.orch_process_command,
            sandbox=settings.orch_sandbox,
            bwrap=settings.orch_sandbox_bwrap,
            limits=settings.orch_process_limits,
            default_memory=settings.orch_process_memory,
            default_cpus=settings.orch_process_cpus,
            default_pids=settings.orch_process_pids,
            log_max_bytes=settings.orch_log_max_bytes,
            log_backups=settings.orch_log_backups,
            log_rate=settings.orch_log_rate,
        )

    @property
    def name(self) -> str:
        return "process"

    @property
    def confinement(self) -> str:
        """ "bwrap sandbox", or "none: <why>" (for ``desk status``)."""
        return "bwrap sandbox" if self.sandboxed else f"none: {self._unconfined_why}"

    @property
    def limits_backend(self) -> str:
        """How resource limits are applied: "cgroup v1", "cgroup v2", "rlimit (memory only)" or "none"."""
        if self.limits_mode == "none":
            return "none: ORCH_PROCESS_LIMITS=none"
        version = cgroup_version()
        return f"cgroup v{version}" if version else "rlimit (memory only)"

    def argv(self, spec: strategy_pb2.StrategySpec) -> list[str]:
        values = {"python": self.python, "path": spec.path, "strategy_id": spec.strategy_id}
        return [part.format(**values) for part in shlex.split(self.command)]

    def full_argv(self, spec: strategy_pb2.StrategySpec, args_fd: int | None = None) -> list[str]:
        """What is executed: :meth:`argv`, inside bwrap when sandboxed (reading its environment from
        ``args_fd``)."""
        argv = self.argv(spec)
        if not self.sandboxed:
            return argv
        return self.sandbox.argv(argv, strategy_dir=spec.path, cwd=spec.path or None, args_fd=args_fd)

    def environment(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(self.base_env)
        env.setdefault("PATH", os.defpath)
        if self.sandboxed:
            env["HOME"] = "/tmp"
            env["PYTHONDONTWRITEBYTECODE"] = "1"  # nothing outside /tmp is writable anyway
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

    def limits(self, spec: strategy_pb2.StrategySpec) -> Limits:
        """The run's limits: config.json ``resources``, else the defaults."""
        return Limits(
            memory=spec.resources.memory or self.default_memory,
            cpus=spec.resources.cpus or self.default_cpus,
            pids=spec.resources.pids or self.default_pids,
        )

    def _ring(self, strategy_id: str) -> LogRing:
        return self._rings.setdefault(strategy_id, LogRing(RING_LINES))

    def _make_limits(self, spec: strategy_pb2.StrategySpec) -> tuple[Limits, RunCgroup | None, bool]:
        limits = self.limits(spec)
        if self.limits_mode == "none":
            return limits, None, False
        extra = 2 if self.sandboxed else 0  # bwrap's own two processes
        cgroup, problems = make_cgroup(spec.strategy_id, limits, extra_pids=extra)
        if cgroup is not None:
            if problems:
                log.warning("limits.partial", strategy_id=spec.strategy_id, applied=cgroup.applied, missing=problems)
            return limits, cgroup, False
        log.warning(
            "limits.degraded",
            strategy_id=spec.strategy_id,
            why=problems,
            applied=f"memory {limits.memory} as address space (RLIMIT_AS + headroom)",
            missing=f"cpus {limits.cpus}, pids {limits.pids}",
        )
        return limits, None, True

    def _check_sandbox(self, spec: strategy_pb2.StrategySpec) -> None:
        """Refuse to start unconfined when the sandbox was asked for; else warn that it is."""
        if self.sandboxed:
            return
        if self.sandbox_mode == "bwrap":
            raise RuntimeError(f"ORCH_SANDBOX=bwrap but the sandbox cannot run: {self._unconfined_why}")
        log.warning(
            "sandbox.unavailable", strategy_id=spec.strategy_id, why=self._unconfined_why, effect="running UNCONFINED"
        )

    def _log_sink(self, spec: strategy_pb2.StrategySpec) -> LogSink:
        """The strategy's log file: rotated, rate-limited, its markers kept in the in-memory ring."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        return LogSink(
            self.log_dir / f"{spec.strategy_id}.log",
            max_bytes=self.log_max_bytes,
            backups=self.log_backups,
            rate=self.log_rate,
            burst=max(4 * self.log_rate, 64 * 1024),
            on_marker=self._ring(spec.strategy_id).append,
        )

    async def start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> RunHandle:
        self._check_sandbox(spec)
        env = self.environment(spec, secrets)
        log_file = self._log_sink(spec)
        try:
            limits, cgroup, rlimited = await asyncio.to_thread(self._make_limits, spec)
        except BaseException:
            log_file.close()
            raise
        procs_files = cgroup.procs_files if cgroup is not None else []

        def preexec() -> None:  # in the child, between fork and exec: no allocation-heavy work
            die_with_parent()
            if procs_files:
                RunCgroup.attach_self(procs_files)
            elif rlimited:
                rlimit_preexec(limits)

        # Sandboxed, the environment goes to bwrap through a memfd, never through bwrap's own
        # environment (bwrap starts privileged: LD_PRELOAD & co. must not reach it).
        args_fd: int | None = None
        process_env = {} if self.sandboxed else env
        try:
            args_fd = env_fd(env) if self.sandboxed else None
            argv = self.full_argv(spec, args_fd)
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=spec.path or None,
                env=process_env,
                pass_fds=(args_fd,) if args_fd is not None else (),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=CHUNK * 2,
                start_new_session=True,  # its own process group: a stop reaches its children too
                preexec_fn=preexec,  # dies with us, and is in its cgroup before it execs
            )
        except BaseException:
            log_file.close()
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            raise
        finally:
            if args_fd is not None:
                os.close(args_fd)
        handle = RunHandle(strategy_id=spec.strategy_id, pid=process.pid, started_ns=time.time_ns())
        how = "bwrap sandbox" if self.sandboxed else "UNCONFINED"
        applied = ", ".join(cgroup.applied) if cgroup else (f"memory {limits.memory} (rlimit)" if rlimited else "none")
        banner = (
            f"--- started pid {process.pid} at {datetime.now(UTC).isoformat(timespec='seconds')} "
            f"({how}; limits: {applied}) ---"
        )
        log_file.write_banner(banner)
        log_file.flush()
        self._ring(spec.strategy_id).append(banner)
        run = _Run(
            handle=handle,
            process=process,
            log_file=log_file,
            sandboxed=self.sandboxed,
            cgroup=cgroup,
            limits=limits,
            rlimited=rlimited,
        )
        assert process.stdout is not None and process.stderr is not None
        run.readers = [
            asyncio.create_task(self._read(run, process.stdout, is_stderr=False), name=f"{spec.strategy_id}.stdout"),
            asyncio.create_task(self._read(run, process.stderr, is_stderr=True), name=f"{spec.strategy_id}.stderr"),
        ]
        self._runs[process.pid] = run
        return handle

    async def _read(self, run: _Run, stream: asyncio.StreamReader, *, is_stderr: bool) -> None:
        pending = b""
        while True:
            chunk = await stream.read(CHUNK)
            if not chunk:
                if pending:
                    self._lines(run, [pending], is_stderr=is_stderr)
                return
            pending += chunk
            lines = pending.split(b"\n")
            pending = lines.pop()
            if len(pending) > MAX_LINE:  # a line without end: take what is there
                lines.append(pending)
                pending = b""
            if lines:
                self._lines(run, lines, is_stderr=is_stderr)

    def _lines(self, run: _Run, lines: list[bytes], *, is_stderr: bool) -> None:
        if run.log_file.closed:
            return
        ring = self._ring(run.handle.strategy_id)
        for index, raw in enumerate(lines):
            if not run.log_file.admit(min(len(raw), MAX_LINE) + 1):
                # Over the rate: the rest of this chunk is dropped unread, but stderr's last lines
                # still count for last_error (the traceback after a flood).
                run.log_file.drop(len(lines) - index - 1)
                if is_stderr:
                    for tail in lines[-5:]:
                        self._note_stderr(run, tail.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE])
                break
            line = raw.decode("utf-8", "replace").rstrip("\r")[:MAX_LINE]
            ring.append(line)
            run.log_file.write_line(line)
            if is_stderr:
                self._note_stderr(run, line)
        run.log_file.flush()

    @staticmethod
    def _note_stderr(run: _Run, line: str) -> None:
        if line.strip():
            run.last_stderr = line.strip()
            if is_error_line(line):
                run.last_error = line.strip()

    def _kill_leftovers(self, run: _Run) -> None:
        """After the main process exited: nothing of the run may stay (blocking: run in a thread)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(run.handle.pid, signal.SIGKILL)
        if run.cgroup is not None:
            run.cgroup.kill_all()

    async def wait(self, handle: RunHandle) -> ExitInfo:
        run = self._runs[handle.pid]
        if run.exit_info is not None:
            return run.exit_info
        code = await run.process.wait()
        if run.sandboxed and 128 < code <= 128 + 64:
            code = -(code - 128)  # bwrap's report of a child killed by a signal
        # The strategy's children (its process group, the sandbox, the cgroup) go with it, and its
        # pipes are read for at most reader_grace seconds more: a stray child never hangs us.
        await asyncio.to_thread(self._kill_leftovers, run)
        _, pending = await asyncio.wait(run.readers, timeout=self.reader_grace)
        for reader in pending:
            reader.cancel()
        await asyncio.gather(*run.readers, return_exceptions=True)
        if code < 0:
            try:
                reason = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                reason = f"killed by signal {-code}"
        else:
            reason = f"exited with code {code}"
        last_error = "" if code == 0 else (run.last_error or run.last_stderr)
        verdict = ""
        if run.cgroup is not None:
            verdict = run.cgroup.verdict(killed=code == -signal.SIGKILL)
            await asyncio.to_thread(run.cgroup.remove)
        elif run.rlimited and run.limits is not None and "MemoryError" in (run.last_error or ""):
            verdict = f"memory limit {run.limits.memory} reached (address space rlimit)"
        if verdict and code != 0:
            reason = f"{verdict} ({reason})"
            last_error = f"{verdict}; {last_error}" if last_error and verdict not in last_error else verdict
        footer = f"--- pid {handle.pid} {reason} at {datetime.now(UTC).isoformat(timespec='seconds')} ---"
        run.log_file.write_banner(footer)
        run.log_file.close()
        self._ring(handle.strategy_id).append(footer)
        run.exit_info = ExitInfo(exit_code=code, reason=reason, last_error=last_error)
        self._runs.pop(handle.pid, None)
        run.done.set()
        return run.exit_info

    def _term_target(self, run: _Run) -> int:
        """The process group to SIGTERM: the strategy's own main process (inside bwrap: not bwrap,
        whose death would SIGKILL the sandbox without a chance to shut down)."""
        if not run.sandboxed:
            return run.handle.pid
        return sandboxed_main_pid(run.handle.pid)

    async def stop(self, handle: RunHandle, timeout: float) -> None:
        run = self._runs.get(handle.pid)
        if run is None or run.process.returncode is not None:
            return
        target = await asyncio.to_thread(self._term_target, run)
        if target:
            try:
                os.killpg(target, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, signal.SIGTERM)
        else:  # the sandbox has not started its command yet: end bwrap (and with it the sandbox)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(handle.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(run.process.wait()), timeout)
        except TimeoutError:
            log.warning("strategy.kill", strategy_id=handle.strategy_id, pid=handle.pid, timeout=timeout)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(handle.pid, signal.SIGKILL)  # bwrap: its init, then the namespace, follow
            if run.cgroup is not None:
                await asyncio.to_thread(run.cgroup.kill_all)
            await run.process.wait()

    async def cleanup(self) -> None:
        """Strategy processes die with the orchestrator (PR_SET_PDEATHSIG); remove cgroups a dead
        orchestrator left behind (and kill what is still in them)."""
        removed = await asyncio.to_thread(cleanup_stale)
        if removed:
            log.info("limits.stale_cgroups_removed", count=removed)

    async def logs(self, strategy_id: str, tail: int) -> list[str]:
        ring = self._rings.get(strategy_id)
        if ring is not None:
            return ring.tail(tail)
        path = self.log_dir / f"{strategy_id}.log"
        if not path.is_file():
            return []
        return await asyncio.to_thread(_tail_file, path, tail)

    @property
    def log_epoch(self) -> str:
        return self._epoch

    async def follow_logs(self, strategy_id: str, after: int | None, tail: int) -> LogSlice:
        """Every line a run writes goes to the strategy's ring as it is read (:meth:`_lines`), so a
        cursor into the ring sees each line once. Before any run under this runtime there is no ring:
        the tail comes from the log file, and the cursor 0 means every line from the first run on."""
        ring = self._rings.get(strategy_id)
        if after is not None:
            return ring.after(after) if ring is not None else LogSlice(lines=[], next=0)
        if ring is not None:
            return LogSlice(lines=ring.tail(tail), next=ring.total)
        return LogSlice(lines=await self.logs(strategy_id, tail), next=0)


def _tail_file(path: Path, tail: int) -> list[str]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        return [line.rstrip("\n") for line in collections.deque(handle, maxlen=max(tail, 0))]
