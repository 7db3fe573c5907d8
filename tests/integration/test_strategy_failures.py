"""Broken member code against the real orchestrator and the real strategy SDK runner: a strategy
that fails at import, has a SyntaxError or no Strategy class (each FAILED at deploy, with its
traceback in the reply, no restart loop), one that raises in on_bar (keeps running), one that exits
in on_start, one that dies after it ran (restarted with backoff), and one whose on_bar never returns
(killed after the missed heartbeats, restarted, and status says why). None disturbs the desk."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.bus.request import request
from desk.bus.testing import NatsServer, run_in_process
from desk.v1 import marketdata_pb2, strategy_pb2
from services.orchestrator.service import NAME, Managed, OrchestratorService
from services.orchestrator.settings import Settings
from services.orchestrator.supervisor import BACKOFF, FAILED, RUNNING

pytestmark = pytest.mark.integration

IMPORT_ERROR = """
import a_module_that_does_not_exist
from strategy_sdk import Strategy

class Broken(Strategy):
    pass
"""

RAISES_IN_ON_BAR = """
from strategy_sdk import Strategy

class Raiser(Strategy):
    def on_bar(self, bar):
        raise RuntimeError(f"bad arithmetic on {bar.symbol}")
"""

EXITS = """
import sys
from strategy_sdk import Strategy

class Quitter(Strategy):
    def on_start(self):
        sys.exit(3)
"""

SYNTAX_ERROR = """
from strategy_sdk import Strategy

class Typo(Strategy)
    def on_bar(self, bar):
        pass
"""

NO_STRATEGY_CLASS = """
from strategy_sdk import Bar

def on_bar(bar: Bar) -> None:
    pass
"""

HANGS_IN_ON_BAR = """
from strategy_sdk import Strategy

class Spinner(Strategy):
    def on_bar(self, bar):
        while True:
            pass
"""

DIES_IN_ON_BAR = """
import os
from strategy_sdk import Strategy

class Dier(Strategy):
    def on_bar(self, bar):
        print("dying on", bar.symbol, flush=True)
        os._exit(4)
