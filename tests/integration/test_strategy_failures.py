"""Broken member code against the real orchestrator and the real strategy SDK runner: a strategy
that fails at import, one that raises in on_bar, one that exits. Each is reported clearly and none
disturbs the desk."""

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
from services.orchestrator.service import NAME, Managed, Orchestrator
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


def _strategy(root: Path, name: str, source: str, env: dict[str, str] | None = None) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "strategy.py").write_text(source)
    (root / name / "config.json").write_text(json.dumps({"user_id": "zed", "name": name, "env": env or {}}))


@pytest.fixture
async def orchestrator(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[tuple[Orchestrator, asyncio.Queue[strategy_pb2.StrategyStatus]]]:
    root = tmp_path / "strategies"
    _strategy(root, "import_error", IMPORT_ERROR)
    _strategy(root, "raiser", RAISES_IN_ON_BAR, {"DESK_HEARTBEAT_INTERVAL": "0.2"})
    _strategy(root, "quitter", EXITS)
    settings = Settings(
        nats_url=nats_server.url, orch_strategies_dir=root, orch_log_dir=tmp_path / "logs", orch_autodeploy=False,
        orch_backoff_initial=0.05, orch_max_restarts=1,
    )
    orch = Orchestrator(settings)
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
    return await request(nc, subject, strategy_pb2.StrategyControl(strategy_id=strategy_id),
                         strategy_pb2.StrategyStatusList, timeout=20)


async def _next_exit(exits: asyncio.Queue[strategy_pb2.StrategyStatus], strategy_id: str) -> strategy_pb2.StrategyStatus:
    async with asyncio.timeout(60):
        while True:
            status = await exits.get()
            if status.strategy_id == strategy_id:
                return status


async def test_a_strategy_that_fails_at_import_is_reported_with_its_error_and_retried_with_backoff(
    orchestrator: tuple[Orchestrator, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    _, exits = orchestrator
    await _ctl(nc, subjects.CTL_DEPLOY, "import_error")
    first = await _next_exit(exits, "import_error")
    assert first.state == BACKOFF and first.exit_code == 2
    assert "a_module_that_does_not_exist" in first.last_error
    final = await _next_exit(exits, "import_error")
    assert final.state == FAILED and final.restarts == 1
    logs = await request(nc, subjects.CTL_LOGS, strategy_pb2.LogsRequest(strategy_id="import_error"), strategy_pb2.LogsReply)
    assert any("ModuleNotFoundError" in line for line in logs.lines)


async def test_a_strategy_that_exits_is_reported_with_its_exit_code(
    orchestrator: tuple[Orchestrator, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
) -> None:
    _, exits = orchestrator
    await _ctl(nc, subjects.CTL_DEPLOY, "quitter")
    first = await _next_exit(exits, "quitter")
    assert first.state == BACKOFF and first.exit_code != 0
    assert (await _next_exit(exits, "quitter")).state == FAILED


async def test_a_strategy_raising_in_on_bar_keeps_running_and_reports_its_errors_in_heartbeats(
    orchestrator: tuple[Orchestrator, asyncio.Queue[strategy_pb2.StrategyStatus]], nc: Client
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
