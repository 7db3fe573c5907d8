"""The desk rides out elections on a 3-node JetStream cluster: kill -9 a follower of ORDERS, the ORDERS
stream leader and the JetStream meta leader, one after another, under a steady order load.

Three real nats-servers (:class:`desk.bus.testing.NatsCluster`), every stream and bucket provisioned R3,
the router, the sim gateway and market data running in this process and the ledger as its own OS process
(killed with SIGKILL in a fourth phase), all on the server list (``NATS_URL`` = all three). A test strategy sends market orders of one share at a steady rate, one at a
time, each with its own client order id, and sends an order again with the SAME id when it is not
answered (timeout, no responders, ``INTERNAL``: the router could not route it during the election) —
idempotent by design. Each fault has its own strategy, so its books are its own.

Per node fault: the node is killed with SIGKILL, the desk must accept orders again with it down, the node is
started again on its store, and the phase ends once it is current again (every stream R3 with two
current followers, the meta group whole) and the load has gone on a little. Then, once the ledger has
booked everything: 0 lost (every accepted order has exactly one fill booked), 0 duplicated (no order
booked twice or over its quantity, no execution id twice in EXECUTIONS), the ledger's positions equal
the sum of its fills and of the EXECUTIONS stream, and a table per fault: orders sent, accepted, lost,
duplicated and the longest gap between accepted orders (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from desk.bus import kv as desk_kv
from desk.bus import streams, subjects
from desk.bus.process import die_with_parent, terminate, wait_until_serving
from desk.bus.request import request
from desk.bus.testing import InProcessService, NatsCluster, NatsServer, run_in_process
from desk.v1 import common_pb2, ledger_pb2, orders_pb2
from services.broker_gateway.service import NAME as GATEWAY
from services.broker_gateway.service import BrokerGatewayService
from services.broker_gateway.settings import Settings as GatewaySettings
from services.marketdata.service import NAME as MARKETDATA
from services.marketdata.service import MarketDataService
from services.marketdata.settings import Settings as MarketDataSettings
from services.order_router.service import NAME as ROUTER
from services.order_router.service import OrderRouterService
from services.order_router.settings import Settings as RouterSettings
from tests.faults.harness import SYMBOLS, read_executions, spec, submit
from tests.faults.harness import Figures as HarnessFigures
from tests.support import poll

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.cluster

RATE = 20.0  # orders per second, at the most (one at a time, as a strategy)
BEFORE = 40  # accepted orders before the kill (~2 s of load)
DOWN = 20  # accepted orders with the node down: the desk works without it
AFTER = 40  # accepted orders once the node is current again
BOUND = 60.0  # seconds any one wait of a phase may take
GATEWAY_DURABLE = "gateway-sim"  # the sim gateway's durable on ORDERS (services/order_router/venue.py)
FAULTS = ("follower", "stream_leader", "meta_leader", "ledger")  # three nodes, then the ledger process


@dataclass
class Load:
    """One strategy's orders: what was sent, what was accepted and when."""

    strategy_id: str
    figures: HarnessFigures = field(default_factory=HarnessFigures)
    acked_at: list[float] = field(default_factory=list)  # monotonic time of each accepted order's ack
    qty: dict[str, Decimal] = field(default_factory=dict)  # order id -> qty
    accepted: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def run(self, nc: Client, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        begin = loop.time()
        i = 0
        while not stop.is_set():
            wait = begin + i / RATE - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)  # load pacing, not synchronisation
                if stop.is_set():
                    return
            order = orders_pb2.OrderRequest(
                strategy_id=self.strategy_id,
                client_order_id=f"{self.strategy_id}-{i:06d}",
                symbol=SYMBOLS[i % len(SYMBOLS)],
                side=common_pb2.SIDE_BUY if (i // len(SYMBOLS)) % 3 != 2 else common_pb2.SIDE_SELL,
                type=common_pb2.ORDER_TYPE_MARKET,
                time_in_force=common_pb2.TIME_IN_FORCE_DAY,
                qty="1",
            )
            self.figures.sent += 1
            ack = await submit(nc, order, self.figures)  # the same client order id until answered
            i += 1
            if not ack.accepted:
                self.figures.rejected.append(
                    f"{order.client_order_id}: {orders_pb2.RejectReason.Name(ack.reason)} {ack.message[:160]}"
                )
                continue
            assert ack.order_id not in self.qty, f"order id {ack.order_id} acked for two client order ids"
            self.qty[ack.order_id] = Decimal(order.qty)
            async with self.accepted:
                self.acked_at.append(time.monotonic())
                self.accepted.notify_all()

    async def reach(self, count: int, what: str) -> None:
        async with self.accepted:
            try:
                await asyncio.wait_for(self.accepted.wait_for(lambda: len(self.acked_at) >= count), BOUND)
            except TimeoutError:
                raise AssertionError(
                    f"{self.strategy_id}: {count} orders accepted not within {BOUND:g} s "
                    f"({what}; {len(self.acked_at)} so far, retries {dict(self.figures.retries)})"
                ) from None

    def longest_gap_ms(self) -> float:
        times = self.acked_at
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0) * 1000