"""


def _strategy(root: Path, name: str, source: str, env: dict[str, str] | None = None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "strategy.py").write_text(source)
    (root / name / "config.json").write_text(json.dumps({"user_id": "zed", "name": name, "env": env or {}}))


@pytest.fixture
async def orchestrator(
    nats_server: NatsServer, tmp_path: Path
) -> AsyncIterator[tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]]]:
    root = tmp_path / "strategies"
    _strategy(root, "import_error", IMPORT_ERROR)
    _strategy(root, "raiser", RAISES_IN_ON_BAR, {"DESK_HEARTBEAT_INTERVAL": "0.2"})
    _strategy(root, "quitter", EXITS)
    _strategy(root, "syntax_error", SYNTAX_ERROR)
    _strategy(root, "no_class", NO_STRATEGY_CLASS)
    _strategy(root, "spinner", HANGS_IN_ON_BAR)
    _strategy(root, "dier", DIES_IN_ON_BAR)
    settings = Settings(
        nats_url=nats_server.url,
        orch_strategies_dir=root,
        orch_log_dir=tmp_path / "logs",
        orch_autodeploy=False,
        orch_backoff_initial=0.05,
        orch_max_restarts=1,
        orch_heartbeat_interval=0.5,
        orch_heartbeat_misses=3,
        orch_stop_timeout=2.0,
    )
    orch = OrchestratorService(settings)
    exits: asyncio.Queue[strategy_pb2.StrategyStatus] = asyncio.Queue()
    after_exit = orch._after_exit

    def record_exit(m: Managed, info: Any) -> None:  # the orchestrator's own exit handling, then a test event
        after_exit(m, info)
        exits.put_nowait(orch.status(m))

    orch._after_exit = record_exit  # type: ignore[method-assign]
    svc = await run_in_process(NAME, settings, orch.start)
    try:
        yield orch, exits
    finally:
        await svc.stop()


async def _ctl(nc: Client, subject: str, strategy_id: str) -> strategy_pb2.StrategyStatusList:
    return await request(
        nc, subject, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList, timeout=20
    )


async def _next_exit(
    exits: asyncio.Queue[strategy_pb2.StrategyStatus], strategy_id: str
) -> strategy_pb2.StrategyStatus:
    async with asyncio.timeout(60):
        while True:
            status = await exits.get()
            if status.strategy_id == strategy_id:
                return status


async def test_a_strategy_that_fails_at_import_is_failed_at_deploy_with_its_traceback(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    orch, _ = orchestrator
    reply = await _ctl(nc, subjects.CTL_DEPLOY, "import_error")
    status = reply.strategies[0]
    assert status.state == FAILED and status.exit_code == 2 and status.restarts == 0
    assert status.last_error == "ModuleNotFoundError: No module named 'a_module_that_does_not_exist'"
    assert "import_error: exited with code 2 before its first heartbeat" in reply.message
    assert (
        "Traceback (most recent call last):" in reply.message and "import a_module_that_does_not_exist" in reply.message
    )
    assert orch.managed["import_error"].restart_task is None  # no restart loop
    logs = await request(
        nc, subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id="import_error"), strategy_pb2.LogsReply
    )
    assert sum(line.startswith("--- started pid") for line in logs.lines) == 1


async def test_a_strategy_with_a_syntax_error_is_failed_at_deploy_with_the_error(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    reply = await _ctl(nc, subjects.CTL_DEPLOY, "syntax_error")
    status = reply.strategies[0]
    assert status.state == FAILED and status.exit_code == 2
    assert "SyntaxError" in status.last_error
    assert "syntax_error: exited with code 2 before its first heartbeat" in reply.message
    assert "SyntaxError" in reply.message.split("its log", 1)[1]  # quoted from the log


async def test_a_strategy_without_a_strategy_class_is_failed_at_deploy(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    reply = await _ctl(nc, subjects.CTL_DEPLOY, "no_class")
    status = reply.strategies[0]
    assert status.state == FAILED and status.exit_code == 2
    assert "defines no subclass of strategy_sdk.Strategy" in status.last_error
    assert "not restarted: fix it and deploy it again" in reply.message


async def test_a_strategy_that_exits_in_on_start_is_failed_at_deploy_with_its_exit_code(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    reply = await _ctl(nc, subjects.CTL_DEPLOY, "quitter")
    status = reply.strategies[0]
    assert status.state == FAILED and status.exit_code == 3 and status.restarts == 0


async def test_a_strategy_that_dies_after_it_ran_is_restarted_with_backoff_and_keeps_its_error(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    _, exits = orchestrator
    assert (await _ctl(nc, subjects.CTL_DEPLOY, "dier")).strategies[0].state == RUNNING
    bar, headers = codec.encode(marketdata_pb2.Bar(symbol="AAPL", open="1", high="1", low="1", close="1", volume="10"))
    await nc.publish(subjects.md_bar("AAPL"), bar, headers=headers)
    died = await _next_exit(exits, "dier")
    assert died.state == BACKOFF and died.exit_code == 4 and died.last_error
    async with asyncio.timeout(30):  # an automatic restart, which runs
        while True:
            status = (await _ctl(nc, subjects.CTL_STATUS, "dier")).strategies[0]
            if status.state == RUNNING:
                break
            await asyncio.sleep(0.05)
    assert status.restarts == 1 and status.last_heartbeat_ns > 0


async def test_a_strategy_raising_in_on_bar_keeps_running_and_reports_its_errors_in_heartbeats(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    heartbeats: asyncio.Queue[strategy_pb2.Heartbeat] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        heartbeats.put_nowait(codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers))

    await nc.subscribe(subjects.heartbeat("raiser"), cb=on_heartbeat)
    await _ctl(nc, subjects.CTL_DEPLOY, "raiser")
    await asyncio.wait_for(heartbeats.get(), 30)  # running and subscribed to market data

    bar, headers = codec.encode(marketdata_pb2.Bar(symbol="AAPL", open="1", high="1", low="1", close="1", volume="10"))
    async with asyncio.timeout(30):
        while True:
            await nc.publish(subjects.md_bar("AAPL"), bar, headers=headers)
            beat = await heartbeats.get()
            if beat.errors >= 2:
                break
    assert "bad arithmetic on AAPL" in beat.last_error and beat.bars_seen >= 2

    status = await _ctl(nc, subjects.CTL_STATUS, "raiser")
    assert status.strategies[0].state == RUNNING and status.strategies[0].restarts == 0


async def test_a_strategy_stuck_in_on_bar_is_killed_after_the_missed_heartbeats_and_restarted(
    orchestrator: tuple[OrchestratorService, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    orch, exits = orchestrator
    heartbeats: asyncio.Queue[strategy_pb2.Heartbeat] = asyncio.Queue()

    async def on_heartbeat(msg: Msg) -> None:
        heartbeats.put_nowait(codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers))

    await nc.subscribe(subjects.heartbeat("spinner"), cb=on_heartbeat)
    deployed = (await _ctl(nc, subjects.CTL_DEPLOY, "spinner")).strategies[0]
    assert deployed.state == RUNNING
    bar, headers = codec.encode(marketdata_pb2.Bar(symbol="AAPL", open="1", high="1", low="1", close="1", volume="10"))
    await nc.publish(subjects.md_bar("AAPL"), bar, headers=headers)  # on_bar never returns

    hung = await _next_exit(exits, "spinner")
    assert hung.state == BACKOFF and hung.exit_code == -9  # SIGTERM cannot reach a stuck event loop
    assert hung.last_error.startswith("no heartbeat for ") and "(3 intervals of 0.5 s): restarted" in hung.last_error

    async with asyncio.timeout(30):  # the restart runs and heartbeats again
        while orch.managed["spinner"].supervisor.state != RUNNING:
            await heartbeats.get()
    status = (await _ctl(nc, subjects.CTL_STATUS, "spinner")).strategies[0]
    assert status.state == RUNNING and status.restarts == 1 and status.pid not in (0, deployed.pid)
    assert status.last_error == ""  # the restarted run is healthy: the error shown is the current run's

    restarted = (await _ctl(nc, subjects.CTL_RESTART, "spinner")).strategies[0]
    assert restarted.state == RUNNING and restarted.last_error == ""  # a fresh, healthy start clears it
