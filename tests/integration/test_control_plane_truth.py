"""Issue 15: a control plane that tells the truth, against a real nats-server, the real
orchestrator (strategies as processes), the real ledger and the real `desk` / `python -m
strategy_sdk` commands as subprocesses.

- a `desk stop X` survives an orchestrator restart; `desk start X` brings it back;
- a strategy that recovered after an automatic restart shows no old error;
- `-s NAME` of an unknown strategy is an error (exit 1), a known strategy without books "nothing yet";
- `--json` writes words for enums and numbers for counts;
- the SDK runner without credentials says so in one line and exits EXIT_CONNECT; SIGTERM/SIGINT
  stop it at once while it connects or starts;
- `desk halt NAME` / `desk resume NAME` of a strategy the desk does not know are refused by the router
  (a stale halt of a strategy whose spec is gone can still be lifted); `-m MEMBER` of an unknown member
  is an error; halts show in `desk status` (table and --json);
- `desk logs -f NAME` prints each new line once as the strategy writes it, and SIGINT ends it with 0.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import auth, codec, subjects
from desk.bus.request import request
from desk.bus.testing import InProcessService, NatsServer, run_in_process, secured_server
from desk.v1 import strategy_pb2
from services.ledger.service import LedgerService
from services.ledger.settings import Settings as LedgerSettings
from services.orchestrator.service import DESIRED_HEADER, NAME, OrchestratorService
from services.orchestrator.settings import Settings
from services.orchestrator.supervisor import RUNNING, STOPPED
from services.order_router.service import NAME as ROUTER
from services.order_router.service import OrderRouterService
from services.order_router.settings import Settings as RouterSettings
from strategy_sdk.client import EXIT_CONNECT
from tests.support import poll

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# A fake strategy (ORCH_PROCESS_COMMAND="{python} {path}/strategy.py"): announces itself, asks the
# test whether to crash (test.crash.<id>: "yes" -> it dies after one heartbeat), else heartbeats.
SCRIPT = """
import asyncio, json, os, sys
import nats
from desk.bus import codec, subjects
from desk.v1 import strategy_pb2

SID = os.environ["DESK_STRATEGY_ID"]

async def main():
    nc = await nats.connect(os.environ["NATS_URL"])
    await nc.publish("test.started." + SID, json.dumps({"pid": os.getpid()}).encode())
    await nc.flush()
    crash = False
    try:
        crash = (await nc.request("test.crash." + SID, b"", timeout=2)).data == b"yes"
    except Exception:
        pass
    interval = float(os.environ["DESK_HEARTBEAT_INTERVAL"])
    while True:
        body, headers = codec.encode(strategy_pb2.Heartbeat(strategy_id=SID, ts_ns=1))
        await nc.publish(subjects.heartbeat(SID), body, headers=headers)
        await nc.flush()
        if crash:
            await nc.close()
            raise ValueError("flaky first run")
        await asyncio.sleep(interval)

