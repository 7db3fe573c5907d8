"""Helpers shared by the end-to-end suites (embedded desk and Docker): wait on bus events, never sleep."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, TypeVar, overload

import nats
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.bus.process import wait_until_serving
from desk.v1 import executions_pb2

FILL_TYPES = (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL)
ROOT = Path(__file__).resolve().parents[1]
DESK = [sys.executable, "-m", "desk.cli"]
LEDGER_ACKS = f"$JS.ACK.{subjects.STREAM_EXECUTIONS}.{subjects.LEDGER_DURABLE}.>"


def desk_url(port: int, data_dir: Path) -> str:
    """The embedded desk's NATS URL with the admin credentials `desk up` wrote into ``data_dir``."""
    creds = json.loads((data_dir / "credentials" / "cli.json").read_text())
    return f"nats://{creds['user']}:{creds['password']}@127.0.0.1:{port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port_run(count: int, attempts: int = 50) -> int:
    """The first of ``count`` consecutive ports free on 127.0.0.1 now (`desk up --cluster N` takes
    ``--port`` and the next ones)."""
    for _ in range(attempts):
        first = free_port()
        if first + count > 65535:
            continue
        sockets = [socket.socket() for _ in range(count - 1)]
        try:
            for offset, sock in enumerate(sockets, start=1):
                sock.bind(("127.0.0.1", first + offset))
            return first
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise RuntimeError(f"no run of {count} free ports found")


async def follow(nc: Client, subject: str) -> asyncio.Queue[Msg]:
    """Every message on ``subject`` from now on, in a queue."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def put(msg: Msg) -> None:
        queue.put_nowait(msg)

    await nc.subscribe(subject, cb=put)
    await nc.flush()
    return queue


async def follow_executions(nc: Client) -> asyncio.Queue[Msg]:
    """Every execution report in the EXECUTIONS stream, from its first message on (so none is
    missed that happened before the test started listening), then live."""
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def put(msg: Msg) -> None:
        queue.put_nowait(msg)

    await nc.jetstream().subscribe(subjects.EXEC_ALL, ordered_consumer=True, cb=put)
    return queue


async def wait_for_fills(executions: asyncio.Queue[Msg], strategies: dict[str, str], timeout: float = 120) -> None:
    """Until each strategy in ``strategies`` (id -> member) has a fill; checks each fill's member."""
    filled: set[str] = set()
    async with asyncio.timeout(timeout):
        while filled != set(strategies):
            msg = await executions.get()
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            if report.exec_type in FILL_TYPES and report.strategy_id in strategies:
                assert report.member_id == strategies[report.strategy_id]
                filled.add(report.strategy_id)


async def ledger_caught_up(nc: Client, acks: asyncio.Queue[Msg], timeout: float = 60) -> int:
    """Wait until the ledger has acked every message now in EXECUTIONS.

    Its acks are events on $JS.ACK.EXECUTIONS.ledger.> (the stream sequence is the subject's 6th
    token); ``acks`` must be following that subject. Returns the stream's last sequence."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
    info = await js.consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
    acked = set(range(1, info.ack_floor.stream_seq + 1))
    async with asyncio.timeout(timeout):
        while not set(range(1, last + 1)) <= acked:
            msg = await acks.get()
            acked.add(int(msg.subject.split(".")[5]))
    return last


async def stream_fills(nc: Client) -> dict[str, executions_pb2.ExecutionReport]:
    """Every fill report in EXECUTIONS, by execution id, read with an ephemeral ordered consumer."""
    js = nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
    fills: dict[str, executions_pb2.ExecutionReport] = {}
    if not last:
        return fills
    sub = await js.subscribe(subjects.EXEC_ALL, ordered_consumer=True)
    try:
        async with asyncio.timeout(60):
            while True:
                msg = await sub.next_msg(timeout=30)
                report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
                if report.exec_type in FILL_TYPES:
                    fills[report.execution_id] = report
                if msg.metadata.sequence.stream >= last:
                    return fills
    finally:
        await sub.unsubscribe()


async def wait_for_services(url: str, names: tuple[str, ...], timeout: float = 180) -> None:
    """Until every named NATS micro service answers PING (services start in their own time: the
    PING is how their readiness is observed, bounded by ``timeout``)."""

    async def quiet(exc: Exception) -> None:
        pass

    async with asyncio.timeout(timeout):
        while True:
            try:
                nc = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=1, error_cb=quiet)
                break
            except Exception:  # noqa: BLE001 - NATS itself is still starting
                await asyncio.sleep(0.5)
        try:
            for name in names:
                if not await wait_until_serving(nc, name, timeout, lambda: False, pause=0.5):
                    raise TimeoutError(f"{name} did not answer PING within {timeout}s")
        finally:
            await nc.close()


T = TypeVar("T")


@overload
async def poll(probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = 60, every: float = 0.25) -> T: ...
@overload
async def poll(probe: Callable[[], T | None], what: str, timeout: float = 60, every: float = 0.25) -> T: ...
async def poll(probe: Callable[[], Any], what: str, timeout: float = 60, every: float = 0.25) -> Any:
    """The first truthy value of ``probe()`` (sync or async), asked every ``every`` s: for state the desk
    only shows when asked (`desk status`, STATS, a log). Bounded: AssertionError naming ``what``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)  # polling an observable, bounded by the deadline


