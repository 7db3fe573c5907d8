"""The orchestrator against a real nats-server, running small fake strategies as processes.

The fake strategies are scripts (``ORCH_PROCESS_COMMAND="{python} {path}/strategy.py"``) that
announce themselves on ``test.started.<id>`` with their pid and environment, so tests await
events, never sleep. They heartbeat every DESK_HEARTBEAT_INTERVAL, which the orchestrator gives
them (ORCH_HEARTBEAT_INTERVAL), except those made to stop heartbeating. Pids are the orchestrator's
(the host's): a sandboxed strategy sees other pids inside its namespace.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NoKeysError

from desk.bus import codec, subjects
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.bus.testing import NatsServer, run_in_process
from desk.v1 import strategy_pb2
from services.orchestrator.service import NAME, Managed, OrchestratorService
from services.orchestrator.settings import Settings
from services.orchestrator.supervisor import BACKOFF, FAILED, RUNNING, STOPPED
from tests.support import poll

pytestmark = pytest.mark.integration

ANNOUNCE = """
import asyncio, json, os, signal, sys
import nats
from desk.bus import codec, subjects
from desk.v1 import strategy_pb2

SID = os.environ["DESK_STRATEGY_ID"]

async def announce():
    nc = await nats.connect(os.environ["NATS_URL"])
    print("hello from", SID, flush=True)
    payload = {"pid": os.getpid(), "env": dict(os.environ)}
    await nc.publish("test.started." + SID, json.dumps(payload).encode())
    await nc.flush()
    return nc

async def beat(nc, times=None):
    interval = float(os.environ["DESK_HEARTBEAT_INTERVAL"])
    sent = 0
    while times is None or sent < times:
        body, headers = codec.encode(strategy_pb2.Heartbeat(strategy_id=SID, ts_ns=1, bars_seen=3))
        await nc.publish(subjects.heartbeat(SID), body, headers=headers)
        await nc.flush()
        sent += 1
        await asyncio.sleep(interval)
"""

RUNNER = (
    ANNOUNCE
    + """
async def main():
    nc = await announce()
    await beat(nc)

asyncio.run(main())
"""
)

CRASHER = (
    ANNOUNCE
    + """
async def main():
    nc = await announce()
    await beat(nc, times=1)
    await nc.close()
    print("about to fail", file=sys.stderr, flush=True)
    raise ValueError("boom from crasher")

asyncio.run(main())
"""
)

STUBBORN = (
    ANNOUNCE
    + """
signal.signal(signal.SIGTERM, signal.SIG_IGN)

async def main():
    nc = await announce()
    await beat(nc)

asyncio.run(main())
"""
)

# Heartbeats twice, then its loop is stuck (as in `while True: pass`): alive, silent.
FREEZER = (
    ANNOUNCE
    + """
import time

async def main():
    nc = await announce()
    await beat(nc, times=2)
    print("freezing now", flush=True)
    time.sleep(3600)

asyncio.run(main())
"""
)

# Alive but never heartbeats.
SILENT = (
    ANNOUNCE
    + """
async def main():
    await announce()
    await asyncio.Event().wait()

