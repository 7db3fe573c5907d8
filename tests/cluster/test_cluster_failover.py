"""Active/standby on a 3-node cluster: two instances of market data, the sim gateway, the ledger and the
orchestrator, each its own OS process; under a steady order load the active instance of each is killed
with SIGKILL in turn, and the standby must take over.

Market data, the gateway and the orchestrator run behind their lease (``SERVICE_LEASE=true``, the
provisioned ``DESK_LEASES`` TTL of 5 s: desk.bus.lease); the two ledgers are replicas, each its own
SQLite file and its own consumer (``LEDGER_INSTANCE``), both answering reads. Two routers share the
strategies' partitions (services/order_router/partitions.py: a lease ``router-p<i>`` each); killing
the one that holds the load strategy's partition moves it to the other. A test strategy sends market orders of one share at a steady rate, re-sent with the
same client order id when unanswered (tests/cluster/test_cluster_faults.py's load). Per fault: 40
orders accepted, kill -9 of the active instance, the standby serving (its lease held, its micro
service answering; the ledger: a read answered), the killed instance started again (now the standby),
40 more orders. Then: 0 lost (every accepted order filled and booked once, by both ledgers), 0
duplicated, both ledgers' books equal to each other and to EXECUTIONS, and a table per fault: failover
time (kill -> the standby serving), the longest gap in accepted orders and in fills (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import sqlite3
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import kv as desk_kv
from desk.bus import streams, subjects
from desk.bus.process import wait_until_serving
from desk.bus.request import request
from desk.bus.testing import NatsCluster
from desk.core.partition import partition_of
from desk.v1 import ledger_pb2, strategy_pb2
from services.order_router.partitions import partition_key
from services.order_router.settings import Settings as RouterSettings
from tests.cluster.instances import ServiceProcess, lease_holder, wait_holder
from tests.cluster.test_cluster_faults import Load, stream_names, wait_current
from tests.faults.harness import SYMBOLS, Broker, read_executions, spec
from tests.support import poll

pytestmark = pytest.mark.cluster

BEFORE, AFTER = 40, 40  # accepted orders before the kill, and after the killed instance is back as standby
BOUND = 60.0  # seconds any one wait may take
PARTITIONS = RouterSettings.model_fields["router_partitions"].default
#: service -> (module, micro service name, lease key); the ledger has no lease (replicas).
SERVICES = {
    "marketdata": ("marketdata", "marketdata", "marketdata"),
    "gateway": ("broker_gateway", "broker_gateway", "gateway-sim"),
    "ledger": ("ledger", "ledger", ""),
    "orchestrator": ("orchestrator", "orchestrator", "orchestrator"),
    # the lease of the partition of this phase's strategy (fo-router): held by one of the two routers
    "router": ("order_router", "order_router", partition_key(partition_of("fo-router", PARTITIONS))),
}
#: what an instance that has started as the second of its pair logs once it is ready
READY_EVENT = {"ledger": "ledger.ready", "router": "partitions.joined"}


@dataclass
class Failover:
    service: str
    killed: str  # instance name and pid
    load: Load
    lease_s: float = 0.0  # kill -> the standby holds the lease
    serving_s: float = 0.0  # kill -> the standby serving (micro PING / a ledger read answered)
    gap_ms: float = 0.0  # the longest time between two accepted orders of the phase
    fill_gap_ms: float = 0.0  # the longest time between two fills reported during the phase
    step_downs: dict[str, int] = field(default_factory=dict)  # instances that stepped down (exit 1) meanwhile


class Fills:
    """Arrival times of every execution report on the bus (a core subscription: what the gateway sent)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    async def on_msg(self, msg: Msg) -> None:
        self.times.append(time.monotonic())

    def longest_gap_ms(self, begin: float, end: float) -> float:
        inside = [t for t in self.times if begin <= t <= end]
        return max((b - a for a, b in itertools.pairwise([begin, *inside])), default=0.0) * 1000


class Supervisor:
    """What compose's ``restart:`` or systemd does: an instance that exited 1 (it stepped down: its lease
    lost) is started again, as a standby. kill -9 (exit -9) is the test's own, restarted by the phase."""

    def __init__(self, procs: dict[str, list[ServiceProcess]]) -> None:
        self.procs = procs
        self.step_downs: collections.Counter[str] = collections.Counter()
        self.task: asyncio.Task[None] | None = None

    async def run(self) -> None:
        while True:
            for service, pair in self.procs.items():
                for proc in pair:
                    if proc.exited() and proc.process is not None and proc.process.returncode == 1:
                        self.step_downs[service] += 1
                        await proc.start()
            await asyncio.sleep(0.1)  # a supervisor's pace (compose checks exits as they happen)


