"""compose.cluster.yaml under a real Docker engine: three clustered nats-servers, two of each service.

The stack comes up with every stream R3; a strategy trades (a market order of one share on each AAPL
bar, one at a time) and both ledgers book its fills; then `docker kill` of the active gateway (the
holder of `gateway-sim` in DESK_LEASES) and of one nats node: orders are still accepted and filled,
a member added meanwhile reloads the two running nodes, the node comes back, accepts that member's
login (the shared users file) and every stream is R3 with every replica current again; at the end 0 lost, 0
duplicated and the two ledgers' books equal to each other and to EXECUTIONS. The dashboards are not
started here (two more Python processes on a 2-core box; the test reads the books itself).
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, subjects
from desk.v1 import executions_pb2
from tests.docker.conftest import ROOT, compose_command, docker
from tests.support import free_port, poll, stream_fills, write_strategy

pytestmark = pytest.mark.docker

PROJECT = "quantdesk-cluster-test"
NODES = ("nats1", "nats2", "nats3")
STRATEGY = "cluster_trader"
MEMBER = "member_cluster"
# Started by the test: everything but the dashboards.
STARTED = [
    *[f"{s}-{x}" for s in ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator") for x in "ab"]
]
SERVICES = ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator")
STREAMS = (subjects.STREAM_EXECUTIONS, subjects.STREAM_ORDERS, f"KV_{subjects.KV_LEASES}")

TRADER = """
from decimal import Decimal
from strategy_sdk import Strategy

class Trader(Strategy):
    async def on_bar(self, bar):
        if bar.symbol != "AAPL" or self.open_orders:
            return
        held = self.position("AAPL")
        result = await (self.sell("AAPL", held) if held > 0 else self.buy("AAPL", Decimal(1)))
        self.log.info("order %s", "accepted" if result.accepted else f"{result.reason} {result.message}")
"""


@dataclass
class ClusterDesk:
    ports: dict[str, int]
    env: dict[str, str]
    credentials: dict[str, str] = field(default_factory=dict)
    up_at: float = 0.0  # when `compose up` was started (monotonic)

    @property
    def servers(self) -> list[str]:
        return [f"nats://127.0.0.1:{self.ports[node]}" for node in NODES]

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "compose.cluster.yaml"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def container(self, service: str) -> str:
        """The container id of a compose service."""
        ids = self.compose("ps", "-q", service).stdout.split()
        assert len(ids) == 1, (service, ids)
        return ids[0]

    def desk(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The desk CLI on the host, given the three nodes and the admin credentials."""
        path = Path(self.env["DESK_STRATEGIES_DIR"]).parent / "cli.json"
        path.write_text(json.dumps(self.credentials))
        return subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "desk"),
                "--nats-url",
                ",".join(self.servers),
                "--credentials",
                str(path),
                *args,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    async def connect(self, servers: list[str] | None = None, **options: object) -> Client:
        async def quiet(exc: Exception) -> None:
            pass

        return await nats.connect(
            servers or self.servers,
            user=self.credentials["user"],
            password=self.credentials["password"],
            error_cb=quiet,
            **options,
        )


@pytest.fixture(scope="module")
def cluster_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterDesk]:
    images = docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    missing = {"quantdesk/service:latest", "quantdesk/strategy:latest", "quantdesk/nats:latest"} - set(images)
    assert not missing, f"images missing, run `make build OFFLINE=1`: {sorted(missing)}"
    strategies = tmp_path_factory.mktemp("cluster") / "strategies"
    strategies.mkdir()
    write_strategy(strategies / STRATEGY, MEMBER, TRADER, symbols=["AAPL"], initial_cash="100000")
    strategies.chmod(0o755)
    ports = {node: free_port() for node in NODES}
    env = {
        **os.environ,
        "DESK_STRATEGIES_DIR": str(strategies),
        "NATS_PORT": str(ports["nats1"]),
        "NATS2_PORT": str(ports["nats2"]),
        "NATS3_PORT": str(ports["nats3"]),
        "NATS_MONITOR_PORT": str(free_port()),
        "NATS2_MONITOR_PORT": str(free_port()),
        "NATS3_MONITOR_PORT": str(free_port()),
        "LEAF_PORT": str(free_port()),
        "LEAF2_PORT": str(free_port()),
        "LEAF3_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "DASHBOARD_B_PORT": str(free_port()),
        "MD_SYMBOLS": "AAPL",
        "MD_INTERVAL": "0.5",
        "BROKER": "sim",
    }
    desk = ClusterDesk(ports, env)
    remove_strategy_leftovers()
    desk.compose("down", "--volumes", "--remove-orphans", check=False)
    try:
        desk.up_at = time.monotonic()
        up = desk.compose("up", "-d", *STARTED, check=False)
        assert up.returncode == 0, up.stderr
        creds = desk.compose(
            "run", "--rm", "--no-deps", "-T", "nats-auth", "python", "-m", "desk.bus.auth", "cli-credentials", "/auth"
        )
        desk.credentials = json.loads(creds.stdout.strip().splitlines()[-1])
        yield desk
    finally:
        logs = desk.compose("logs", "--no-color", "--tail", "25", check=False)
        print(logs.stdout[-30000:])
        desk.compose("down", "--volumes", "--remove-orphans", check=False)
        remove_strategy_leftovers()
        left = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}")
        assert not left, f"volumes left after down --volumes: {left}"


