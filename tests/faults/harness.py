"""The fault suite's harness: nats-server and each service as a separate OS process, killable with SIGKILL.

``Desk`` starts nats-server (a fixed store dir, so a restart keeps JetStream) and every service with
``python -m services.<name>`` (the environment of ``desk up``), and waits for each one's
``$SRV.PING.<name>``. ``kill`` sends SIGKILL and reaps the process; ``restart`` spawns it again.

``Strategy`` behaves like a strategy using the SDK: one order at a time to
``desk.order.submit.<id>``, unique client order ids, and a timed-out / unanswered / INTERNAL-refused
order is sent again with the SAME client order id until the desk answers it.

``Broker`` is the broker's side of the books: the EXECUTIONS stream read back from the start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.js.api import DeliverPolicy

from desk.bus import codec, streams, subjects
from desk.bus import kv as desk_kv
from desk.bus.errors import DeskError
from desk.bus.process import die_with_parent, terminate, wait_until_serving
from desk.bus.request import request
from desk.bus.testing import NatsServer
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2

ROOT = Path(__file__).resolve().parents[2]

#: Start order (as ``desk up``, without the dashboard).
SERVICES = ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator")
SYMBOLS = ("AAPL", "MSFT", "SPY", "TSLA", "NVDA")
INITIAL_CASH = Decimal(10000000)

REQUEST_TIMEOUT = 2.0  # one attempt of an order, as the SDK's default order timeout order of magnitude
RETRY_PAUSE = 0.1  # between attempts of the same order (a retry back-off, not synchronisation)
POLL_PAUSE = 0.2  # between looks at another process's state that has no event to await

E = executions_pb2


def spec(strategy_id: str) -> strategy_pb2.StrategySpec:
    """A StrategySpec with limits no test order comes near (only faults may refuse an order)."""
    return strategy_pb2.StrategySpec(
        strategy_id=strategy_id,
        member_id=f"m-{strategy_id}",
        name=f"fault load {strategy_id}",
        version="1.0.0",
        initial_cash=str(INITIAL_CASH),
        risk=strategy_pb2.RiskLimits(
            max_order_notional="1000000",
            max_position_notional="100000000",
            max_orders_per_minute=1_000_000,
            allow_short=True,
        ),
        symbols=list(SYMBOLS),
        runtime="process",
    )


@dataclass
class Service:
    name: str
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    started_at: float = 0.0


class Desk:
    """nats-server + every service as OS processes, under ``data_dir``."""

    def __init__(self, data_dir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir
        self.log_dir = data_dir / "logs"
        self.server = NatsServer(store_dir=data_dir / "nats", log_file=self.log_dir / "nats-server.log")
        self.extra_env = extra_env or {}
        self.services: dict[str, Service] = {}
        self.nc: Client | None = None
        self.connection_errors: collections.Counter[str] = collections.Counter()

    # --- environment -----------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment of ``desk up`` (desk/cli/embedded.py ``_env``), no strategies deployed."""
        env = dict(os.environ)
        strategies = self.data_dir / "strategies"
        strategies.mkdir(parents=True, exist_ok=True)
        env.update(
            NATS_URL=self.server.url,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
            PYTHONUNBUFFERED="1",
            LOG_FORMAT="json",
            LEDGER_DB_PATH=str(self.data_dir / "ledger.db"),
            ORCH_STRATEGIES_DIR=str(strategies),
            ORCH_LOG_DIR=str(self.log_dir / "strategies"),
            ORCH_RUNTIME="process",
            ORCH_AUTODEPLOY="false",
            BROKER="sim",
            MD_FEED="synthetic",
            MD_SYMBOLS=",".join(SYMBOLS),
        )
        env.update(self.extra_env)
        return env

    # --- start / stop ----------------------------------------------------------------------------
    async def start(self, strategy_ids: list[str]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.server.start)
        self.nc = await nats.connect(
            self.server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, error_cb=self._on_error
        )
        js = self.nc.jetstream()
        await streams.ensure_all(js)
        await streams.ensure_bucket(js, subjects.KV_STRATEGIES)
        for strategy_id in strategy_ids:
            await desk_kv.put(js, subjects.KV_STRATEGIES, strategy_id, spec(strategy_id))
        for name in SERVICES:
            self.services[name] = Service(name, self.log_dir / f"{name}.log")
            await self.spawn(name)
            await self.wait_ready(name)

    async def _on_error(self, exc: Exception) -> None:
        """Connection errors are expected here (nats-server is killed); counted, not logged."""
        self.connection_errors[type(exc).__name__] += 1

    async def spawn(self, name: str) -> float:
        """Start ``services.<name>``; returns the monotonic time it was spawned."""
        svc = self.services[name]
        handle = svc.log_path.open("ab")
        try:
            svc.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{name}",
                env=self.env(),
                cwd=str(ROOT),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            handle.close()
        svc.started_at = time.monotonic()
        return svc.started_at

    async def wait_ready(self, name: str, timeout: float = 60.0) -> float:
        """Seconds from spawn until ``$SRV.PING.<name>`` answers; fails if it exits or times out."""
        assert self.nc is not None
        svc = self.services[name]

        def exited() -> bool:
            return svc.process is not None and svc.process.returncode is not None

        if not await wait_until_serving(self.nc, name, timeout, exited, pause=POLL_PAUSE):
            if exited():
                raise AssertionError(f"{name} exited with {svc.process.returncode}:\n{self.tail(name)}")  # type: ignore[union-attr]
            raise AssertionError(f"{name} not ready within {timeout}s:\n{self.tail(name)}")
        return time.monotonic() - svc.started_at

    async def kill(self, name: str) -> int:
        """SIGKILL ``name`` (a service, or "nats") and reap it; returns the pid killed."""
        if name == "nats":
            process = self.server.process
            assert process is not None
            pid = process.pid
            os.kill(pid, signal.SIGKILL)
            await asyncio.to_thread(process.wait)
            await asyncio.to_thread(self.server.stop)  # joins the log reader; the store stays
            return pid
        proc = self.services[name].process
        assert proc is not None and proc.returncode is None, f"{name} is not running"
        os.kill(proc.pid, signal.SIGKILL)
        code = await proc.wait()
        assert code == -signal.SIGKILL, f"{name} ended with {code}, not by SIGKILL"
        return proc.pid

    async def restart(self, name: str) -> float:
        """Start ``name`` again; returns the monotonic time of the restart."""
        if name == "nats":
            started = time.monotonic()
            await asyncio.to_thread(self.server.start)  # same port, same store dir
            return started
        return await self.spawn(name)

    async def stop(self) -> None:
        for name in reversed(SERVICES):
            svc = self.services.get(name)
            if svc is None or svc.process is None or svc.process.returncode is not None:
                continue
            await terminate(svc.process, 20)
        if self.nc is not None:
            await self.nc.close()
        await asyncio.to_thread(self.server.cleanup)

    def tail(self, name: str, lines: int = 20) -> str:
        path = self.services[name].log_path if name in self.services else self.log_dir / "nats-server.log"
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def exited(self) -> dict[str, int]:
        """Services that exited on their own (not killed by the suite): name -> exit code."""
        return {
            n: s.process.returncode
            for n, s in self.services.items()
            if s.process is not None and s.process.returncode is not None
        }

    def log_values(self, name: str, event: str, key: str) -> list[Any]:
        """``key`` of every ``event`` line in ``name``'s JSON log, in order."""
        values: list[Any] = []
        with contextlib.suppress(OSError):
            for line in self.services[name].log_path.read_text(errors="replace").splitlines():
                if f'"{event}"' in line:
                    with contextlib.suppress(ValueError):
                        record = json.loads(line)
                        if record.get("event") == event:
                            values.append(record.get(key))
        return values

    def log_count(self, name: str, *needles: str) -> int:
        """Lines of ``name``'s log holding every one of ``needles``."""
        with contextlib.suppress(OSError):
            text = self.services[name].log_path.read_text(errors="replace")
            return sum(1 for line in text.splitlines() if all(n in line for n in needles))
        return 0