asyncio.run(main())
"""


def _strategy(root: Path, name: str, member: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "strategy.py").write_text(SCRIPT)
    (folder / "config.json").write_text(json.dumps({"user_id": member}))


class Started:
    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def queue(self, strategy_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self.queues.setdefault(strategy_id, asyncio.Queue())

    async def on_msg(self, msg: Msg) -> None:
        await self.queue(subjects.token(msg.subject, -1)).put(json.loads(msg.data))

    async def next(self, strategy_id: str, timeout: float = 20) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue(strategy_id).get(), timeout)


class Desk:
    """The orchestrator (restartable, on the same NATS store) and what the strategies announce."""

    def __init__(self, server: NatsServer, nc: Client, tmp_path: Path) -> None:
        self.server, self.nc = server, nc
        self.root = tmp_path / "strategies"
        self.logs = tmp_path / "logs"
        self.started = Started()
        self.crash: dict[str, list[bool]] = {}  # per strategy: the answers to its next runs
        self.orch: OrchestratorService | None = None
        self.svc: InProcessService | None = None

    async def setup(self) -> None:
        await self.nc.subscribe("test.started.*", cb=self.started.on_msg)
        await self.nc.subscribe("test.crash.*", cb=self._crash)
        await self.nc.flush()

    async def _crash(self, msg: Msg) -> None:
        answers = self.crash.get(subjects.token(msg.subject, -1)) or [False]
        await msg.respond(b"yes" if (answers.pop(0) if len(answers) > 1 else answers[0]) else b"no")

    async def start(self, autodeploy: bool = True) -> OrchestratorService:
        settings = Settings(
            nats_url=self.server.url,
            orch_strategies_dir=self.root,
            orch_log_dir=self.logs,
            orch_autodeploy=autodeploy,
            orch_process_command="{python} {path}/strategy.py",
            orch_backoff_initial=0.05,
            orch_max_restarts=3,
            orch_stop_timeout=5.0,
            orch_heartbeat_interval=0.3,
            orch_start_timeout=15.0,
        )
        self.orch = OrchestratorService(settings)
        self.svc = await run_in_process(NAME, settings, self.orch.start)
        return self.orch

    async def stop(self) -> None:
        if self.svc is not None:
            await self.svc.stop()
            self.svc = None


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[Desk]:
    d = Desk(nats_server, nc, tmp_path)
    _strategy(d.root, "keeper", "alice")
    _strategy(d.root, "other", "bob")
    await d.setup()
    try:
        yield d
    finally:
        await d.stop()


async def _ctl(nc: Client, subject: str, strategy_id: str = "") -> strategy_pb2.StrategyStatusList:
    return await request(
        nc, subject, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList, timeout=20
    )


def _states(reply: strategy_pb2.StrategyStatusList) -> dict[str, int]:
    return {s.strategy_id: s.state for s in reply.strategies}


async def _status(nc: Client, strategy_id: str) -> strategy_pb2.StrategyStatus:
    return (await _ctl(nc, subjects.CTL_STATUS, strategy_id)).strategies[0]


async def _until_running(nc: Client, strategy_id: str, timeout: float = 20) -> strategy_pb2.StrategyStatus:
    async def running() -> strategy_pb2.StrategyStatus | None:
        status = await _status(nc, strategy_id)
        return status if status.state == RUNNING else None

    return await poll(running, f"{strategy_id} RUNNING", timeout=timeout, every=0.05)


# -- 1. a stop lasts ------------------------------------------------------------------------------


async def test_a_stopped_strategy_stays_stopped_across_an_orchestrator_restart_until_started(
    desk: Desk, nc: Client
) -> None:
    await desk.start()
    await desk.started.next("keeper")
    await desk.started.next("other")
    await _until_running(nc, "keeper")
    stopped = await _ctl(nc, subjects.CTL_STOP, "keeper")
    assert _states(stopped) == {"keeper": STOPPED}

    # The spec is still the spec (router and ledger read it), with the wish beside it.
    js = nc.jetstream()
    raw = await js.get_last_msg(f"KV_{subjects.KV_STRATEGIES}", f"$KV.{subjects.KV_STRATEGIES}.keeper")
    assert (raw.headers or {}).get(DESIRED_HEADER) == "stopped"
    assert codec.decode(raw.data or b"", strategy_pb2.StrategySpec, raw.headers).member_id == "alice"

    await desk.stop()  # the orchestrator's own shutdown stops "other" too, without recording a wish
    await desk.start()
    await desk.started.next("other")  # autodeploy ran "other" again...
    status = await _ctl(nc, subjects.CTL_STATUS)
    assert _states(status)["keeper"] == STOPPED  # ...and left "keeper" stopped, still listed
    assert desk.started.queue("keeper").empty()

    deployed_all = await _ctl(nc, subjects.CTL_DEPLOY)  # deploy-all re-reads it and keeps it stopped
    assert _states(deployed_all)["keeper"] == STOPPED
    assert "stopped by request, left stopped: keeper" in deployed_all.message
    assert desk.started.queue("keeper").empty()

    started = await _ctl(nc, subjects.CTL_START, "keeper")
    assert _states(started) == {"keeper": RUNNING}
    await desk.started.next("keeper")
    raw = await js.get_last_msg(f"KV_{subjects.KV_STRATEGIES}", f"$KV.{subjects.KV_STRATEGIES}.keeper")
    assert DESIRED_HEADER not in (raw.headers or {})

    await desk.stop()
    await desk.start()  # started again: it runs after a restart too
    await desk.started.next("keeper")
    await _until_running(nc, "keeper")


async def test_deploy_of_one_stopped_strategy_runs_it_and_forgets_the_stop(desk: Desk, nc: Client) -> None:
    await desk.start(autodeploy=False)
    assert _states(await _ctl(nc, subjects.CTL_DEPLOY, "keeper")) == {"keeper": RUNNING}
    assert _states(await _ctl(nc, subjects.CTL_STOP)) == {"keeper": STOPPED}  # stop all: recorded too
    await desk.stop()
    await desk.start()
    await desk.started.next("other")
    assert _states(await _ctl(nc, subjects.CTL_STATUS))["keeper"] == STOPPED
    assert _states(await _ctl(nc, subjects.CTL_DEPLOY, "keeper")) == {"keeper": RUNNING}
    await desk.stop()
    await desk.start()
    await _until_running(nc, "keeper")


# -- 2. the error shown is the current run's ------------------------------------------------------


async def test_a_strategy_that_recovered_after_a_crash_shows_no_old_error(desk: Desk, nc: Client) -> None:
    await desk.start(autodeploy=False)
    desk.crash["keeper"] = [True, False]  # the first run crashes after one heartbeat, the restart is fine
    await _ctl(nc, subjects.CTL_DEPLOY, "keeper")

    async def restarted() -> bool:  # the crash is shown while it waits to restart
        return (await _status(nc, "keeper")).restarts > 0

    async def running_again() -> strategy_pb2.StrategyStatus | None:
        status = await _status(nc, "keeper")
        return status if status.restarts >= 1 and status.state == RUNNING else None

    await poll(restarted, "keeper restarted after its crash", timeout=20, every=0.02)
    status = await poll(running_again, "keeper RUNNING again", timeout=20, every=0.05)
    assert status.last_error == "", status  # recovered: no error of the run that crashed
    assert desk.orch is not None
    assert "flaky first run" in desk.orch.managed["keeper"].supervisor.previous_error


# -- 3 and 4. the CLI: unknown strategies, JSON ---------------------------------------------------


async def _desk_cli(server: NatsServer, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "desk.cli",
        "--nats-url",
        server.url,
        "--credentials",
        "/nonexistent/cli.json",
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_URL")},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def ledger(nats_server: NatsServer, nc: Client, tmp_path: Path) -> AsyncIterator[None]:
    # no equity snapshot during the test: "nothing yet" is what a strategy without books shows, however
    # long the reads take on a busy machine (a snapshot every 10 s would give it an equity row)
    settings = LedgerSettings(
        nats_url=nats_server.url,
        ledger_db_path=str(tmp_path / "ledger.db"),
        drain_timeout=5,
        ledger_snapshot_interval=3600,
    )
    proc = await run_in_process("ledger", settings, LedgerService(settings).start)
    try:
        yield
    finally:
        await proc.stop()


@pytest.mark.usefixtures("ledger")
async def test_reads_of_an_unknown_strategy_say_so_and_a_known_one_without_books_is_nothing_yet(
    desk: Desk, nc: Client, nats_server: NatsServer
) -> None:
    await desk.start(autodeploy=False)
    await _ctl(nc, subjects.CTL_DEPLOY, "keeper")
    for command in ("positions", "orders", "fills", "pnl", "equity"):
        code, out, err = await _desk_cli(nats_server, command, "-s", "nosuch")
        assert code == 1, (command, out, err)
        assert "no strategy 'nosuch' on the desk" in err, (command, err)
        code, out, err = await _desk_cli(nats_server, command, "-s", "nosuch", "--json")
        assert code == 1 and out == "" and "no strategy 'nosuch'" in err, (command, out, err)
        code, out, err = await _desk_cli(nats_server, command, "-s", "keeper")
        assert code == 0 and err == "", (command, out, err)
        if command == "pnl":  # a known strategy has P&L from its first moment: its initial cash
            assert "keeper" in out and "100,000.00" in out and "0.00%" in out, out
        else:
            assert "nothing yet" in out, (command, out)
    # A strategy stopped by request is still on the desk: its books are "nothing yet", not unknown.
    await _ctl(nc, subjects.CTL_STOP, "keeper")
    code, out, err = await _desk_cli(nats_server, "positions", "-s", "keeper")
    assert code == 0 and "nothing yet" in out, (out, err)


async def test_status_json_writes_words_for_states_and_numbers_for_counts(
    desk: Desk, nc: Client, nats_server: NatsServer
) -> None:
    await desk.start(autodeploy=False)
    await _ctl(nc, subjects.CTL_DEPLOY, "keeper")
    code, out, err = await _desk_cli(nats_server, "status", "--json")
    assert code == 0, err
    row = json.loads(out)["strategies"][0]
    assert row["state"] == "running" and row["strategy_id"] == "keeper"
    assert isinstance(row["restarts"], int) and isinstance(row["pid"], int) and row["pid"] > 0
    assert isinstance(row["last_heartbeat_ns"], int) and row["last_heartbeat_ns"] > 0  # int64: a number too


# -- 5. the SDK runner by hand: credentials refused, signals ---------------------------------------

SDK_STRATEGY = """
import asyncio
from strategy_sdk import Strategy