async def replicated(nc: Client) -> dict[str, str]:
    """Each stream's replication, '' when it is R3 with a leader and two current followers."""
    js = nc.jetstream()
    state = {}
    for name in STREAMS:
        try:
            info = await js.stream_info(name)
        except Exception as exc:  # noqa: BLE001 - an election in progress: not yet
            state[name] = repr(exc)
            continue
        cluster = info.cluster
        followers = [r for r in (cluster.replicas or [])] if cluster else []
        if info.config.num_replicas != 3 or cluster is None or not cluster.leader:
            state[name] = f"R{info.config.num_replicas}, leader {cluster.leader if cluster else None}"
        elif len(followers) != 2 or not all(r.current and not r.offline for r in followers):
            state[name] = f"followers {[(r.name, r.current, r.offline) for r in followers]}"
        else:
            state[name] = ""
    return state


async def ping_all(nc: Client) -> bool:
    for name in SERVICES:
        try:
            await nc.request(f"$SRV.PING.{name}", b"", timeout=3)
        except Exception:  # noqa: BLE001 - not serving yet
            return False
    return True


async def holder(nc: Client, key: str) -> str:
    """The container (hostname) holding ``key`` in DESK_LEASES."""
    entry = await (await nc.jetstream().key_value(subjects.KV_LEASES)).get(key)
    assert entry.value is not None
    return str(json.loads(entry.value)["host"])


def service_of(container_id: str) -> str:
    return docker("inspect", "-f", '{{index .Config.Labels "com.docker.compose.service"}}', container_id)