# --- load ----------------------------------------------------------------------------------------


@dataclass
class Figures:
    sent: int = 0  # distinct orders (client order ids) sent
    attempts: int = 0  # requests, retries included
    retries: collections.Counter[str] = field(default_factory=collections.Counter)  # why an attempt was repeated
    accepted: dict[str, str] = field(default_factory=dict)  # order_id -> strategy_id
    accepted_qty: dict[str, Decimal] = field(default_factory=dict)  # order_id -> qty
    rejected: list[str] = field(default_factory=list)  # final refusals (none expected)
    duplicate_acks: int = 0  # acks flagged duplicate (a retry of an order the desk had already taken)
    resting: dict[str, str] = field(default_factory=dict)  # order_id -> strategy_id: GTC limit orders


class Progress:
    """Accepted-order count the fault driver awaits."""

    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Condition()

    async def bump(self) -> None:
        async with self._changed:
            self.count += 1
            self._changed.notify_all()

    async def reach(self, target: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.count >= target)


RETRYABLE_REJECTS = {orders_pb2.REJECT_REASON_INTERNAL}


async def submit(nc: Client, order: orders_pb2.OrderRequest, figures: Figures) -> orders_pb2.OrderAck:
    """Send ``order`` until the desk answers it (same client order id every time), as the SDK does."""
    subject = subjects.order_submit(order.strategy_id)
    while True:
        figures.attempts += 1
        try:
            ack = await request(nc, subject, order, orders_pb2.OrderAck, timeout=REQUEST_TIMEOUT)
        except nats.errors.NoRespondersError:
            figures.retries["no_responders"] += 1
        except nats.errors.TimeoutError:
            figures.retries["timeout"] += 1
        except nats.errors.Error as exc:  # connection closed / reconnecting (nats-server killed)
            figures.retries[type(exc).__name__] += 1
        except DeskError as err:
            figures.retries[err.code] += 1
        else:
            if ack.accepted or ack.reason not in RETRYABLE_REJECTS:
                return ack
            figures.retries["rejected_internal"] += 1
        await asyncio.sleep(RETRY_PAUSE)