@dataclass
class Phase:
    fault: str
    node: str
    roles: str  # what the node was when it was killed
    load: Load
    killed_at: float = 0.0
    started_at: float = 0.0
    down_s: float = 0.0  # kill -> restarted
    current_s: float = 0.0  # restarted -> every stream current again
    gap_ms: float = 0.0  # the longest time between two accepted orders of the phase


class Ledger:
    """The ledger as its own OS process (``python -m services.ledger``), so it can be killed with SIGKILL."""

    def __init__(self, url: str, data: Path) -> None:
        self.url, self.data = url, data
        self.process: asyncio.subprocess.Process | None = None
        self.log = data / "ledger.log"

    async def start(self, nc: Client) -> None:
        env = {
            **os.environ,
            "NATS_URL": self.url,
            "LEDGER_DB_PATH": str(self.data / "ledger.db"),
            "LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            "DRAIN_TIMEOUT": "5",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])),
        }
        with self.log.open("ab") as handle:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.ledger",
                env=env,
                cwd=str(ROOT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        if not await wait_until_serving(nc, "ledger", BOUND, self.exited):
            raise AssertionError(f"the ledger is not serving (exit {self.process.returncode}):\n{self.tail()}")

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    async def kill(self) -> None:
        assert self.process is not None and not self.exited(), "the ledger is not running"
        os.kill(self.process.pid, signal.SIGKILL)
        assert await self.process.wait() == -signal.SIGKILL

    async def stop(self) -> None:
        if self.process is not None and not self.exited():
            await terminate(self.process, 20)

    def tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


async def start_desk(cluster: NatsCluster) -> list[InProcessService]:
    """Market data, sim gateway and router in this process, each given every server."""
    url = cluster.url
    started: list[InProcessService] = []
    try:
        md = MarketDataSettings(
            nats_url=url, md_feed="synthetic", md_symbols=",".join(SYMBOLS), md_interval=0.25, drain_timeout=5
        )
        started.append(await run_in_process(MARKETDATA, md, MarketDataService(md).start, timeout=BOUND))
        gateway = GatewaySettings(nats_url=url, broker="sim", drain_timeout=5)
        started.append(await run_in_process(GATEWAY, gateway, BrokerGatewayService(gateway).start, timeout=BOUND))
        router = RouterSettings(nats_url=url, drain_timeout=5)
        started.append(await run_in_process(ROUTER, router, OrderRouterService(router).start, timeout=BOUND))
    except BaseException:
        await stop_desk(started)
        raise
    return started


async def stop_desk(services: list[InProcessService]) -> None:
    for svc in reversed(services):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(svc.stop(), 30)


def check_running(services: list[InProcessService], ledger: Ledger) -> None:
    ended = [
        f"{s.name} (exit {s.task.result() if not s.task.cancelled() and s.task.exception() is None else s.task})"
        for s in services
        if s.task.done()
    ]
    assert not ended, f"a service ended during an election: {ended}"
    assert not ledger.exited(), (
        f"the ledger ended (exit {ledger.process.returncode if ledger.process else None}):\n{ledger.tail()}"
    )


async def stream_names(js: JetStreamContext) -> list[str]:
    names: list[str] = []
    for info in await js.streams_info():
        names.append(info.config.name or "")
    return sorted(names)


async def all_current(js: JetStreamContext, cluster: NatsCluster, names: list[str]) -> str | None:
    """None when every stream is R3 with a leader and two current followers and the meta group is
    whole; else what is not (yet)."""
    if not await asyncio.to_thread(cluster.meta_current):
        return "meta group"
    for name in names:
        try:
            info = await js.stream_info(name)
        except Exception as exc:  # noqa: BLE001 - an election still going on: asked again
            return f"{name}: {exc!r}"
        replicas = (info.cluster.replicas or []) if info.cluster else []
        if info.config.num_replicas != 3:
            return f"{name} has {info.config.num_replicas} replicas"
        if not (info.cluster and info.cluster.leader) or len(replicas) != 2 or not all(r.current for r in replicas):
            return (
                f"{name}: leader {info.cluster.leader if info.cluster else None}, "
                f"followers {[(r.name, r.current) for r in replicas]}"
            )
    return None


async def wait_current(js: JetStreamContext, cluster: NatsCluster, names: list[str]) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while (missing := await all_current(js, cluster, names)) is not None:
        assert loop.time() < deadline, f"the cluster not current within {BOUND:g} s: {missing}"
        await asyncio.sleep(0.25)  # polling what only /jsz and STREAM.INFO show, bounded


async def orders_leader(js: JetStreamContext) -> tuple[str, list[str]]:
    info = await js.stream_info(subjects.STREAM_ORDERS)
    assert info.cluster is not None and info.cluster.leader
    return info.cluster.leader, [r.name or "" for r in info.cluster.replicas or []]


async def move_orders_leader_off(nc: Client, js: JetStreamContext, node: str) -> None:
    """Step the ORDERS leader down until another node leads it (so each fault is the one it says)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + BOUND
    while (await orders_leader(js))[0] == node:
        assert loop.time() < deadline, f"ORDERS still led by {node} after {BOUND:g} s of step-downs"
        with contextlib.suppress(Exception):  # an election under way: asked again
            await nc.request(f"$JS.API.STREAM.LEADER.STEPDOWN.{subjects.STREAM_ORDERS}", b"", timeout=5)
        await poll(lambda: _has_leader(js), "a new ORDERS leader", timeout=BOUND)


async def _has_leader(js: JetStreamContext) -> bool:
    with contextlib.suppress(Exception):
        info = await js.stream_info(subjects.STREAM_ORDERS)
        return bool(info.cluster and info.cluster.leader)
    return False


async def pick(nc: Client, js: JetStreamContext, cluster: NatsCluster, names: list[str], fault: str) -> tuple[str, str]:
    """The node to kill for ``fault``, and what it is: the ORDERS follower is not the meta leader, the
    ORDERS leader is not the meta leader, the meta leader does not lead ORDERS (ORDERS' leader is
    stepped down when it has to be); the other streams it leads are listed."""
    meta = await poll(lambda: asyncio.to_thread(cluster.meta_leader), "a meta leader", timeout=BOUND)
    leader, followers = await orders_leader(js)
    if fault == "follower":
        node = next(f for f in followers if f != meta) if meta in followers or meta == leader else followers[0]
    elif fault == "stream_leader":
        if leader == meta:
            await move_orders_leader_off(nc, js, meta)
        node = (await orders_leader(js))[0]
    else:
        if leader == meta:
            await move_orders_leader_off(nc, js, meta)
        node = meta
    leader, followers = await orders_leader(js)
    roles = [
        r
        for r, n in (
            ("ORDERS follower", node in followers),
            ("ORDERS leader", node == leader),
            ("meta leader", node == meta),
        )
        if n
    ]
    led = []
    for name in names:
        if name != subjects.STREAM_ORDERS:
            with contextlib.suppress(Exception):
                info = await js.stream_info(name)
                if info.cluster and info.cluster.leader == node:
                    led.append(name.removeprefix("KV_DESK_").removeprefix("KV_"))
    for stream, durable in (
        (subjects.STREAM_ORDERS, GATEWAY_DURABLE),
        (subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE),
    ):
        with contextlib.suppress(Exception):
            consumer = await js.consumer_info(stream, durable)
            if consumer.cluster and consumer.cluster.leader == node:
                led.append(f"consumer {durable}")
    return node, " + ".join(roles) + (f"; leads {','.join(led)}" if led else "")


#: A ledger reply holds at most what fits in the desk's 64 KiB message (the oldest rows are left out):
#: ~300 fills. The fills are read per symbol, each read well under that; more rows than this in one
#: read would mean it may have been cut, and the test says so instead of counting fills as lost.
FILLS_PER_READ = 200


async def ledger_fills(nc: Client, strategy_id: str) -> list[ledger_pb2.Fill]:
    fills: list[ledger_pb2.Fill] = []
    for symbol in SYMBOLS:
        reply = await request(
            nc,
            subjects.LEDGER_FILLS,
            ledger_pb2.LedgerQuery(strategy_id=strategy_id, symbol=symbol, limit=1000),
            ledger_pb2.FillsReply,
            timeout=10,
        )
        assert len(reply.fills) < FILLS_PER_READ, f"{len(reply.fills)} fills of {symbol} in one read: it may be cut"
        fills.extend(reply.fills)
    return fills


async def ledger_positions(nc: Client) -> dict[tuple[str, str], Decimal]:
    reply = await request(
        nc, subjects.LEDGER_POSITIONS, ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.PositionsReply, timeout=10
    )
    return {(p.strategy_id, p.symbol): Decimal(p.qty) for p in reply.positions}


def strategy_of(fault: str) -> str:
    return f"cf-{fault.replace('_', '-')}"


async def run_phase(
    nc: Client, cluster: NatsCluster, services: list[InProcessService], ledger: Ledger, names: list[str], fault: str
) -> Phase:
    js = nc.jetstream()
    load = Load(strategy_of(fault))
    stop = asyncio.Event()
    sender = asyncio.create_task(load.run(nc, stop), name=f"load.{fault}")
    try:
        await load.reach(BEFORE, "before the kill")
        if fault == "ledger":
            assert ledger.process is not None
            phase = Phase(fault, "-", f"the ledger process (pid {ledger.process.pid})", load)
            phase.killed_at = time.monotonic()
            await ledger.kill()  # kill -9
            await load.reach(len(load.acked_at) + DOWN, "with the ledger down")
            phase.started_at = time.monotonic()
            phase.down_s = phase.started_at - phase.killed_at
            await ledger.start(nc)
            phase.current_s = time.monotonic() - phase.started_at
        else:
            node, roles = await pick(nc, js, cluster, names, fault)
            phase = Phase(fault, node, roles, load)
            server: NatsServer = cluster.server_named(node)
            phase.killed_at = time.monotonic()
            await asyncio.to_thread(server.kill)  # kill -9
            await load.reach(len(load.acked_at) + DOWN, f"with {node} ({roles}) down")
            check_running(services, ledger)
            await asyncio.to_thread(server.start)  # same port, same store
            phase.started_at = time.monotonic()
            phase.down_s = phase.started_at - phase.killed_at
            await wait_current(js, cluster, names)
            phase.current_s = time.monotonic() - phase.started_at
        await load.reach(len(load.acked_at) + AFTER, f"after {phase.node} ({phase.roles}) is back")
        check_running(services, ledger)
    finally:
        stop.set()
        await asyncio.wait_for(sender, BOUND)
    phase.gap_ms = load.longest_gap_ms()
    return phase


async def test_kill_9_each_node_under_order_load_loses_and_duplicates_nothing(
    cluster: NatsCluster, nc: Client, tmp_path: Path, pytestconfig: pytest.Config
) -> None:
    js = nc.jetstream()
    provisioned = await streams.provision(js, replicas=3)
    names = await stream_names(js)
    assert len(names) == len(provisioned), (names, provisioned)
    for fault in FAULTS:  # before the desk starts: the router has them all when it serves
        await desk_kv.put(js, subjects.KV_STRATEGIES, strategy_of(fault), spec(strategy_of(fault)), deadline=BOUND)
    ledger = Ledger(cluster.url, tmp_path)
    await ledger.start(nc)
    services: list[InProcessService] = []
    phases: list[Phase] = []
    try:
        services = await start_desk(cluster)
        await wait_current(js, cluster, names)
        for fault in FAULTS:
            phases.append(await run_phase(nc, cluster, services, ledger, names, fault))

        # Everything accepted is booked: wait (bounded) for the ledger to book one fill per order.
        async def booked_all() -> dict[str, list[ledger_pb2.Fill]] | None:
            fills = {p.load.strategy_id: await ledger_fills(nc, p.load.strategy_id) for p in phases}
            done = all({f.order_id for f in fills[p.load.strategy_id]} >= set(p.load.qty) for p in phases)
            return fills if done else None

        with contextlib.suppress(AssertionError):  # not all booked: the figures below say what is lost
            await poll(booked_all, "the ledger booking every accepted order", timeout=BOUND, every=0.5)
        fills = {p.load.strategy_id: await ledger_fills(nc, p.load.strategy_id) for p in phases}
        check_running(services, ledger)
        broker = await read_executions(nc, timeout=BOUND, settled=False)
        positions = await ledger_positions(nc)
        await wait_current(js, cluster, names)
        for name in names:  # R3 across every restart
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3 and info.cluster and len(info.cluster.replicas or []) == 2, name
    finally:
        await stop_desk(services)
        await ledger.stop()

    rows = []
    problems: list[str] = []
    for p in phases:
        sid = p.load.strategy_id
        booked = collections.Counter(f.order_id for f in fills[sid])
        booked_qty: dict[str, Decimal] = collections.defaultdict(Decimal)
        for f in fills[sid]:
            booked_qty[f.order_id] += Decimal(f.qty)
        executions = collections.Counter(f.execution_id for f in fills[sid])
        lost = [oid for oid in p.load.qty if booked[oid] == 0]
        duplicated = sorted(
            {oid for oid, n in booked.items() if n > 1}
            | {oid for oid, q in booked_qty.items() if q > p.load.qty.get(oid, Decimal(0))}
            | {oid for oid in booked if oid not in p.load.qty}
        )
        twice_in_stream = [e for e, n in broker.execution_ids.items() if n > 1 and e in executions]
        sums: dict[str, Decimal] = collections.defaultdict(Decimal)
        for f in fills[sid]:
            sums[f.symbol] += Decimal(f.qty) * (1 if f.side == common_pb2.SIDE_BUY else -1)
        stream_sums = {sym: q for (s, sym), q in broker.positions.items() if s == sid}
        ledger_pos = {sym: q for (s, sym), q in positions.items() if s == sid}
        nonzero = {k: v for k, v in sums.items() if v}
        if {k: v for k, v in ledger_pos.items() if v} != nonzero:
            problems.append(f"{p.fault}: ledger positions {ledger_pos} != its fills {dict(sums)}")
        if {k: v for k, v in stream_sums.items() if v} != nonzero:
            problems.append(f"{p.fault}: EXECUTIONS positions {stream_sums} != the ledger's fills {dict(sums)}")
        if lost:
            problems.append(f"{p.fault}: lost {lost[:10]}")
        if duplicated or twice_in_stream:
            problems.append(f"{p.fault}: duplicated {duplicated[:10]} execution ids twice {twice_in_stream[:10]}")
        if p.load.figures.rejected:
            problems.append(f"{p.fault}: refused for good {p.load.figures.rejected[:5]}")
        filled = sum(1 for oid in p.load.qty if oid in broker.orders and broker.orders[oid].fills > 0)
        rows.append(
            f"{p.fault:<14} {p.node:<4} {p.roles:<48} {p.load.figures.sent:>5} {len(p.load.qty):>8} "
            f"{filled:>6} {sum(1 for oid in p.load.qty if booked[oid]):>6} "
            f"{len(lost):>4} {len(duplicated) + len(twice_in_stream):>5} {p.gap_ms:>8.0f} "
            f"{p.down_s:>6.1f} {p.current_s:>8.1f}  {dict(p.load.figures.retries)}"
        )
    header = (
        f"{'fault':<14} {'node':<4} {'was':<48} {'sent':>5} {'accepted':>8} {'filled':>6} {'booked':>6} {'lost':>4} {'dupl.':>5} "
        f"{'gap ms':>8} {'down s':>6} {'current s':>8}  retries (why)"
    )
    table = "\n".join([header, *rows])
    pytestconfig.pluginmanager.register(_Summary(table), "cluster-fault-table")  # shown without -s too
    assert not problems, "\n".join([table, *problems])


class _Summary:
    """Prints the fault table at the end of the run (a plugin registered by the test)."""

    def __init__(self, table: str) -> None:
        self.table = table

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_sep("=", "cluster fault suite: kill -9, 3 nodes, R3")
        terminalreporter.write_line(self.table)