def remove_strategy_leftovers() -> None:
    """This test's strategy container and network, if a run left them (nothing of another stack)."""
    subprocess.run(["docker", "rm", "-f", f"quantdesk-strategy-{STRATEGY}"], capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", f"quantdesk-s-{STRATEGY}"], capture_output=True, check=False)


def container_logs(container_id: str) -> str:
    """A container's output, stdout and stderr (the services log to stderr)."""
    result = subprocess.run(["docker", "logs", container_id], capture_output=True, text=True, check=True, timeout=60)
    return result.stdout + result.stderr


def reloads(container_id: str) -> list[dict[str, Any]]:
    """The orchestrator's ``nats.reloaded`` log entries, oldest first."""
    lines = container_logs(container_id).splitlines()
    return [json.loads(line) for line in lines if line.startswith("{") and '"nats.reloaded"' in line]


def hostname(container_id: str) -> str:
    return docker("inspect", "-f", "{{.Config.Hostname}}", container_id)


def ledger_fills(desk: ClusterDesk, service: str) -> list[tuple[str, str, str]]:
    """A ledger replica's booked fills of STRATEGY (execution id, order id, qty), from its own file."""
    code = (
        "import json, sqlite3; db = sqlite3.connect('file:/data/ledger.db?mode=ro', uri=True); "
        "print(json.dumps(db.execute('SELECT execution_id, order_id, qty FROM fills WHERE strategy_id = ? "
        f"ORDER BY execution_id', ('{STRATEGY}',)).fetchall()))"
    )
    out = docker("exec", desk.container(service), "python", "-c", code)
    return [(str(e), str(o), str(q)) for e, o, q in json.loads(out)]


@dataclass
class Fills:
    """The strategy's fills as the bus delivers them, with the time each arrived."""

    seen: list[tuple[float, executions_pb2.ExecutionReport]] = field(default_factory=list)

    async def on_msg(self, msg: Msg) -> None:
        report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
        if report.exec_type in (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL):
            self.seen.append((time.monotonic(), report))

    def since(self, moment: float) -> int:
        return sum(1 for at, _ in self.seen if at > moment)

    def longest_gap(self, begin: float, end: float) -> float:
        """The longest time without a fill between ``begin`` and ``end``, seconds."""
        times = [begin, *sorted(at for at, _ in self.seen if begin < at < end), end]
        return max(b - a for a, b in itertools.pairwise(times))


@pytest.fixture
async def admin(cluster_desk: ClusterDesk) -> AsyncIterator[Client]:
    nc = await poll(lambda: _try_connect(cluster_desk), "NATS answering on the three nodes", timeout=180)
    yield nc
    await nc.close()


async def _try_connect(desk: ClusterDesk) -> Client | None:
    try:
        return await desk.connect(connect_timeout=2, max_reconnect_attempts=-1, reconnect_time_wait=0.5)
    except Exception:  # noqa: BLE001 - the nodes are still starting
        return None


async def test_the_cluster_desk_trades_through_the_loss_of_its_gateway_and_a_nats_node(
    cluster_desk: ClusterDesk, admin: Client
) -> None:
    nc = admin
    await poll(lambda: ping_all(nc), "every service answering PING", timeout=240, every=1)
    up_s = time.monotonic() - cluster_desk.up_at
    state = await poll(lambda: _all_r3(nc), "every stream R3 with two current followers", timeout=120)
    assert state

    # every node has the strategy's user (the orchestrator reloaded all three) and the strategy trades
    fills = Fills()
    await nc.subscribe(subjects.EXEC.format(strategy_id=STRATEGY), cb=fills.on_msg)
    await poll(lambda: fills.since(0) >= 6, "the strategy's first fills", timeout=240, every=0.5)
    orchestrator = await holder(nc, "orchestrator")
    active_orch = next(c for c in _containers(cluster_desk, "orchestrator") if hostname(c) == orchestrator)
    reloaded = reloads(active_orch)
    assert reloaded, "the orchestrator reloaded no NATS container"
    network = json.loads(docker("network", "inspect", "-f", "{{json .Containers}}", f"quantdesk-s-{STRATEGY}"))
    on_network = " ".join(c["Name"] for c in network.values())
    assert all(f"_{n}_" in on_network or f"-{n}-" in on_network for n in NODES), on_network
    assert all(any(f"_{n}_" in c or f"-{n}-" in c for c in reloaded[-1]["containers"]) for n in NODES), reloaded

    # the active gateway killed: its standby takes the lease and orders go on being filled
    gateway_host = await holder(nc, "gateway-sim")
    gateway = next(c for c in _containers(cluster_desk, "broker_gateway") if hostname(c) == gateway_host)
    killed_gateway_at = time.monotonic()
    docker("kill", gateway)
    await poll(
        lambda: _held_by_other(nc, "gateway-sim", gateway_host), "the standby gateway holding the lease", timeout=60
    )
    lease_s = time.monotonic() - killed_gateway_at
    await poll(lambda: fills.since(killed_gateway_at) >= 6, "fills after the gateway's loss", timeout=90, every=0.5)
    gateway_gap_s = fills.longest_gap(killed_gateway_at, time.monotonic())

    # a nats node killed (not the one leading DESK_LEASES: that case is the failover suite's)
    leases = await nc.jetstream().stream_info(f"KV_{subjects.KV_LEASES}")
    assert leases.cluster is not None
    node = next(n for n in NODES if n != leases.cluster.leader)
    node_container = cluster_desk.container(node)
    killed_node_at = time.monotonic()
    docker("kill", node_container)
    await poll(lambda: fills.since(killed_node_at) >= 6, f"fills with {node} down", timeout=120, every=0.5)
    node_gap_s = fills.longest_gap(killed_node_at, time.monotonic())
    # a member added with the node down: the two running nodes are reloaded, the third is not signalled
    before = len(reloads(active_orch))
    member_file = Path(cluster_desk.env["DESK_STRATEGIES_DIR"]).parent / "carla.json"
    added = cluster_desk.desk("member", "add", "carla", "--out", str(member_file))
    assert added.returncode == 0, added.stderr
    last = await poll(lambda: reloads(active_orch)[before:], "the reload for the new member", timeout=30, every=0.5)
    assert len(last[-1]["containers"]) == 2, last
    assert not any(f"_{node}_" in c or f"-{node}-" in c for c in last[-1]["containers"]), last
    docker("start", node_container)
    started_at = time.monotonic()
    docker("start", gateway)  # back as the standby
    await poll(lambda: _all_r3(nc), f"every stream R3 and current after {node} returned", timeout=120)
    returned_at = time.monotonic()
    current_s = returned_at - started_at
    # the node that was down read the shared users file when it started: the member's login works there
    member = json.loads(member_file.read_text())
    alone = await nats.connect(
        f"nats://127.0.0.1:{cluster_desk.ports[node]}",
        user=member["user"],
        password=member["password"],
        max_reconnect_attempts=0,
        connect_timeout=5,
    )
    await alone.close()
    await poll(lambda: fills.since(returned_at) >= 4, "fills after the node returned", timeout=90, every=0.5)

    # the strategy stopped, every accepted order must be filled once and booked by both ledgers
    stopped = cluster_desk.desk("stop", STRATEGY)
    assert stopped.returncode == 0, stopped.stderr
    accepted = await _accepted_orders(nc)
    rows = await poll(lambda: _filled(nc, accepted), "every accepted order filled", timeout=90, every=1)
    pairs = sorted((e, o) for e, o, _ in rows)
    books = await poll(
        lambda: _both_booked(cluster_desk, {e for e, _ in pairs}),
        "both ledgers booking every fill",
        timeout=90,
        every=1,
    )
    lost = accepted - {o for _, o in pairs}
    quantity: collections.Counter[str] = collections.Counter()
    for _, order_id, qty in rows:
        quantity[order_id] += int(Decimal(qty))
    duplicated = [oid for oid, filled in quantity.items() if filled > 1]  # every order is of one share
    print(
        f"\ncompose cluster: up and answering after {up_s:.0f} s; {len(accepted)} orders accepted, {len(rows)} fills, lost {len(lost)}, "
        f"duplicated {len(duplicated)}; killed {service_of(gateway)}: standby held the lease after "
        f"{lease_s:.1f} s, longest time without a fill {gateway_gap_s:.1f} s; killed {node}: longest time "
        f"without a fill {node_gap_s:.1f} s; {node} back: every stream R3 and current after {current_s:.1f} s"
    )
    assert len(accepted) >= 18
    assert not lost and not duplicated
    assert books["ledger-a"] == books["ledger-b"] == pairs
    assert await _all_r3(nc)


async def _all_r3(nc: Client) -> dict[str, str] | None:
    state = await replicated(nc)
    return None if any(state.values()) else state or None


def _containers(desk: ClusterDesk, service: str) -> list[str]:
    return [desk.container(f"{service}-{x}") for x in "ab"]


async def _held_by_other(nc: Client, key: str, old: str) -> bool:
    try:
        return await holder(nc, key) != old
    except Exception:  # noqa: BLE001 - no holder yet (the key expired, the standby not in)
        return False


async def _accepted_orders(nc: Client) -> set[str]:
    """The order ids the routers accepted for STRATEGY (their acks in DESK_ORDER_IDS)."""
    from desk.v1 import orders_pb2

    kv = await nc.jetstream().key_value(subjects.KV_ORDER_IDS)
    accepted = set()
    for key in await kv.keys():
        if key.startswith(f"{STRATEGY}."):
            entry = await kv.get(key)
            ack = codec.decode(entry.value or b"", orders_pb2.OrderAck)
            assert ack.accepted
            accepted.add(ack.order_id)
    return accepted


async def _filled(nc: Client, accepted: set[str]) -> list[tuple[str, str, str]] | None:
    fills = [f for f in (await stream_fills(nc)).values() if f.strategy_id == STRATEGY]
    rows = [(f.execution_id, f.order_id, f.fill_qty) for f in fills]
    return rows if accepted <= {o for _, o, _ in rows} else None


def _both_booked(desk: ClusterDesk, execution_ids: set[str]) -> dict[str, list[tuple[str, str]]] | None:
    books = {s: sorted((e, o) for e, o, _ in ledger_fills(desk, s)) for s in ("ledger-a", "ledger-b")}
    return books if all({e for e, _ in rows} >= execution_ids for rows in books.values()) else None