def instances(url: str, data: Path) -> dict[str, list[ServiceProcess]]:
    common = {"SERVICE_LEASE": "true"}
    envs = {
        "marketdata": {"MD_FEED": "synthetic", "MD_SYMBOLS": ",".join(SYMBOLS), "MD_INTERVAL": "0.25"},
        "gateway": {"BROKER": "sim", "GATEWAY_ACK_WAIT": "5"},
        "orchestrator": {
            "ORCH_STRATEGIES_DIR": str(data / "strategies"),
            "ORCH_AUTODEPLOY": "false",
            "ORCH_LOG_DIR": str(data / "orch-logs"),
        },
    }
    (data / "strategies").mkdir(parents=True, exist_ok=True)
    out: dict[str, list[ServiceProcess]] = {}
    for service, (module, _, _) in SERVICES.items():
        out[service] = []
        for instance in ("a", "b"):
            env = {**common, **envs.get(service, {})}
            if service == "ledger":
                env |= {"LEDGER_INSTANCE": instance, "LEDGER_DB_PATH": str(data / f"ledger-{instance}.db")}
            out[service].append(ServiceProcess(module, instance, url, data, env))
    return out


def logged_count(proc: ServiceProcess, event: str) -> int:
    with contextlib.suppress(OSError):
        return proc.log.read_text(errors="replace").count(f'"event": "{event}"')
    return 0


async def start_pair(nc: Client, service: str, pair: list[ServiceProcess]) -> float | None:
    """The first instance active (serving), then the second: a standby (a replica for the ledger).
    Returns what acquiring the free lease took the first (its ``service.active`` log line), in ms."""
    _, micro, key = SERVICES[service]
    first, second = pair
    await first.start()
    if key:
        await wait_holder(nc.jetstream(), key, first.instance, BOUND)
    assert await wait_until_serving(nc, micro, BOUND, first.exited), first.tail()
    await standby_ready(service, second)
    for line in first.log.read_text(errors="replace").splitlines():
        if '"service.active"' in line:
            return float(json.loads(line)["waited_s"]) * 1000
    return None


async def standby_ready(service: str, proc: ServiceProcess) -> None:
    await proc.start()
    event = READY_EVENT.get(service, "lease.standby")
    seen = logged_count(proc, event)  # a restarted instance appends to its log
    await poll(
        lambda: logged_count(proc, event) > seen or proc.exited(), f"{service} {proc.instance}: {event}", timeout=BOUND
    )
    assert not proc.exited(), proc.tail()


async def ledger_answers(nc: Client) -> bool:
    with contextlib.suppress(Exception):
        await request(nc, subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(limit=1), ledger_pb2.PnlReply, timeout=1)
        return True
    return False


async def run_failover(nc: Client, service: str, pair: list[ServiceProcess], fills: Fills) -> Failover:
    _, micro, key = SERVICES[service]
    js = nc.jetstream()
    load = Load(f"fo-{service}")
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(nc, stop), name=f"load.{service}")
    begin = time.monotonic()
    try:
        await load.reach(BEFORE, "before the kill")
        if key:
            holder = await lease_holder(js, key)
            assert holder is not None, f"nobody holds {key}"
            active = next(p for p in pair if p.instance == holder.instance)
        else:
            active = pair[0]
        standby = next(p for p in pair if p is not active)
        failover = Failover(service, f"{active.instance} (pid {active.pid})", load)
        killed = time.monotonic()
        await active.kill()  # kill -9
        if key:
            failover.lease_s = await wait_holder(js, key, standby.instance, BOUND) - killed
            assert await wait_until_serving(nc, micro, BOUND, standby.exited, pause=0.05), standby.tail()
        else:
            await poll(lambda: ledger_answers(nc), "a ledger read answered by the other replica", timeout=BOUND)
        failover.serving_s = time.monotonic() - killed
        await load.reach(len(load.acked_at) + 10, f"with {service} {active.instance} killed")
        await standby_ready(service, active)  # the killed instance back: the standby now
        await load.reach(len(load.acked_at) + AFTER, f"after {service} {active.instance} is back")
        assert not standby.exited(), standby.tail()
    finally:
        stop.set()
        await asyncio.wait_for(sender, BOUND)
    failover.gap_ms = load.longest_gap_ms()
    failover.fill_gap_ms = fills.longest_gap_ms(begin, time.monotonic())
    return failover


Books = tuple[list[tuple[str, str, str, str, str]], list[tuple[str, str, str]]]