class Strategy:
    """One load-generating strategy: market orders of 1 share, one at a time."""

    def __init__(self, nc: Client, strategy_id: str, figures: Figures, progress: Progress) -> None:
        self.nc = nc
        self.strategy_id = strategy_id
        self.figures = figures
        self.progress = progress

    async def run(self, stop: asyncio.Event, most: int, rate: float) -> None:
        """Send orders until ``stop`` is set, ``most`` at the most, ``rate`` per second at the most.

        The rate is the load's shape (a steady stream below the desk's capacity, so a restart is
        followed by a short backlog, not by minutes of catching up); an order that took longer than
        its slot is followed at once by the next.
        """
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i in range(most):
            if stop.is_set():
                return
            wait = begin + i / rate - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)  # the next slot of the steady stream
                if stop.is_set():
                    return
            symbol = SYMBOLS[i % len(SYMBOLS)]
            side = common_pb2.SIDE_BUY if (i // len(SYMBOLS)) % 3 != 2 else common_pb2.SIDE_SELL
            await self.send(f"{self.strategy_id}-{i:06d}", symbol, side)

    async def send(self, client_order_id: str, symbol: str, side: int) -> orders_pb2.OrderAck:
        order = orders_pb2.OrderRequest(
            strategy_id=self.strategy_id,
            client_order_id=client_order_id,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            qty="1",
        )
        self.figures.sent += 1
        ack = await submit(self.nc, order, self.figures)
        if ack.accepted:
            if ack.duplicate:
                self.figures.duplicate_acks += 1
            assert ack.order_id not in self.figures.accepted, f"order id {ack.order_id} acked for two client ids"
            self.figures.accepted[ack.order_id] = self.strategy_id
            self.figures.accepted_qty[ack.order_id] = Decimal(order.qty)
            await self.progress.bump()
        else:
            self.figures.rejected.append(f"{client_order_id}: {orders_pb2.RejectReason.Name(ack.reason)} {ack.message}")
        return ack


RESTING_OFFSETS = (Decimal("0.0005"), Decimal("0.003"), Decimal("0.015"))  # from the last price: soon, later, rarely
CANCEL_EVERY = 3  # every 3rd resting order is canceled a few orders later
CANCEL_LAG = 5  # orders placed between a resting order and its cancel
FINAL_STATUSES = {E.ORDER_STATUS_FILLED, E.ORDER_STATUS_CANCELED, E.ORDER_STATUS_EXPIRED, E.ORDER_STATUS_REJECTED}


async def cancel_order(nc: Client, strategy_id: str, client_order_id: str, figures: Figures) -> orders_pb2.CancelAck:
    """Send a cancel until the desk answers it (accepted, or refused for good: e.g. already final)."""
    request_ = orders_pb2.CancelRequest(strategy_id=strategy_id, client_order_id=client_order_id)
    while True:
        figures.attempts += 1
        try:
            return await request(
                nc, subjects.order_cancel(strategy_id), request_, orders_pb2.CancelAck, timeout=REQUEST_TIMEOUT
            )
        except nats.errors.NoRespondersError:
            figures.retries["no_responders"] += 1
        except nats.errors.TimeoutError:
            figures.retries["timeout"] += 1
        except nats.errors.Error as exc:
            figures.retries[type(exc).__name__] += 1
        except DeskError as err:
            if err.code not in ("INTERNAL", "UNAVAILABLE", "VENUE_UNAVAILABLE"):
                return orders_pb2.CancelAck(
                    strategy_id=strategy_id,
                    client_order_id=client_order_id,
                    accepted=False,
                    message=f"{err.code}: {err.message}",
                )
            figures.retries[err.code] += 1
        await asyncio.sleep(RETRY_PAUSE)


class RestingStrategy:
    """GTC limit orders of 1 share near the last price (buys below, sells above) that rest in the sim.

    Some fill soon, some later, some hardly ever (:data:`RESTING_OFFSETS`); every
    :data:`CANCEL_EVERY`-th is canceled :data:`CANCEL_LAG` orders later. :meth:`cancel_open` cancels
    whatever has not ended, so a drained desk has an empty sim book again.
    """

    def __init__(self, nc: Client, strategy_id: str, figures: Figures) -> None:
        self.nc = nc
        self.strategy_id = strategy_id
        self.figures = figures
        self.placed: dict[str, str] = {}  # client order id -> order id (accepted)
        self.cancels_sent = 0
        self.cancels_accepted = 0
        self.cancel_attempts = 0  # requests, retries included (each may have been routed)
        self.cancels_refused: collections.Counter[str] = collections.Counter()

    async def run(self, stop: asyncio.Event, most: int, rate: float) -> None:
        kv = await self.nc.jetstream().key_value(subjects.KV_PRICES)
        loop = asyncio.get_running_loop()
        begin = loop.time()
        for i in range(most):
            if stop.is_set():
                return
            wait = begin + i / rate - loop.time()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), wait)
                if stop.is_set():
                    return
            symbol = SYMBOLS[i % len(SYMBOLS)]
            try:
                entry = await kv.get(symbol)
            except Exception as exc:  # noqa: BLE001 - nats-server down or no price yet: skip this slot
                self.figures.retries[f"resting_slot_skipped_{type(exc).__name__}"] += 1
                continue
            price = Decimal(codec.decode(entry.value or b"", marketdata_pb2.Trade).price)
            offset = RESTING_OFFSETS[i % len(RESTING_OFFSETS)]
            side = common_pb2.SIDE_BUY if i % 2 == 0 else common_pb2.SIDE_SELL
            limit = price * (1 - offset) if side == common_pb2.SIDE_BUY else price * (1 + offset)
            await self.send(f"{self.strategy_id}-{i:06d}", symbol, side, limit.quantize(Decimal("0.01")))
            if i >= CANCEL_LAG and (i - CANCEL_LAG) % CANCEL_EVERY == 0:
                await self.cancel(f"{self.strategy_id}-{i - CANCEL_LAG:06d}")

    async def send(self, client_order_id: str, symbol: str, side: int, limit: Decimal) -> None:
        order = orders_pb2.OrderRequest(
            strategy_id=self.strategy_id,
            client_order_id=client_order_id,
            symbol=symbol,
            side=side,  # type: ignore[arg-type]
            type=common_pb2.ORDER_TYPE_LIMIT,
            time_in_force=common_pb2.TIME_IN_FORCE_GTC,
            qty="1",
            limit_price=str(limit),
        )
        self.figures.sent += 1
        ack = await submit(self.nc, order, self.figures)
        if ack.accepted:
            assert ack.order_id not in self.figures.accepted, f"order id {ack.order_id} acked for two client ids"
            self.figures.accepted[ack.order_id] = self.strategy_id
            self.figures.resting[ack.order_id] = self.strategy_id
            self.placed[client_order_id] = ack.order_id
        else:
            self.figures.rejected.append(f"{client_order_id}: {orders_pb2.RejectReason.Name(ack.reason)} {ack.message}")

    async def cancel(self, client_order_id: str) -> None:
        if client_order_id not in self.placed:
            return
        self.cancels_sent += 1
        attempts = self.figures.attempts
        ack = await cancel_order(self.nc, self.strategy_id, client_order_id, self.figures)
        self.cancel_attempts += self.figures.attempts - attempts
        if ack.accepted:
            self.cancels_accepted += 1
        else:
            self.cancels_refused[orders_pb2.RejectReason.Name(ack.reason).removeprefix("REJECT_REASON_")] += 1

    async def cancel_open(self, final: set[str]) -> None:
        """Cancel every accepted order not in ``final`` (order ids that ended)."""
        for client_order_id, order_id in list(self.placed.items()):
            if order_id not in final:
                await self.cancel(client_order_id)