asyncio.run(main())
"""
)


def _strategy(root: Path, name: str, source: str, config: dict[str, Any] | str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "strategy.py").write_text(source)
    (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))


class Started:
    """``test.started.*`` announcements, by strategy id."""

    def __init__(self) -> None:
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    def queue(self, strategy_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self.queues.setdefault(strategy_id, asyncio.Queue())

    async def on_msg(self, msg: Msg) -> None:
        await self.queue(subjects.token(msg.subject, -1)).put(json.loads(msg.data))

    async def next(self, strategy_id: str, timeout: float = 20) -> dict[str, Any]:
        return await asyncio.wait_for(self.queue(strategy_id).get(), timeout)


@dataclass
class Desk:
    orch: OrchestratorService
    started: Started
    root: Path
    log_dir: Path
    exits: asyncio.Queue[strategy_pb2.StrategyStatus]
    beats: asyncio.Queue[str]


def _record(orch: OrchestratorService) -> tuple[asyncio.Queue[strategy_pb2.StrategyStatus], asyncio.Queue[str]]:
    """Wrap the orchestrator's exit and heartbeat handlers so tests can await them."""
    exits: asyncio.Queue[strategy_pb2.StrategyStatus] = asyncio.Queue()
    beats: asyncio.Queue[str] = asyncio.Queue()
    after_exit, on_heartbeat = orch._after_exit, orch._on_heartbeat

    def record_exit(m: Managed, info: Any) -> None:
        after_exit(m, info)
        exits.put_nowait(orch.status(m))

    async def record_heartbeat(msg: Msg) -> None:
        await on_heartbeat(msg)
        beats.put_nowait(msg.subject)

    orch._after_exit = record_exit  # type: ignore[method-assign]
    orch._on_heartbeat = record_heartbeat  # type: ignore[method-assign]
    return exits, beats


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def desk(
    nats_server: NatsServer, nc: Client, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Desk]:
    root = tmp_path / "strategies"
    root.mkdir()
    _strategy(root, "runner", RUNNER, {"user_id": "alice", "env": {"LOOKBACK": "20"}, "symbols": ["AAPL", "MSFT"]})
    _strategy(root, "crasher", CRASHER, {"user_id": "bob", "enabled": False})
    _strategy(root, "stubborn", STUBBORN, {"user_id": "carol", "enabled": False})
    _strategy(root, "broken", RUNNER, '{"user_id": ')
    _strategy(root, "freezer", FREEZER, {"user_id": "dan", "enabled": False})
    _strategy(root, "silent", SILENT, {"user_id": "erin", "enabled": False})
    options = getattr(request, "param", {})
    settings = Settings(
        nats_url=nats_server.url,
        orch_strategies_dir=root,
        orch_log_dir=tmp_path / "logs",
        orch_autodeploy=options.get("autodeploy", False),
        orch_process_command="{python} {path}/strategy.py",
        orch_backoff_initial=0.05,
        orch_max_restarts=1,
        orch_stop_timeout=options.get("stop_timeout", 5.0),
        orch_heartbeat_interval=0.3,
        orch_heartbeat_misses=3,
        orch_start_timeout=options.get("start_timeout", 15.0),
    )
    started = Started()
    sub = await nc.subscribe("test.started.*", cb=started.on_msg)
    await nc.flush()
    orch = OrchestratorService(settings)
    exits, beats = _record(orch)
    svc = await run_in_process(NAME, settings, orch.start)
    try:
        yield Desk(orch, started, root, tmp_path / "logs", exits, beats)
    finally:
        await svc.stop()
        await sub.unsubscribe()
        for m in orch.managed.values():
            assert m.supervisor.pid == 0 or not _pid_alive(m.supervisor.pid)


async def _ctl(nc: Client, subject: str, strategy_id: str = "") -> strategy_pb2.StrategyStatusList:
    return await request(
        nc, subject, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList, timeout=20
    )