async def run_lease_leader(
    nc: Client, cluster: NatsCluster, names: list[str], fills: Fills, supervisor: Supervisor
) -> Failover:
    """kill -9 of the nats node leading DESK_LEASES' stream: renewals fail until a new leader is elected."""
    js = nc.jetstream()
    load = Load("fo-lease-leader")
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(nc, stop), name="load.lease_leader")
    begin = time.monotonic()
    before = collections.Counter(supervisor.step_downs)
    try:
        await load.reach(BEFORE, "before the kill")
        info = await js.stream_info(f"KV_{subjects.KV_LEASES}")
        assert info.cluster is not None and info.cluster.leader
        node = info.cluster.leader
        led = []
        for name in names:  # what else the node leads: ORDERS' election stops orders too (docs/cluster.md)
            with contextlib.suppress(Exception):
                other = await js.stream_info(name)
                if name != info.config.name and other.cluster and other.cluster.leader == node:
                    led.append(name.removeprefix("KV_DESK_").removeprefix("KV_"))
        failover = Failover("lease leader", f"node {node}" + (f" (+{','.join(led)})" if led else ""), load)
        server = cluster.server_named(node)
        killed = time.monotonic()
        await asyncio.to_thread(server.kill)  # kill -9
        await poll(lambda: _lease_led(nc, node), "a new DESK_LEASES leader", timeout=BOUND)
        failover.lease_s = time.monotonic() - killed
        await _all_active(nc)
        failover.serving_s = time.monotonic() - killed
        await load.reach(len(load.acked_at) + 10, f"with {node} (DESK_LEASES leader) down")
        await asyncio.to_thread(server.start)  # same port, same store
        await wait_current(js, cluster, names)
        await load.reach(len(load.acked_at) + AFTER, f"after {node} is back")
        await _all_active(nc)
    finally:
        stop.set()
        await asyncio.wait_for(sender, BOUND)
    failover.gap_ms = load.longest_gap_ms()
    failover.fill_gap_ms = fills.longest_gap_ms(begin, time.monotonic())
    failover.step_downs = dict(supervisor.step_downs - before)
    return failover


async def _lease_led(nc: Client, dead: str) -> bool:
    with contextlib.suppress(Exception):
        info = await nc.jetstream().stream_info(f"KV_{subjects.KV_LEASES}")
        return bool(info.cluster and info.cluster.leader and info.cluster.leader != dead)
    return False


async def _all_active(nc: Client) -> None:
    """Every leased service held and answering (bounded)."""
    for service, (_, micro, key) in SERVICES.items():
        if key:
            await poll(lambda key=key: lease_holder(nc.jetstream(), key), f"{key} held", timeout=BOUND)  # type: ignore[misc]
            assert await wait_until_serving(nc, micro, BOUND, lambda: False, pause=0.05), f"{service} not serving"


def booked(path: Path) -> Books:
    """A ledger file's fills (execution id, order id, strategy, symbol, qty) and positions, read with sqlite3."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
        fills = db.execute(
            "SELECT execution_id, order_id, strategy_id, symbol, qty FROM fills ORDER BY execution_id"
        ).fetchall()
        positions = db.execute("SELECT strategy_id, symbol, qty FROM positions ORDER BY strategy_id, symbol").fetchall()
    return fills, positions


async def all_booked(nc: Client, count: int) -> bool:
    """Both replicas' consumers have every execution acked (``count`` messages in EXECUTIONS)."""
    js = nc.jetstream()
    for durable in ("ledger-a", "ledger-b"):
        try:
            info = await js.consumer_info(subjects.STREAM_EXECUTIONS, durable)
        except Exception:  # noqa: BLE001 - an election: asked again
            return False
        if info.num_pending or info.num_ack_pending or (info.ack_floor.stream_seq if info.ack_floor else 0) < count:
            return False
    return True