class Slow(Strategy):
    async def on_start(self) -> None:
        if self.config.get("params", {}).get("slow_start"):
            await asyncio.sleep(3600)
"""


def _sdk_folder(tmp_path: Path, slow_start: bool = False) -> Path:
    folder = tmp_path / "by_hand"
    folder.mkdir(exist_ok=True)
    (folder / "strategy.py").write_text(SDK_STRATEGY)
    (folder / "config.json").write_text(json.dumps({"user_id": "alice", "params": {"slow_start": slow_start}}))
    return folder


async def _sdk(folder: Path, url: str, **env: str) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("NATS_", "DESK_"))}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "strategy_sdk",
        "run",
        str(folder),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**clean, "PYTHONPATH": str(ROOT), "NATS_URL": url, "DESK_HEARTBEAT_INTERVAL": "0.2", **env},
    )


async def test_the_runner_without_credentials_says_so_once_and_exits_connect(tmp_path: Path) -> None:
    server = secured_server(tmp_path / "secured", [auth.user_entry(auth.ADMIN_USER, auth.hash_password("pw"))])
    try:
        folder = _sdk_folder(tmp_path)
        for env in ({}, {"NATS_USER": "strategy-by_hand", "NATS_PASSWORD": "wrong"}):
            proc = await _sdk(folder, server.url, **env)
            _, err = await asyncio.wait_for(proc.communicate(), 30)  # it gives up: no retrying forever
            text = err.decode()
            assert proc.returncode == EXIT_CONNECT, text
            failures = [line for line in text.splitlines() if "nats.connect_failed" in line]
            assert len(failures) == 1, text
            assert "refused the login" in failures[0]
            assert ("no credentials" in failures[0]) if not env else ("strategy-by_hand" in failures[0])
            assert text.lower().count("authorization violation") <= 1, text  # not one line per attempt
    finally:
        server.cleanup()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_the_runner_stops_at_once_on_a_signal_while_it_cannot_connect(tmp_path: Path, sig: int) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on: it retries, as it should for a desk starting
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await _sdk(_sdk_folder(tmp_path), f"nats://127.0.0.1:{port}")
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while b"nats.connect_retrying" not in await proc.stderr.readline():
            pass
    proc.send_signal(sig)
    # It retries a refused connection forever (a desk may be starting), so only the signal can end it:
    # exit 0 within the bound is the signal honoured mid-retry.
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.returncode == 0


async def test_the_runner_stops_at_once_on_sigterm_while_on_start_is_still_running(
    tmp_path: Path, nats_server: NatsServer, nc: Client
) -> None:
    proc = await _sdk(_sdk_folder(tmp_path, slow_start=True), nats_server.url)
    assert proc.stderr is not None
    async with asyncio.timeout(20):
        while b"strategy.starting" not in await proc.stderr.readline():
            pass
    proc.send_signal(signal.SIGTERM)
    # on_start sleeps an hour, so only the signal can end it: exit 0 within the bound is a stop honoured
    # while on_start still runs.
    await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0


# -- 6. the `desk up` banner's command works -------------------------------------------------------


async def test_desk_up_prints_a_command_that_reaches_it_on_another_port_and_data_dir(tmp_path: Path) -> None:
    import re
    import shlex

    from tests.support import DeskUp, free_port

    strategies = tmp_path / "strategies"
    strategies.mkdir()
    up = DeskUp(tmp_path / "elsewhere", strategies, free_port())
    await up.start("--no-strategies")
    try:
        banner = "".join(up.output)
        found = re.search(r"Try: (.+?) status,", banner)
        assert found, banner
        command = shlex.split(found.group(1))
        assert command[0] == "desk" and f"nats://127.0.0.1:{up.port}" in command and "--credentials" in command
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "DESK_CREDENTIALS")
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "desk.cli",
            *command[1:],
            "status",
            "--json",
            cwd=ROOT,
            env=clean,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert json.loads(out)["strategies"] == []
    finally:
        assert await up.interrupt() == 0


# -- 7. unknown names in halts and -m; halts in `desk status` --------------------------------------


@pytest.fixture
async def router(nats_server: NatsServer, nc: Client) -> AsyncIterator[OrderRouterService]:
    settings = RouterSettings(nats_url=nats_server.url, drain_timeout=5)
    service = OrderRouterService(settings)
    proc = await run_in_process(ROUTER, settings, service.start)
    try:
        yield service
    finally:
        await proc.stop()


async def _halted(nc: Client, strategy_id: str, halted: bool, desk_halted: bool) -> None:
    """Until the orchestrator's status shows ``strategy_id`` (and the desk) so (it follows DESK_RISK)."""

    async def shown() -> bool:
        reply = await _ctl(nc, subjects.CTL_STATUS, strategy_id)
        return reply.strategies[0].halted == halted and reply.desk_halted == desk_halted

    await poll(shown, f"status shows {strategy_id} halted={halted}, desk halted={desk_halted}", timeout=30, every=0.05)