async def test_deploy_writes_the_spec_then_runs_the_strategy_with_a_clean_environment(
    desk: Desk, nc: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", "must-not-leak")
    monkeypatch.setenv("ORCH_SECRET_OF_MY_OWN", "nor-this")
    deployed = await _ctl(nc, subjects.CTL_DEPLOY, "runner")
    status = deployed.strategies[0]
    assert status.state == RUNNING and status.pid > 0 and status.member_id == "alice"
    assert status.last_heartbeat_ns > 0  # deploy answered once it heartbeated
    announced = await desk.started.next("runner")
    env = announced["env"]
    assert env["LOOKBACK"] == "20"
    assert (env["DESK_STRATEGY_ID"], env["DESK_MEMBER_ID"], env["DESK_SYMBOLS"]) == ("runner", "alice", "AAPL,MSFT")
    assert env["NATS_URL"] == desk.orch.settings.nats_url and env["PYTHONUNBUFFERED"] == "1"
    assert env["DESK_HEARTBEAT_INTERVAL"] == "0.3"
    assert "ALPACA_API_KEY" not in env and "ORCH_SECRET_OF_MY_OWN" not in env

    kv = await nc.jetstream().key_value(subjects.KV_STRATEGIES)
    spec = codec.decode((await kv.get("runner")).value or b"", strategy_pb2.StrategySpec)
    assert (spec.member_id, spec.path, spec.runtime) == ("alice", str((desk.root / "runner").resolve()), "process")

    listed = await _ctl(nc, subjects.CTL_STATUS)
    assert [(s.strategy_id, s.state, s.pid) for s in listed.strategies] == [("runner", RUNNING, status.pid)]
    assert "broken" in listed.message and "not valid JSON" in listed.message


async def test_stop_leaves_no_process_and_the_logs_keep_its_output(desk: Desk, nc: Client) -> None:
    pid = (await _ctl(nc, subjects.CTL_DEPLOY, "runner")).strategies[0].pid
    await desk.started.next("runner")
    stopped = await _ctl(nc, subjects.CTL_STOP, "runner")
    assert stopped.strategies[0].state == STOPPED and stopped.strategies[0].pid == 0
    assert not _pid_alive(pid)

    logs = await request(
        nc, subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id="runner", tail=50), strategy_pb2.LogsReply
    )
    assert any(f"--- started pid {pid} at" in line for line in logs.lines)
    assert "hello from runner" in logs.lines
    assert "hello from runner" in (desk.log_dir / "runner.log").read_text()

    started_again = await _ctl(nc, subjects.CTL_START, "runner")
    assert started_again.strategies[0].state == RUNNING and started_again.strategies[0].pid not in (0, pid)
    assert (await desk.started.next("runner"))["env"]["DESK_STRATEGY_ID"] == "runner"


async def test_a_crashing_strategy_is_restarted_with_its_error_then_failed(desk: Desk, nc: Client) -> None:
    exits = desk.exits
    await _ctl(nc, subjects.CTL_DEPLOY, "crasher")
    await desk.started.next("crasher")
    crashed = await asyncio.wait_for(exits.get(), 20)
    assert crashed.state == BACKOFF and crashed.exit_code == 1
    assert crashed.last_error == "ValueError: boom from crasher"
    await desk.started.next("crasher")  # restarted
    failed = await asyncio.wait_for(exits.get(), 20)
    assert failed.state == FAILED and failed.restarts == 1

    status = await _ctl(nc, subjects.CTL_STATUS, "crasher")
    assert status.strategies[0].state == FAILED
    assert "ValueError: boom from crasher" in status.strategies[0].last_error
    assert "gave up after 1 restarts" in status.message
    logs = await request(nc, subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id="crasher"), strategy_pb2.LogsReply)
    assert sum(line.startswith("--- started pid") for line in logs.lines) == 2
    assert "Traceback (most recent call last):" in logs.lines


async def test_heartbeats_update_the_status_and_bad_ones_are_counted(desk: Desk, nc: Client) -> None:
    beats = desk.beats
    await _ctl(nc, subjects.CTL_DEPLOY, "runner")
    assert await asyncio.wait_for(beats.get(), 20) == "desk.hb.runner"
    status = (await _ctl(nc, subjects.CTL_STATUS, "runner")).strategies[0]
    assert status.last_heartbeat_ns > 0

    await nc.publish("desk.hb.runner", b"\xff\xff\xff")
    async with asyncio.timeout(20):  # the runner's own beats keep coming: until the bad one was handled
        while desk.orch.bad_heartbeats == 0:
            assert await beats.get() == "desk.hb.runner"
    assert desk.orch.bad_heartbeats == 1
    assert desk.orch.managed["runner"].supervisor.state == RUNNING  # a bad beat neither counts nor harms