class LogWatch:
    """Log lines of in-process services, captured as structlog's ``capture_logs`` does, with a wait.

    A service may log an event after the message a test waits on has left it (the gateway logs a fill
    once JetStream has acknowledged its report): ``await watch.wait_for("order.filled")``.
    """

    def __init__(self) -> None:
        self.entries: list[MutableMapping[str, Any]] = []
        self._logged = asyncio.Event()

    def __call__(self, logger: Any, method: str, event_dict: Any) -> Any:
        self._logged.set()
        return event_dict

    def events(self) -> list[str]:
        return [entry["event"] for entry in self.entries]

    async def wait_for(self, event: str, timeout: float = 5.0) -> MutableMapping[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                found = next((entry for entry in self.entries if entry["event"] == event), None)
                if found is not None:
                    return found
                self._logged.clear()
                await self._logged.wait()


@contextlib.contextmanager
def watch_logs() -> Iterator[LogWatch]:
    watch = LogWatch()
    with structlog.testing.capture_logs(processors=[watch]) as entries:
        watch.entries = entries
        yield watch


class DeskUp:
    """`desk up` in a child process of its own session, as a terminal user would run it."""

    def __init__(self, data_dir: Path, strategies: Path, port: int, cluster: int = 1) -> None:
        self.data_dir, self.strategies, self.port = data_dir, strategies, port
        self.cluster = cluster  # `desk up --cluster N`: nats-servers on port, port+1, ... (1: one server)
        self.extra_env: dict[str, str] = {}  # more of desk up's environment (ORCH_* settings...)
        self.process: asyncio.subprocess.Process | None = None
        self.output: list[str] = []
        self.up = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """With the admin credentials of this run (NATS runs with authorization)."""
        return desk_url(self.port, self.data_dir)

    @property
    def ports(self) -> list[int]:
        """Every nats-server's client port (one without a cluster)."""
        return [self.port + i for i in range(self.cluster)]

    @property
    def servers(self) -> str:
        """Every nats-server, comma-separated, without credentials (as the banner prints them)."""
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.ports)

    @property
    def urls(self) -> str:
        """Every nats-server with the admin credentials of this run, comma-separated (a NATS_URL)."""
        return ",".join(desk_url(port, self.data_dir) for port in self.ports)

    def nats_pids(self) -> list[int]:
        """The pids of this run's nats-servers, as the orchestrator reads them (one a line)."""
        return [int(token) for token in (self.data_dir / "nats" / "nats.pid").read_text().split()]

    async def start(self, *extra: str) -> None:
        self.up.clear()
        self.output.clear()
        env = dict(os.environ, PYTHONPATH=str(ROOT), MD_INTERVAL="0.25", COLUMNS="200", DASHBOARD_PORT="0")
        env.update(self.extra_env)
        self.process = await asyncio.create_subprocess_exec(
            *DESK,
            "up",
            "--data-dir",
            str(self.data_dir),
            "--strategies",
            str(self.strategies),
            "--port",
            str(self.port),
            *(["--cluster", str(self.cluster)] if self.cluster > 1 else []),
            *extra,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())
        up = asyncio.create_task(self.up.wait())
        done, _ = await asyncio.wait({up, self._reader}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        if up not in done:
            up.cancel()
            raise AssertionError("desk up did not come up:\n" + "".join(self.output[-40:]))

    async def _read(self) -> None:
        assert self.process and self.process.stdout
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace")
            self.output.append(line)
            if "desk is up" in line:
                self.up.set()

    async def interrupt(self) -> int:
        """Ctrl-C: SIGINT to `desk up` only; returns its exit code."""
        assert self.process
        self.process.send_signal(signal.SIGINT)
        code = await asyncio.wait_for(self.process.wait(), 90)
        if self._reader:
            await asyncio.wait_for(self._reader, 10)
        return code

    def cli(self, *args: str) -> Any:
        result = subprocess.run(
            [*DESK, "--nats-url", self.servers, *args, "--json"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=dict(
                os.environ, PYTHONPATH=str(ROOT), DESK_CREDENTIALS=str(self.data_dir / "credentials" / "cli.json")
            ),
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


# Members (issue 15): a member's CLI on "another machine" -------------------------------------------

#: What a member's laptop does not have: the operator's environment and credentials.
_OPERATOR_ENV = ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "NATS_CREDS", "DESK_CREDENTIALS", "XDG_CONFIG_HOME")


def member_cli(home: Path, *args: str, check: bool = True, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    """`desk ARGS` as a member runs it on their own laptop: HOME (and the working directory) ``home``,
    no admin credentials, no NATS_* settings: what `desk login` stored under ``home`` is all it has."""
    env = {k: v for k, v in os.environ.items() if k not in _OPERATOR_ENV}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200")
    result = subprocess.run(
        [*DESK, *args], cwd=home, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check:
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def write_strategy(folder: Path, member: str, source: str, **config: Any) -> Path:
    """A strategy folder in the old desk's layout: ``strategy.py`` + ``config.json`` (user_id = member)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "strategy.py").write_text(source)
    (folder / "config.json").write_text(json.dumps({"user_id": member, "name": folder.name, **config}))
    return folder


async def login_refused(url: str, user: str, password: str, **options: Any) -> bool:
    """Whether the server at ``url`` refuses this login (an authorization error, not an unreachable
    server: False then too, so a test asserting a refusal fails on a server that is down)."""
    from desk.bus.servers import open_connection

    seen: list[Exception] = []
    try:
        nc = await open_connection(url, forever=False, user=user, password=password, errors=seen, **options)
    except Exception as exc:  # noqa: BLE001 - told apart below
        return any("authorization" in str(e).lower() for e in [*seen, exc])
    await nc.close()
    return False