async def test_halts_of_unknown_strategies_are_refused_and_halts_show_in_status(
    desk: Desk, nc: Client, nats_server: NatsServer, router: OrderRouterService
) -> None:
    await desk.start(autodeploy=False)
    await _ctl(nc, subjects.CTL_DEPLOY, "keeper")
    await router.wait_until(lambda: "keeper" in router.strategies, timeout=30)
    for command in ("halt", "resume"):
        code, out, err = await _desk_cli(nats_server, command, "nosuch")
        assert code == 1, (command, out, err)
        assert "UNKNOWN_STRATEGY" in err and "'nosuch'" in err, (command, err)
    assert router.halts.keys() == []  # nothing was written for it

    code, out, err = await _desk_cli(nats_server, "halt", "keeper")
    assert code == 0 and "halted strategies: keeper" in out, (out, err)
    await _halted(nc, "keeper", True, False)
    code, out, err = await _desk_cli(nats_server, "status", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["desk_halted"] is False and shown["strategies"][0]["halted"] is True
    code, out, err = await _desk_cli(nats_server, "status")
    assert code == 0 and "HALTED" in out and "the whole desk is HALTED" not in out, out

    assert (await _desk_cli(nats_server, "halt"))[0] == 0  # the whole desk
    await _halted(nc, "keeper", True, True)
    code, out, err = await _desk_cli(nats_server, "status")
    assert code == 0 and "the whole desk is HALTED" in out, out
    assert json.loads((await _desk_cli(nats_server, "status", "--json"))[1])["desk_halted"] is True
    assert (await _desk_cli(nats_server, "resume"))[0] == 0
    await _halted(nc, "keeper", True, False)

    # keeper's spec is removed while it is halted: no new halt of it, but its stale halt can be lifted
    await (await nc.jetstream().key_value(subjects.KV_STRATEGIES)).delete("keeper")
    await router.wait_until(lambda: "keeper" not in router.strategies, timeout=30)
    code, out, err = await _desk_cli(nats_server, "halt", "keeper")
    assert code == 1 and "UNKNOWN_STRATEGY" in err, (out, err)
    code, out, err = await _desk_cli(nats_server, "resume", "keeper")
    assert code == 0 and "halted strategies: none" in out, (out, err)
    await _halted(nc, "keeper", False, False)
    code, out, err = await _desk_cli(nats_server, "resume", "keeper")  # nothing left to lift
    assert code == 1 and "UNKNOWN_STRATEGY" in err, (out, err)


@pytest.mark.usefixtures("ledger")
async def test_reads_of_an_unknown_member_say_so_and_a_known_one_without_books_is_nothing_yet(
    desk: Desk, nc: Client, nats_server: NatsServer
) -> None:
    await desk.start(autodeploy=False)
    await _ctl(nc, subjects.CTL_DEPLOY, "keeper")  # alice's
    for command in ("positions", "orders", "fills", "pnl", "equity"):
        code, out, err = await _desk_cli(nats_server, command, "-m", "nosuch")
        assert code == 1 and "no member 'nosuch' on the desk" in err, (command, out, err)
        code, out, err = await _desk_cli(nats_server, command, "-m", "alice")
        assert code == 0 and err == "", (command, out, err)
        if command != "pnl":  # pnl has alice's row from the start (keeper's initial cash)
            assert "nothing yet" in out, (command, out)


# -- 8. desk logs -f ---------------------------------------------------------------------------------

# Prints "tick N" every 20 ms, and heartbeats.
PRINTER = """
import asyncio, os, time
import nats
from desk.bus import codec, subjects
from desk.v1 import strategy_pb2

SID = os.environ["DESK_STRATEGY_ID"]

async def main():
    nc = await nats.connect(os.environ["NATS_URL"])
    interval = float(os.environ["DESK_HEARTBEAT_INTERVAL"])
    n, beat = 0, 0.0
    while True:
        if time.monotonic() - beat >= interval:
            body, headers = codec.encode(strategy_pb2.Heartbeat(strategy_id=SID, ts_ns=1))
            await nc.publish(subjects.heartbeat(SID), body, headers=headers)
            beat = time.monotonic()
        print(f"tick {n}", flush=True)
        n += 1
        await asyncio.sleep(0.02)

asyncio.run(main())
"""


async def test_desk_logs_follow_prints_each_new_line_once_and_ends_on_sigint(
    desk: Desk, nc: Client, nats_server: NatsServer
) -> None:
    folder = desk.root / "printer"
    folder.mkdir()
    (folder / "strategy.py").write_text(PRINTER)
    (folder / "config.json").write_text(json.dumps({"user_id": "carol"}))
    await desk.start(autodeploy=False)
    await _ctl(nc, subjects.CTL_DEPLOY, "printer")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "desk.cli",
        "--nats-url",
        nats_server.url,
        "--credentials",
        "/nonexistent/cli.json",
        "logs",
        "-f",
        "printer",
        "-n",
        "3",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k not in ("NATS_USER", "NATS_PASSWORD", "NATS_URL")},
    )
    assert proc.stdout is not None
    ticks: list[int] = []

    def take(line: bytes) -> None:
        text = line.decode().strip()
        if text.startswith("tick "):
            ticks.append(int(text.split()[1]))

    try:
        async with asyncio.timeout(60):  # the first 3 lines, then at least 80 more as they are written
            while len(ticks) < 83:
                line = await proc.stdout.readline()
                assert line, "desk logs -f ended by itself"
                take(line)
    finally:
        proc.send_signal(signal.SIGINT)
        rest, err = await asyncio.wait_for(proc.communicate(), 30)
    for line in rest.splitlines():
        take(line)
    assert proc.returncode == 0, err.decode()
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), ticks  # none left out, none twice
    assert desk.orch is not None and desk.orch.managed["printer"].supervisor.state == RUNNING
    # a follow of a strategy nobody has is an error at once, not an endless wait
    code, _, err_text = await _desk_cli(nats_server, "logs", "-f", "nosuch")
    assert code == 1 and "NOT_FOUND" in err_text, err_text