async def test_unknown_and_invalid_strategies_are_refused_clearly(desk: Desk, nc: Client) -> None:
    for subject in (subjects.CTL_START, subjects.CTL_STOP, subjects.CTL_STATUS, subjects.CTL_RESTART):
        with pytest.raises(DeskError) as refused:
            await _ctl(nc, subject, "ghost")
        assert (refused.value.code, refused.value.status) == ("NOT_FOUND", 404)
        assert "unknown strategy 'ghost'" in refused.value.message
    with pytest.raises(DeskError) as missing:
        await _ctl(nc, subjects.CTL_DEPLOY, "ghost")
    assert missing.value.status == 404
    with pytest.raises(DeskError) as invalid:
        await _ctl(nc, subjects.CTL_DEPLOY, "broken")
    assert invalid.value.code == "INVALID_STRATEGY" and "not valid JSON" in invalid.value.message
    with pytest.raises(DeskError) as no_logs:
        await request(nc, subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id="ghost"), strategy_pb2.LogsReply)
    assert no_logs.value.status == 404

    listed = await request(nc, subjects.CTL_LIST, strategy_pb2.StrategyControl(), strategy_pb2.StrategyList)
    assert sorted(s.strategy_id for s in listed.strategies) == ["crasher", "freezer", "runner", "silent", "stubborn"]


@pytest.mark.parametrize("desk", [{"autodeploy": True, "stop_timeout": 0.5}], indirect=True)
async def test_autodeploy_runs_enabled_strategies_and_shutdown_kills_even_stubborn_ones(desk: Desk, nc: Client) -> None:
    await desk.started.next("runner")
    status = await _ctl(nc, subjects.CTL_STATUS)
    assert [s.strategy_id for s in status.strategies] == ["runner"]  # the others are disabled
    runner_pid = status.strategies[0].pid

    stubborn_pid = (await _ctl(nc, subjects.CTL_DEPLOY, "stubborn")).strategies[0].pid
    await desk.orch.shutdown()
    assert runner_pid and stubborn_pid
    assert not _pid_alive(runner_pid) and not _pid_alive(stubborn_pid)
    assert "killed by SIGKILL" in (desk.log_dir / "stubborn.log").read_text()


async def test_a_strategy_whose_heartbeats_stop_is_killed_restarted_and_says_why(desk: Desk, nc: Client) -> None:
    deployed = (await _ctl(nc, subjects.CTL_DEPLOY, "freezer")).strategies[0]
    assert deployed.state == RUNNING and deployed.last_error == ""
    hung = await asyncio.wait_for(desk.exits.get(), 20)
    assert hung.strategy_id == "freezer" and hung.state == BACKOFF
    assert hung.last_error.startswith("no heartbeat for ") and hung.last_error.endswith(
        "(3 intervals of 0.3 s): restarted"
    ), hung.last_error
    assert not _pid_alive(deployed.pid)
    await desk.started.next("freezer")  # announced by the first run
    await desk.started.next("freezer")  # ... and by the restart
    failed = await asyncio.wait_for(desk.exits.get(), 20)  # it freezes again: max_restarts is 1
    assert failed.state == FAILED and failed.restarts == 1 and failed.last_error.endswith(": killed")
    status = await _ctl(nc, subjects.CTL_STATUS, "freezer")
    assert "gave up after 1 restarts" in status.message and "freezer" in status.message


@pytest.mark.parametrize("desk", [{"start_timeout": 1.5}], indirect=True)
async def test_a_strategy_that_never_heartbeats_is_reported_at_deploy_and_killed(desk: Desk, nc: Client) -> None:
    reply = await _ctl(nc, subjects.CTL_DEPLOY, "silent")
    status = reply.strategies[0]
    assert status.state != RUNNING and status.last_heartbeat_ns == 0
    assert "silent: no heartbeat within" in reply.message and "ORCH_START_TIMEOUT 1.5 s" in reply.message
    killed = await asyncio.wait_for(desk.exits.get(), 20)
    assert killed.state == BACKOFF and killed.last_error.startswith("no heartbeat within")
    assert not _pid_alive(status.pid)


