"""`desk up --cluster 3` as a user runs it: three nats-servers clustered on loopback, every stream R3,
a strategy's and a member's NATS users valid on every node, `desk status` through the server list,
a node killed (kill -9) without the strategy noticing more than a fail-over, and a second run on the
same data dir keeping the streams R3 and the fills of the first."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from desk.bus import codec, subjects
from desk.bus.retry import retrying
from desk.bus.servers import open_connection
from desk.v1 import executions_pb2
from tests.support import FILL_TYPES, DeskUp, follow_executions, free_port_run, poll, stream_fills

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
STRATEGY = "ma_crossover"  # an example strategy: trades within seconds on the synthetic feed
NODES = 3


@pytest.fixture
def strategies(tmp_path: Path) -> Path:
    folder = tmp_path / "strategies"
    shutil.copytree(ROOT / "strategies" / STRATEGY, folder / STRATEGY, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


@pytest.fixture
async def desk(tmp_path: Path, strategies: Path) -> AsyncIterator[DeskUp]:
    desk = DeskUp(tmp_path / "var", strategies, free_port_run(NODES), cluster=NODES)
    # unconfined: the test reads the strategy's password from its environment (/proc/<pid>/environ)
    desk.extra_env.update(ORCH_SANDBOX="none", ORCH_PROCESS_LIMITS="none")
    yield desk
    if desk.process and desk.process.returncode is None:
        desk.process.kill()
        await desk.process.wait()


async def _connect_each(ports: list[int], user: str, password: str, timeout: float = 30) -> None:
    """``user`` logs in to every node on its own (no fail-over to hide a node that refuses it)."""
    for port in ports:

        async def accepted(port: int = port) -> bool:
            try:
                nc = await open_connection(
                    f"nats://127.0.0.1:{port}", forever=False, connect_timeout=2, user=user, password=password
                )
            except Exception:  # noqa: BLE001 - not reloaded yet: asked again, bounded
                return False
            await nc.close()
            return True

        await poll(accepted, f"{user} accepted by the node on port {port}", timeout=timeout)


def _strategy_password(pid: int) -> str:
    """NATS_PASSWORD from the strategy process's environment (the orchestrator gives it nowhere else)."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    found = dict(item.decode().split("=", 1) for item in environ if b"=" in item)
    assert found.get("NATS_USER") == f"strategy-{STRATEGY}", found.get("NATS_USER")
    return found["NATS_PASSWORD"]


async def _streams_r3(nc: Client) -> dict[str, Any]:
    """ORDERS and EXECUTIONS R3 with a leader and two current followers (None until they are)."""
    js = nc.jetstream()
    for name in (subjects.STREAM_ORDERS, subjects.STREAM_EXECUTIONS):
        try:
            info = await js.stream_info(name)
        except Exception:  # noqa: BLE001 - an election under way: asked again, bounded
            return {}
        replicas = (info.cluster.replicas if info.cluster else None) or []
        if info.config.num_replicas != NODES or not info.cluster or not info.cluster.leader:
            return {}
        if len(replicas) != NODES - 1 or not all(r.current for r in replicas):
            return {}
    return {"ok": True}


async def _new_fill(executions: asyncio.Queue[Any], after: datetime, timeout: float = 90) -> None:
    """Until a fill of the strategy stored in EXECUTIONS after ``after`` (the stream's own time)."""
    async with asyncio.timeout(timeout):
        while True:
            msg = await executions.get()
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            if msg.metadata.timestamp > after and report.strategy_id == STRATEGY and report.exec_type in FILL_TYPES:
                return


def _running(desk: DeskUp) -> dict[str, Any] | None:
    status = desk.cli("status")
    found = [s for s in status["strategies"] if s["strategy_id"] == STRATEGY]
    return found[0] if found and found[0]["state"] == "running" and found[0]["pid"] else None


async def test_desk_up_cluster_3_r3_identities_on_every_node_fail_over_and_restart(desk: DeskUp) -> None:
    await desk.start()
    banner = "".join(desk.output)
    assert desk.servers in banner, banner[-2000:]
    assert len(desk.nats_pids()) == NODES

    nc = await nats.connect(servers=desk.urls.split(","))
    try:
        await poll(lambda: _streams_r3(nc), "ORDERS and EXECUTIONS R3 with two current followers", timeout=90)
        provisioned = {d["name"]: d for d in desk.cli("provision", "--replicas", str(NODES))}
        assert provisioned["ORDERS"]["replicas"] == provisioned["EXECUTIONS"]["replicas"] == NODES
        assert {d["action"] for d in provisioned.values()} == {"unchanged"}, provisioned  # desk up made them R3

        # `desk status` through the server list; the strategy's own user logs in to every node
        before = await poll(lambda: _running(desk), f"{STRATEGY} RUNNING", timeout=90)
        await _connect_each(desk.ports, f"strategy-{STRATEGY}", _strategy_password(int(before["pid"])))

        # a member added now (a reload of every node) logs in to every node too
        credential = desk.data_dir / "member-erin.json"
        desk.cli("member", "add", "erin", "--out", str(credential))
        login = json.loads(credential.read_text())
        assert login["url"] == desk.servers
        await _connect_each(desk.ports, login["user"], login["password"])

        executions = await follow_executions(nc)
        await _new_fill(executions, datetime.fromtimestamp(0, UTC))

        # kill -9 the first node (every client's first server): the strategy fails over, keeps trading
        killed, killed_at = desk.nats_pids()[0], datetime.now(UTC)
        os.kill(killed, signal.SIGKILL)
        await _new_fill(executions, killed_at)
        after = await poll(lambda: _running(desk), f"{STRATEGY} RUNNING after the node's loss", timeout=60)
        assert after["pid"] == before["pid"] and after["restarts"] == before["restarts"], (before, after)
        # n1 may have been the meta leader: the JetStream API answers once another is elected (retried)
        fills = await retrying(lambda: stream_fills(nc), what="EXECUTIONS after the node's loss", deadline=60)
        assert fills
    finally:
        await nc.close()

    assert await desk.interrupt() == 0, "".join(desk.output[-40:])

    # the same data dir again: the stores are reused, every stream still R3, the fills still there
    await desk.start()
    assert killed not in desk.nats_pids()
    nc = await nats.connect(servers=desk.urls.split(","))
    try:
        await poll(lambda: _streams_r3(nc), "ORDERS and EXECUTIONS R3 again after the restart", timeout=90)
        again = await stream_fills(nc)
        assert set(fills) <= set(again), "fills of the first run lost"
        provisioned = {d["name"]: d for d in desk.cli("provision", "--replicas", str(NODES))}
        assert {d["action"] for d in provisioned.values()} == {"unchanged"}, provisioned
    finally:
        await nc.close()
    assert await desk.interrupt() == 0, "".join(desk.output[-40:])
