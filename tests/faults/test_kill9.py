"""kill -9 each service in turn, and the NATS server, while strategies send a steady stream of orders.

Every component runs as its own OS process. Load: ``STRATEGIES`` strategies each send market
orders of 1 share, one at a time at a steady rate, retrying a failed attempt with the same client order id (as the
SDK does). After every ``ORDERS_BETWEEN_FAULTS`` accepted orders, one component gets SIGKILL and is
restarted at once, while the load goes on; a probe order measures when the desk accepts (and fills)
orders again. The load stops ``ORDERS_BETWEEN_FAULTS`` orders after the last restart (and never
sends more than ``MOST_PER_STRATEGY`` per strategy). Then, with everything drained, it proves:

* every accepted order reached the broker exactly once: the ORDERS work stream stored exactly one
  message per accepted order (JetStream dedups by ``Nats-Msg-Id`` = order id), and EXECUTIONS holds
  exactly one NEW per accepted order, fills summing to its quantity, and no execution id twice;
* every fill is in the ledger exactly once, and the ledger's positions and cash per strategy equal the
  ones recomputed from the broker's fills (EXECUTIONS);
* no strategy lost its book (every StrategySpec is still registered, every strategy has its ledger row);
* the desk accepted an order again within ``RECOVERY_BOUND`` seconds of each restart.

Resting orders too: ``RESTING`` strategies send GTC limit orders of 1 share near the price (some
fill soon, some later, some hardly ever; every third is canceled a little later). The sim rebuilds
its book from EXECUTIONS when the gateway restarts, so the orders resting at its kill survive it
(the restored count is asserted > 0). After the load they cancel whatever is still open; then every
resting order has exactly one NEW and exactly one end (FILL or CANCELED) in EXECUTIONS, the sim's
book is empty, and the ledger's order rows show the same status and filled quantity.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Collection, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg

from desk.bus import codec, streams, subjects
from desk.bus.request import request as bus_request
from desk.v1 import common_pb2, executions_pb2, ledger_pb2
from tests.faults.conftest import TABLE_KEY
from tests.faults.harness import (
    INITIAL_CASH,
    POLL_PAUSE,
    SERVICES,
    SYMBOLS,
    Broker,
    Desk,
    Figures,
    Progress,
    RestingStrategy,
    Strategy,
    ledger_books,
    read_executions,
)

pytestmark = pytest.mark.faults

E = executions_pb2

#: Killed in this order; "nats" is the nats-server itself.
FAULTS = ("order_router", "broker_gateway", "ledger", "orchestrator", "marketdata", "nats")
STRATEGIES = [f"load{i}" for i in range(6)]
RESTING = ["rest0", "rest1"]  # GTC limit orders near the price
RESTING_RATE = 4.0  # resting orders per second per RESTING strategy
ORDERS_BETWEEN_FAULTS = 500
RATE_PER_STRATEGY = 40.0  # orders per second per strategy (240/s in all)
MOST_PER_STRATEGY = 5000  # bound on the load whatever happens
PROBE = "probe"
RECOVERY_BOUND = 60.0  # seconds from restart until an order is accepted and filled again (stated, generous)
SUITE_BOUND = 420.0  # the whole run, hard stop
DRAIN_BOUND = 60.0

ENV = {
    "MD_INTERVAL": "0.05",  # 20 ticks/s per symbol: market orders always meet a fresh price and liquidity
    "SIM_PARTICIPATION": "1",
    "LOG_LEVEL": "info",
}


@dataclass
class Fault:
    target: str
    pid: int
    accepted_before: int
    ready_s: float = 0.0  # restart -> every service answers its PING
    accept_s: float = 0.0  # restart -> a probe order is accepted
    fill_s: float = 0.0  # restart -> that order's fill is published


class ProbeFills:
    """Futures for the probe's orders, resolved by their FILL on desk.exec.probe (core NATS)."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[float]] = {}

    def expect(self, order_id: str) -> asyncio.Future[float]:
        return self.waiting.setdefault(order_id, asyncio.get_running_loop().create_future())

    async def on_msg(self, msg: Msg) -> None:
        report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
        if report.exec_type == executions_pb2.EXEC_TYPE_FILL:
            future = self.expect(report.order_id)
            if not future.done():
                future.set_result(time.monotonic())