# --- the broker's side ---------------------------------------------------------------------------


@dataclass
class OrderTrail:
    strategy_id: str = ""
    symbol: str = ""
    side: int = 0
    news: int = 0
    filled: Decimal = Decimal(0)
    finals: list[int] = field(default_factory=list)  # final exec types seen (FILL, CANCELED...)
    fills: int = 0
    status: int = 0  # the order status of its last report (CANCEL_REJECTED ones aside)


@dataclass
class Broker:
    """Everything the EXECUTIONS stream says, per order, per strategy."""

    reports: int = 0
    execution_ids: collections.Counter[str] = field(default_factory=collections.Counter)
    orders: dict[str, OrderTrail] = field(default_factory=dict)
    positions: dict[tuple[str, str], Decimal] = field(default_factory=lambda: collections.defaultdict(Decimal))
    cash: dict[str, Decimal] = field(default_factory=lambda: collections.defaultdict(lambda: INITIAL_CASH))
    fills: collections.Counter[str] = field(default_factory=collections.Counter)  # per strategy

    def apply(self, report: executions_pb2.ExecutionReport) -> None:
        self.reports += 1
        self.execution_ids[report.execution_id] += 1
        trail = self.orders.setdefault(report.order_id, OrderTrail(report.strategy_id, report.symbol, report.side))
        if report.exec_type == E.EXEC_TYPE_NEW:
            trail.news += 1
        if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL):
            qty, price = Decimal(report.fill_qty), Decimal(report.fill_price)
            fee = Decimal(report.fee or "0")
            trail.filled += qty
            trail.fills += 1
            self.fills[report.strategy_id] += 1
            sign = 1 if report.side == common_pb2.SIDE_BUY else -1
            self.positions[(report.strategy_id, report.symbol)] += sign * qty
            self.cash[report.strategy_id] -= sign * qty * price + fee
        if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_CANCELED, E.EXEC_TYPE_EXPIRED, E.EXEC_TYPE_REJECTED):
            trail.finals.append(report.exec_type)
        if report.exec_type != E.EXEC_TYPE_CANCEL_REJECTED:
            trail.status = report.status

    def final_order_ids(self) -> set[str]:
        return {oid for oid, trail in self.orders.items() if trail.status in FINAL_STATUSES}