async def test_kill_9_the_active_instance_of_each_service_under_order_load(
    cluster: NatsCluster, nc: Client, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    js = nc.jetstream()
    await streams.provision(js, replicas=3)  # DESK_LEASES too, R3, max_age 5 s
    names = await stream_names(js)
    for strategy in [*(f"fo-{service}" for service in SERVICES), "fo-lease-leader"]:
        await desk_kv.put(js, subjects.KV_STRATEGIES, strategy, spec(strategy), deadline=BOUND)
    procs = instances(cluster.url, tmp_path)
    fills = Fills()
    supervisor = Supervisor(procs)
    exec_sub = await nc.subscribe(subjects.EXEC_ALL, cb=fills.on_msg)
    failovers: list[Failover] = []
    acquired: dict[str, float | None] = {}
    try:
        began = time.monotonic()
        for service in ("marketdata", "ledger", "gateway", "orchestrator", "router"):
            acquired[service] = await start_pair(nc, service, procs[service])
        started_s = time.monotonic() - began
        await wait_current(js, cluster, names)
        supervisor.task = asyncio.create_task(supervisor.run(), name="supervisor")
        for service in SERVICES:
            failovers.append(await run_failover(nc, service, procs[service], fills))
        assert not supervisor.step_downs, f"an instance stepped down on a kill -9 of another: {supervisor.step_downs}"
        failovers.append(await run_lease_leader(nc, cluster, names, fills, supervisor))
        status = await request(
            nc, subjects.CTL_STATUS, strategy_pb2.StrategyControl(), strategy_pb2.StrategyStatusList, timeout=10
        )
        assert list(status.strategies) == []  # the orchestrator answering after its failover
        broker = await poll(
            lambda: _settled(nc, failovers), "every accepted order filled in EXECUTIONS", timeout=BOUND, every=0.5
        )
        stream_count = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
        await poll(lambda: all_booked(nc, stream_count), "both ledgers booking everything", timeout=BOUND, every=0.5)
    finally:
        if supervisor.task is not None:
            supervisor.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor.task
        await exec_sub.unsubscribe()
        for pair in procs.values():
            for proc in pair:
                await proc.stop()
    books = {i: booked(tmp_path / f"ledger-{i}.db") for i in ("a", "b")}
    table, problems = _report(failovers, broker, books, started_s)
    table += "\nacquiring a free lease at start (ms): " + ", ".join(
        f"{k} {v:.0f}" for k, v in acquired.items() if v is not None
    )
    pytestconfig.pluginmanager.register(_Summary(table), "cluster-failover-table")  # shown without -s too
    assert not problems, "\n".join([table, *problems])


async def _settled(nc: Client, failovers: list[Failover]) -> Broker | None:
    broker = await read_executions(nc, timeout=BOUND, settled=False)
    done = all(oid in broker.orders and broker.orders[oid].fills > 0 for f in failovers for oid in f.load.qty)
    return broker if done else None


def _report(
    failovers: list[Failover], broker: Broker, books: dict[str, Books], started_s: float
) -> tuple[str, list[str]]:
    problems: list[str] = []
    fills_a, positions_a = books["a"]
    if books["a"] != books["b"]:
        problems.append(f"the two ledgers' books differ: {len(fills_a)} fills vs {len(books['b'][0])}")
    twice = [e for e, n in broker.execution_ids.items() if n > 1]
    if twice:
        problems.append(f"execution ids twice in EXECUTIONS: {twice[:10]}")
    stream_positions = {k: v for k, v in broker.positions.items() if v}
    ledger_positions = {(s, sym): Decimal(q) for s, sym, q in positions_a if Decimal(q)}
    if stream_positions != ledger_positions:
        problems.append(f"ledger positions {ledger_positions} != EXECUTIONS {stream_positions}")
    rows = []
    for f in failovers:
        sid = f.load.strategy_id
        per_order = collections.Counter(oid for _, oid, s, _, _ in fills_a if s == sid)
        lost = [oid for oid in f.load.qty if per_order[oid] == 0]
        duplicated = [oid for oid, n in per_order.items() if n > 1 or oid not in f.load.qty]
        if lost or duplicated:
            problems.append(f"{f.service}: lost {lost[:10]} duplicated {duplicated[:10]}")
        if f.load.figures.rejected:
            problems.append(f"{f.service}: refused for good {f.load.figures.rejected[:5]}")
        rows.append(
            f"{f.service:<13} {f.killed:<28} {f.lease_s:>7.2f} {f.serving_s:>9.2f} {f.load.figures.sent:>5} "
            f"{len(f.load.qty):>8} {sum(1 for oid in f.load.qty if per_order[oid]):>6} {len(lost):>4} "
            f"{len(duplicated):>5} {f.gap_ms:>8.0f} {f.fill_gap_ms:>11.0f}  {f.step_downs or ''} {dict(f.load.figures.retries)}"
        )
    header = (
        f"{'service':<13} {'killed':<28} {'lease s':>7} {'serving s':>9} {'sent':>5} {'accepted':>8} {'booked':>6} "
        f"{'lost':>4} {'dupl.':>5} {'gap ms':>8} {'fill gap ms':>11}  step-downs, retries (why)"
    )
    footer = f"(two instances of each started in {started_s:.1f} s; both ledgers: {len(fills_a)} fills, equal)"
    return "\n".join([header, *rows, footer]), problems


class _Summary:
    """Prints the failover table at the end of the run (a plugin registered by the test)."""

    def __init__(self, table: str) -> None:
        self.table = table

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_sep("=", "cluster failover: kill -9 of each active instance, 3 nodes, R3")
        terminalreporter.write_line(self.table)