async def test_kill9_each_component_under_load(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    desk = Desk(tmp_path, extra_env=ENV)
    try:
        async with asyncio.timeout(SUITE_BOUND):
            await run(desk, request)
    finally:
        await desk.stop()


async def run(desk: Desk, pytest_request: pytest.FixtureRequest) -> None:
    await desk.start([*STRATEGIES, *RESTING, PROBE])
    nc = desk.nc
    assert nc is not None
    figures, progress = Figures(), Progress()
    probe_fills = ProbeFills()
    await nc.subscribe(subjects.execution(PROBE), cb=probe_fills.on_msg)
    probe = Strategy(nc, PROBE, figures, progress)

    started = time.monotonic()
    stop_load = asyncio.Event()
    load = [
        asyncio.create_task(
            Strategy(nc, sid, figures, progress).run(stop_load, MOST_PER_STRATEGY, RATE_PER_STRATEGY), name=sid
        )
        for sid in STRATEGIES
    ]
    resting = [RestingStrategy(nc, sid, figures) for sid in RESTING]
    load += [
        asyncio.create_task(r.run(stop_load, MOST_PER_STRATEGY, RESTING_RATE), name=r.strategy_id) for r in resting
    ]
    faults: list[Fault] = []
    try:
        for target in FAULTS:
            await wait_or_fail(progress.reach(progress.count + ORDERS_BETWEEN_FAULTS), load)
            fault = Fault(target, 0, progress.count)
            fault.pid = await desk.kill(target)
            restarted = await desk.restart(target)
            for name in SERVICES:
                await desk.wait_ready(name)
            fault.ready_s = time.monotonic() - restarted
            ack = await probe.send(f"probe-after-{target}", "AAPL", common_pb2.SIDE_BUY)
            fault.accept_s = time.monotonic() - restarted
            assert ack.accepted, f"probe refused after {target} restart: {ack.message}"
            fill = await asyncio.wait_for(probe_fills.expect(ack.order_id), RECOVERY_BOUND)
            fault.fill_s = fill - restarted
            faults.append(fault)
        await wait_or_fail(progress.reach(progress.count + ORDERS_BETWEEN_FAULTS), load)
        stop_load.set()
        await asyncio.gather(*load)
    finally:
        for task in load:
            task.cancel()
        await asyncio.gather(*load, return_exceptions=True)
    load_s = time.monotonic() - started

    # the resting orders still open are canceled, so that a drained desk has an empty sim book
    await drained(desk, book_may_hold=set(RESTING))
    ended = (await read_executions(nc, settled=False)).final_order_ids()  # resting orders may still fill
    for strategy in resting:
        await strategy.cancel_open(ended)
    await drained(desk)
    broker = await read_executions(nc)
    ledger_orders = await ledger_order_rows(nc, RESTING)
    restored = desk.log_values("broker_gateway", "book.restored", "open_orders")
    orders_stream = await nc.jetstream().stream_info(subjects.STREAM_ORDERS)
    ledger_positions, ledger_pnl = await ledger_books(nc)
    kv = await streams.ensure_bucket(nc.jetstream(), subjects.KV_STRATEGIES)
    registered = set(await kv.keys())
    redelivered = desk.log_count("broker_gateway", '"order.received"', '"redelivered": true')

    # --- the figures ---------------------------------------------------------------------------
    lost = sorted(
        oid
        for oid, qty in figures.accepted_qty.items()
        if oid not in broker.orders or broker.orders[oid].news == 0 or broker.orders[oid].filled < qty
    ) + sorted(  # a resting order must have its NEW and an end (filled or canceled)
        oid
        for oid in figures.resting
        if oid not in broker.orders or broker.orders[oid].news == 0 or not broker.orders[oid].finals
    )
    duplicated = sorted(
        oid
        for oid, qty in figures.accepted_qty.items()
        if oid in broker.orders and (broker.orders[oid].news > 1 or broker.orders[oid].filled > qty)
    ) + sorted(
        oid
        for oid in figures.resting
        if oid in broker.orders
        and (broker.orders[oid].news > 1 or broker.orders[oid].filled > 1 or len(broker.orders[oid].finals) > 1)
    )
    resting_ends = collections.Counter(
        E.ExecType.Name(broker.orders[oid].finals[-1]).removeprefix("EXEC_TYPE_")
        for oid in figures.resting
        if oid in broker.orders and broker.orders[oid].finals
    )
    resting_diffs: list[str] = []
    for oid in figures.resting:
        record, trail = ledger_orders.get(oid), broker.orders.get(oid)
        if record is None or trail is None:
            resting_diffs.append(f"{oid}: ledger row {record is not None}, at the broker {trail is not None}")
        elif (record.status, Decimal(record.filled_qty or "0")) != (trail.status, trail.filled):
            resting_diffs.append(
                f"{oid}: ledger {E.OrderStatus.Name(record.status)} {record.filled_qty}, "
                f"broker {E.OrderStatus.Name(trail.status)} {trail.filled}"
            )
    unknown = sorted(set(broker.orders) - set(figures.accepted))  # at the broker, never acked to a strategy
    repeated_exec_ids = sorted(e for e, n in broker.execution_ids.items() if n > 1)
    filled = sum(1 for oid in figures.accepted if oid in broker.orders and broker.orders[oid].filled > 0)

    ledger_diffs: list[str] = []
    strategy_ids = [*STRATEGIES, *RESTING, PROBE]
    for sid in strategy_ids:
        row = ledger_pnl.get(sid)
        if row is None:
            ledger_diffs.append(f"{sid}: no ledger row (book lost)")
            continue
        if row.fills != broker.fills[sid]:
            ledger_diffs.append(f"{sid}: ledger has {row.fills} fills, broker {broker.fills[sid]}")
        if Decimal(row.cash) != broker.cash[sid]:
            ledger_diffs.append(f"{sid}: ledger cash {row.cash}, broker {broker.cash[sid]}")
        if Decimal(row.initial_cash) != INITIAL_CASH:
            ledger_diffs.append(f"{sid}: ledger initial cash {row.initial_cash}, spec {INITIAL_CASH}")
    for key in sorted(set(broker.positions) | set(ledger_positions)):
        mine, theirs = ledger_positions.get(key, Decimal(0)), broker.positions.get(key, Decimal(0))
        if mine != theirs:
            ledger_diffs.append(f"{key[0]} {key[1]}: ledger qty {mine}, broker {theirs}")

    table = render(
        figures, faults, broker.reports, filled, lost, duplicated, load_s, orders_stream.state.last_seq, redelivered
    )
    table += (
        f"\n  resting limit orders {len(figures.resting)}: ends {dict(sorted(resting_ends.items()))}; "
        f"cancels sent {sum(r.cancels_sent for r in resting)}, accepted {sum(r.cancels_accepted for r in resting)}, refused "
        f"{dict(sum((r.cancels_refused for r in resting), collections.Counter()))}; "
        f"open orders restored at gateway start-ups: {restored}"
    )
    pytest_request.config.stash.setdefault(TABLE_KEY, []).append(table)
    print("\n" + table)

    # --- what must hold ------------------------------------------------------------------------
    assert not desk.exited(), f"services exited on their own: {desk.exited()}"
    assert not figures.rejected, f"orders refused for good: {figures.rejected[:5]}"
    assert len(figures.accepted) == figures.sent, "an order was neither accepted nor refused"
    assert not lost, f"{len(lost)} accepted orders lost at the broker, e.g. {describe(broker, lost[:3])}"
    assert not duplicated, f"{len(duplicated)} orders executed twice, e.g. {describe(broker, duplicated[:3])}"
    assert not unknown, f"{len(unknown)} orders at the broker that no strategy had accepted: {unknown[:3]}"
    assert not repeated_exec_ids, f"execution ids stored twice: {repeated_exec_ids[:3]}"
    # ORDERS also carries the cancels (no Nats-Msg-Id: a retried one may be routed twice, a
    # duplicate cancel is harmless), so its count is the accepted orders plus between the
    # accepted cancels and every cancel attempt
    cancels_accepted = sum(r.cancels_accepted for r in resting)
    cancel_attempts = sum(r.cancel_attempts for r in resting)
    routed_orders = orders_stream.state.last_seq - len(figures.accepted)
    assert cancels_accepted <= routed_orders <= cancel_attempts, (
        f"ORDERS stored {orders_stream.state.last_seq} routed orders and cancels for {len(figures.accepted)} "
        f"accepted orders and {cancels_accepted} accepted cancels ({cancel_attempts} attempts)"
    )
    assert not ledger_diffs, "ledger differs from the broker:\n" + "\n".join(ledger_diffs[:20])
    assert not resting_diffs, "ledger orders differ from the broker:\n" + "\n".join(resting_diffs[:20])
    assert set(resting_ends) <= {"FILL", "CANCELED"}, f"resting orders ended otherwise: {resting_ends}"
    assert len(restored) >= 2 and restored[1] > 0, f"no resting order survived the gateway kill: {restored}"
    assert set(strategy_ids) <= registered, f"strategies lost from DESK_STRATEGIES: {set(strategy_ids) - registered}"
    for fault in faults:
        assert fault.accept_s < RECOVERY_BOUND, (
            f"{fault.target}: orders accepted again only after {fault.accept_s:.1f}s"
        )
    assert [f.target for f in faults] == list(FAULTS)


async def wait_or_fail(awaitable: Coroutine[Any, Any, None], load: list[asyncio.Task[None]]) -> None:
    """Await ``awaitable``, failing at once if a load task dies first."""
    waiter = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({waiter, *load}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            return
        for task in done:
            if task.exception() is not None:
                raise AssertionError(f"load task {task.get_name()} failed") from task.exception()
        await waiter  # load finished normally first: the target must be reachable still
    finally:
        if not waiter.done():
            waiter.cancel()


async def drained(desk: Desk, book_may_hold: Collection[str] = ()) -> None:
    """Wait until nothing is in flight: ORDERS empty, the sim's book empty, the ledger caught up.

    The book may still hold orders of the strategies in ``book_may_hold`` (resting limit orders).
    """
    nc = desk.nc
    assert nc is not None
    js = nc.jetstream()
    deadline = time.monotonic() + DRAIN_BOUND
    state = ""
    while time.monotonic() < deadline:
        orders = await js.stream_info(subjects.STREAM_ORDERS)
        gateway = await js.consumer_info(subjects.STREAM_ORDERS, "gateway-sim")
        ledger = await js.consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
        book = await bus_request(nc, "desk.broker.sim.book", ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.OrdersReply)
        state = (
            f"ORDERS messages={orders.state.messages} gateway pending={gateway.num_pending} "
            f"ack_pending={gateway.num_ack_pending} sim book={len(book.orders)} "
            f"ledger pending={ledger.num_pending} ack_pending={ledger.num_ack_pending}"
        )
        if (
            orders.state.messages == 0
            and gateway.num_pending == 0
            and gateway.num_ack_pending == 0
            and all(o.strategy_id in book_may_hold for o in book.orders)
            and ledger.num_pending == 0
            and ledger.num_ack_pending == 0
        ):
            return
        # another process's progress; JetStream offers no event for "consumer caught up"
        await asyncio.sleep(POLL_PAUSE)
    exited = desk.exited()
    tails = "\n".join(f"--- {name} (exit {code}):\n{desk.tail(name)}" for name, code in exited.items())
    raise AssertionError(f"desk did not drain within {DRAIN_BOUND}s: {state}; exited on their own: {exited}\n{tails}")


async def ledger_order_rows(nc: Any, strategy_ids: list[str]) -> dict[str, ledger_pb2.OrderRecord]:
    """The ledger's order rows of ``strategy_ids`` (one query per symbol: replies stay small)."""
    rows: dict[str, ledger_pb2.OrderRecord] = {}
    for sid in strategy_ids:
        for symbol in SYMBOLS:
            reply = await bus_request(
                nc,
                subjects.LEDGER_ORDERS,
                ledger_pb2.LedgerQuery(strategy_id=sid, symbol=symbol, limit=1000),
                ledger_pb2.OrdersReply,
                timeout=10,
            )
            rows.update((o.order_id, o) for o in reply.orders)
    return rows


def describe(broker: Broker, order_ids: list[str]) -> str:
    return "; ".join(f"{oid}: {broker.orders.get(oid)}" for oid in order_ids)


def render(
    figures: Figures,
    faults: list[Fault],
    reports: int,
    filled: int,
    lost: list[str],
    duplicated: list[str],
    load_s: float,
    routed: int,
    redelivered: int,
) -> str:
    retries = ", ".join(f"{k}={v}" for k, v in sorted(figures.retries.items())) or "none"
    lines = [
        "kill -9 fault suite",
        (
            f"  orders sent {figures.sent}  accepted {len(figures.accepted)}  filled {filled}  "
            f"lost {len(lost)}  duplicated {len(duplicated)}  refused {len(figures.rejected)}"
        ),
        (
            f"  routed (ORDERS stream) {routed}  execution reports {reports}  attempts {figures.attempts}  "
            f"retried: {retries}  duplicate acks {figures.duplicate_acks}  load {load_s:.1f}s"
        ),
        f"  routed orders the gateway got again after its kill (redelivered): {redelivered}",
        f"  recovery bound {RECOVERY_BOUND:.0f}s (restart -> probe order accepted)",
        f"  {'killed':<15}{'pid':>8}{'accepted before':>17}{'all ready s':>13}{'accepting s':>13}{'filling s':>11}",
    ]
    lines += [
        f"  {f.target:<15}{f.pid:>8}{f.accepted_before:>17}{f.ready_s:>13.2f}{f.accept_s:>13.2f}{f.fill_s:>11.2f}"
        for f in faults
    ]
    return "\n".join(lines)