async def read_executions(nc: Client, timeout: float = 60.0, *, settled: bool = True) -> Broker:
    """Read EXECUTIONS from its first message to its last (an ordered consumer).

    ``settled``: nothing is published meanwhile, so exactly the stream's messages are read.
    """
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_EXECUTIONS)
    last = info.state.last_seq
    broker = Broker()
    if not info.state.messages:
        return broker
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def on_msg(msg: Any) -> None:
        broker.apply(codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers))
        if msg.metadata.sequence.stream >= last and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        subjects.EXEC_ALL,
        stream=subjects.STREAM_EXECUTIONS,
        cb=on_msg,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
    )
    try:
        await asyncio.wait_for(done, timeout)
    finally:
        await sub.unsubscribe()
    if settled:
        assert broker.reports == info.state.messages, "EXECUTIONS read back incompletely"
    return broker


async def ledger_books(nc: Client) -> tuple[dict[tuple[str, str], Decimal], dict[str, ledger_pb2.PnlRow]]:
    """The ledger's positions (strategy, symbol) -> qty and its P&L rows per strategy."""
    positions = await request(
        nc, subjects.LEDGER_POSITIONS, ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.PositionsReply, timeout=10
    )
    pnl = await request(nc, subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.PnlReply, timeout=10)
    return (
        {(p.strategy_id, p.symbol): Decimal(p.qty) for p in positions.positions},
        {row.strategy_id: row for row in pnl.strategies},
    )