async def test_a_spec_too_large_for_the_bus_is_refused_at_deploy_with_the_size_reason(desk: Desk, nc: Client) -> None:
    _strategy(desk.root, "huge", RUNNER, {"user_id": "hal", "env": {"BLOB": "x" * 100_000}})
    with pytest.raises(DeskError) as refused:
        await _ctl(nc, subjects.CTL_DEPLOY, "huge")
    assert refused.value.code == "INVALID_STRATEGY"
    assert "its spec is" in refused.value.message and "more than the 16384 the desk accepts" in refused.value.message
    assert "huge" not in desk.orch.managed
    kv = await nc.jetstream().key_value(subjects.KV_STRATEGIES)
    assert "huge" not in await _keys(kv)
    status = await _ctl(nc, subjects.CTL_STATUS)
    assert "huge: its spec is" in status.message  # listed as invalid, with the reason


async def test_runtime_docker_under_the_process_orchestrator_is_refused(desk: Desk, nc: Client) -> None:
    _strategy(desk.root, "wants_docker", RUNNER, {"user_id": "ivy", "runtime": "docker"})
    with pytest.raises(DeskError) as refused:
        await _ctl(nc, subjects.CTL_DEPLOY, "wants_docker")
    assert refused.value.code == "INVALID_STRATEGY"
    assert (
        "strategy wants_docker asks for runtime docker but this desk runs strategies with process; remove runtime "
        "from config.json or run the desk under compose"
    ) in refused.value.message
    assert "wants_docker" not in desk.orch.managed
    everything = await _ctl(nc, subjects.CTL_DEPLOY)  # deploying all skips it too, and says why
    assert "wants_docker" not in [s.strategy_id for s in everything.strategies]
    assert "wants_docker: strategy wants_docker asks for runtime docker" in everything.message


@pytest.mark.parametrize("desk", [{"stop_timeout": 4.0}], indirect=True)
async def test_a_slow_stop_of_one_strategy_holds_neither_the_others_nor_status(desk: Desk, nc: Client) -> None:
    deployed = await asyncio.gather(_ctl(nc, subjects.CTL_DEPLOY, "stubborn"), _ctl(nc, subjects.CTL_DEPLOY, "runner"))
    assert [d.strategies[0].state for d in deployed] == [RUNNING, RUNNING]
    stubborn = desk.orch.managed["stubborn"]
    slow_stop = asyncio.create_task(_ctl(nc, subjects.CTL_STOP, "stubborn"))  # ignores SIGTERM: 4 s to SIGKILL
    await poll(lambda: stubborn.supervisor.stop_requested, "the stop is in progress", timeout=10, every=0.01)

    status = await request(
        nc, subjects.CTL_STATUS, strategy_pb2.StrategyControl(), strategy_pb2.StrategyStatusList, timeout=2
    )
    assert {s.strategy_id for s in status.strategies} == {"stubborn", "runner"}
    stopped = await request(
        nc,
        subjects.CTL_STOP,
        strategy_pb2.StrategyControl(strategy_id="runner"),
        strategy_pb2.StrategyStatusList,
        timeout=3,
    )
    assert stopped.strategies[0].state == STOPPED
    restarted = await _ctl(nc, subjects.CTL_START, "runner")
    assert restarted.strategies[0].state == RUNNING
    assert not slow_stop.done()  # all of that happened while stubborn was still being stopped

    final = (await slow_stop).strategies[0]
    assert final.state == STOPPED and not _pid_alive(deployed[0].strategies[0].pid)
    assert "killed by SIGKILL" in (desk.log_dir / "stubborn.log").read_text()


async def _keys(kv: Any) -> list[str]:
    try:
        return list(await kv.keys())
    except NoKeysError:  # nats-py's answer for an empty bucket
        return []
