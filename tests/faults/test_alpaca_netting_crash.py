"""Issue 13, item 1: the Alpaca gateway's netting decisions survive kill -9 (docs/alpaca.md, "Crashes").

The desk's services run as OS processes (tests/faults/harness.py) with ``BROKER=alpaca`` against the
fake Alpaca (tests/fakes/alpaca; real REST and trade_updates protocol, driven through alpaca-py):

(a) alpha buys 10 limit GTC (it rests: limit orders fill only when the fake is told to); bravo sells 4
    at market; the desk crosses 4 at the Alpaca quote's mid 153, cancels alpha's Alpaca order and
    places the remaining 6 as ``alpha.a-1.2``; kill -9 the gateway; restart. alpha's order must not
    be terminal while its 6 rest at Alpaca; when Alpaca fills them it is FILLED 10 of 10 at
    (4 x 153 + 6 x 152) / 10.
(b) the same, but every POST of the re-place meets a 5xx and the gateway is killed during the
    retries: after the restart alpha's 6 are placed (``.2``), bravo's redelivered routed order is not
    sent to Alpaca (bravo has exactly 4, all crossed), and the books end equal.
(c) killed earlier still: the pull record is stored and the cancel of alpha's Alpaca order is being
    retried (5xx): after the restart bravo's routed order comes back and is crossed then, once.
(d) the lock-out rule: alpha bids below the market, bravo's market sell pulls the bid and rests at
    Alpaca; the gateway is killed before the re-place: after the restart the bid stays off Alpaca
    while bravo's sell rests, and goes back (``.2``, its 10) once Alpaca fills bravo's sell.

All end with ``desk reconcile --json`` (the CLI, keys in its environment) clean.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from desk.bus import codec, subjects
from desk.bus.request import request
from desk.core.ids import order_id_for
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2
from tests.fakes.alpaca import FakeAlpaca
from tests.faults.harness import ROOT, Broker, Desk, Figures, read_executions, submit
from tests.support import poll

pytestmark = pytest.mark.faults

E = executions_pb2
BID, ASK = "152.5", "153.5"  # the Alpaca feed's quote: mid 153, the crosses' price
GATEWAY = "broker_gateway"
TIMEOUT = 60.0


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices={"AAPL": "153"}) as server:
        yield server


@pytest.fixture
async def desk(tmp_path: Path, fake: FakeAlpaca) -> AsyncIterator[Desk]:
    running = Desk(
        tmp_path,
        extra_env={
            "BROKER": "alpaca",
            "ROUTER_VENUE": "alpaca",
            "ALPACA_API_KEY": fake.key,
            "ALPACA_SECRET_KEY": fake.secret,
            "ALPACA_REST_URL": fake.rest_url,
            "ALPACA_STREAM_URL": fake.stream_url,
            "ALPACA_RETRY_BACKOFF": "0.05",
            "ALPACA_RETRY_BUDGET": "600",
            "ALPACA_RECONNECT_BACKOFF": "0.05",
            "GATEWAY_ACK_WAIT": "3",  # a routed order left unacked by the kill comes back soon after the restart
        },
    )
    try:
        await running.start(["alpha", "bravo"])
        yield running
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def alpaca_quotes(nc: Client) -> AsyncIterator[None]:
    """The Alpaca feed's quotes for AAPL on md.quote.AAPL (what marketdata publishes with MD_FEED=alpaca),
    fresh all along: the gateway prices crosses only from a quote at most ALPACA_CROSS_MAX_AGE old."""

    async def feed() -> None:
        while True:
            message = marketdata_pb2.Quote(
                symbol="AAPL",
                bid_price=BID,
                bid_size="100",
                ask_price=ASK,
                ask_size="100",
                ts_ns=time.time_ns(),
                source="alpaca",
            )
            data, headers = codec.encode(message)
            await nc.publish("md.quote.AAPL", data, headers=headers)
            await asyncio.sleep(0.2)  # a feed's pace, not synchronisation

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def order(
    strategy_id: str, client_order_id: str, side: int, qty: str, limit: str | None = None
) -> orders_pb2.OrderRequest:
    return orders_pb2.OrderRequest(
        strategy_id=strategy_id,
        client_order_id=client_order_id,
        symbol="AAPL",
        side=side,  # type: ignore[arg-type]
        type=common_pb2.ORDER_TYPE_LIMIT if limit else common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_GTC if limit else common_pb2.TIME_IN_FORCE_DAY,
        qty=qty,
        limit_price=limit or "",
    )


A_ID = order_id_for("alpha", "a-1")
B_ID = order_id_for("bravo", "b-1")


def at_alpaca(fake: FakeAlpaca, client_order_id: str) -> tuple[str, Decimal, Decimal] | None:
    """(status, qty, filled) of the Alpaca order with this client order id, if it exists."""

    def look() -> tuple[str, Decimal, Decimal] | None:
        for o in fake.orders.values():
            if o.client_order_id == client_order_id:
                return o.status, o.qty, o.filled_qty
        return None

    return fake.call(look)


def desk_orders_at_alpaca(fake: FakeAlpaca, strategy_id: str) -> list[str]:
    return fake.call(
        lambda: sorted(
            o.client_order_id for o in fake.orders.values() if o.client_order_id.startswith(f"{strategy_id}.")
        )
    )


async def executions(desk: Desk) -> Broker:
    assert desk.nc is not None
    return await read_executions(desk.nc, settled=False)


async def settled(desk: Desk) -> None:
    """Until the gateway has settled every routed order (none pending or unacked: a redelivery done
    with) and the ledger has stored every report in EXECUTIONS."""
    assert desk.nc is not None
    js = desk.nc.jetstream()

    async def done() -> bool:
        gateway = await js.consumer_info(subjects.STREAM_ORDERS, "gateway-alpaca")
        ledger = await js.consumer_info(subjects.STREAM_EXECUTIONS, subjects.LEDGER_DURABLE)
        last = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
        return (
            gateway.num_pending == 0
            and gateway.num_ack_pending == 0
            and ledger.ack_floor.stream_seq >= last
            and ledger.num_ack_pending == 0
        )

    await poll(done, "routed orders settled and every report booked by the ledger", timeout=TIMEOUT)


async def desk_reconcile(desk: Desk, fake: FakeAlpaca, *args: str) -> tuple[int, str]:
    """``desk reconcile`` as an operator runs it: the account through alpaca-py with the keys in its env."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "NATS_"))}
    env.update(
        PYTHONPATH=str(ROOT),
        ALPACA_API_KEY=fake.key,
        ALPACA_SECRET_KEY=fake.secret,
        ALPACA_REST_URL=fake.rest_url,
        COLUMNS="400",
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "desk.cli",
        "--nats-url",
        desk.server.url,
        "--credentials",
        str(desk.data_dir / "none.json"),
        "reconcile",
        "--baseline",
        str(desk.data_dir / "baseline.json"),
        "--since",
        "1d",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode() + err.decode()


async def alpha_rests_then_bravo_crosses(desk: Desk, fake: FakeAlpaca) -> None:
    """alpha's 10 rest at Alpaca; bravo's 4 are routed (the cross follows at the gateway)."""
    assert desk.nc is not None
    code, out = await desk_reconcile(desk, fake, "--set-baseline")  # account cash and ledger flow before any trade
    assert code == 0, out
    figures = Figures()
    ack = await submit(desk.nc, order("alpha", "a-1", common_pb2.SIDE_BUY, "10", limit="155"), figures)
    assert ack.accepted, ack
    await poll(lambda: at_alpaca(fake, "alpha.a-1"), "alpha's 10 resting at Alpaca")
    ack = await submit(desk.nc, order("bravo", "b-1", common_pb2.SIDE_SELL, "4"), figures)
    assert ack.accepted, ack


async def kill_and_restart_gateway(desk: Desk) -> None:
    await desk.kill(GATEWAY)
    await desk.restart(GATEWAY)
    await desk.wait_ready(GATEWAY)  # answers once restored, reconciled and the missed re-place completed


async def alpaca_fills_the_rest_and_books_are_exact(desk: Desk, fake: FakeAlpaca) -> None:
    fake.fill("alpha.a-1.2", "6", "152")

    async def alpha_filled() -> Broker | None:
        books = await executions(desk)
        trail = books.orders.get(A_ID)
        return books if trail is not None and trail.status == E.ORDER_STATUS_FILLED else None

    books = await poll(alpha_filled, "alpha's order FILLED once Alpaca fills its 6")
    alpha, bravo = books.orders[A_ID], books.orders[B_ID]
    assert (alpha.filled, alpha.finals) == (Decimal(10), [E.EXEC_TYPE_FILL])  # one end, after every fill
    assert (bravo.filled, bravo.status) == (Decimal(4), E.ORDER_STATUS_FILLED)
    assert desk_orders_at_alpaca(fake, "bravo") == []  # crossed, never sent to Alpaca
    assert desk_orders_at_alpaca(fake, "alpha") == ["alpha.a-1", "alpha.a-1.2"]  # no placement made twice
    assert books.positions[("alpha", "AAPL")] == 10 and books.positions[("bravo", "AAPL")] == -4
    assert max(books.execution_ids.values()) == 1

    await settled(desk)
    code, out = await desk_reconcile(desk, fake, "--json")
    report = json.loads(out) if out.strip().startswith("{") else {}
    assert code == 0 and report.get("clean") is True, out
    assert (report["differences"], report["not_checked"]) == ([], [])
    # the ledger's order: 10 of 10 at (4 x 153 + 6 x 152) / 10
    assert desk.nc is not None
    reply = await request(
        desk.nc,
        subjects.LEDGER_ORDERS,
        ledger_pb2.LedgerQuery(strategy_id="alpha", limit=10),
        ledger_pb2.OrdersReply,
        timeout=10,
    )
    (ledger_order,) = [o for o in reply.orders if o.order_id == A_ID]
    assert (ledger_order.status, Decimal(ledger_order.filled_qty), Decimal(ledger_order.avg_price)) == (
        E.ORDER_STATUS_FILLED,
        Decimal(10),
        Decimal("152.4"),
    )


async def test_a_restart_after_a_cross_and_re_place_keeps_the_order_alive_and_books_its_fill(
    desk: Desk, fake: FakeAlpaca
) -> None:
    assert desk.nc is not None
    async with alpaca_quotes(desk.nc):
        await alpha_rests_then_bravo_crosses(desk, fake)
        await poll(lambda: at_alpaca(fake, "alpha.a-1.2"), "alpha's remaining 6 placed again as alpha.a-1.2")
        assert at_alpaca(fake, "alpha.a-1") == ("canceled", Decimal(10), Decimal(0))
        assert at_alpaca(fake, "alpha.a-1.2") == ("new", Decimal(6), Decimal(0))
        await poll(lambda: _filled(desk, B_ID, Decimal(4)), "bravo's 4 crossed (in EXECUTIONS)")
        await settled(desk)

        await kill_and_restart_gateway(desk)

        await settled(desk)
        books = await executions(desk)
        alpha = books.orders[A_ID]
        assert alpha.finals == [] and alpha.status == E.ORDER_STATUS_PARTIALLY_FILLED, alpha  # 6 still rest
        assert alpha.filled == Decimal(4)
        assert at_alpaca(fake, "alpha.a-1.2") == ("new", Decimal(6), Decimal(0))
        await alpaca_fills_the_rest_and_books_are_exact(desk, fake)


async def test_a_re_place_interrupted_by_kill_9_is_completed_and_the_crossed_order_is_not_sent_again(
    desk: Desk, fake: FakeAlpaca
) -> None:
    assert desk.nc is not None
    async with alpaca_quotes(desk.nc):
        figures = Figures()
        code, out = await desk_reconcile(desk, fake, "--set-baseline")
        assert code == 0, out
        ack = await submit(desk.nc, order("alpha", "a-1", common_pb2.SIDE_BUY, "10", limit="155"), figures)
        assert ack.accepted, ack
        await poll(lambda: at_alpaca(fake, "alpha.a-1"), "alpha's 10 resting at Alpaca")
        fake.inject(500, count=100_000, method="POST", path_prefix="/v2/orders")  # from now on every POST: 5xx
        refused = fake.call(lambda: len(fake.refusals))
        ack = await submit(desk.nc, order("bravo", "b-1", common_pb2.SIDE_SELL, "4"), figures)
        assert ack.accepted, ack
        await poll(lambda: _filled(desk, B_ID, Decimal(4)), "bravo's 4 crossed (in EXECUTIONS)")
        await poll(
            lambda: fake.call(lambda: sum(1 for s, _ in fake.refusals[refused:] if s == 500) >= 3),
            "the re-place POST being retried after 5xx",
        )
        assert at_alpaca(fake, "alpha.a-1") == ("canceled", Decimal(10), Decimal(0))
        assert at_alpaca(fake, "alpha.a-1.2") is None

        await desk.kill(GATEWAY)  # during the retries
        assert fake.clear_injections() > 0  # Alpaca answers again
        await desk.restart(GATEWAY)
        await desk.wait_ready(GATEWAY)

        await poll(lambda: at_alpaca(fake, "alpha.a-1.2"), "alpha's remaining 6 placed after the restart")
        assert at_alpaca(fake, "alpha.a-1.2") == ("new", Decimal(6), Decimal(0))
        await settled(desk)  # bravo's routed order (unacked at the kill) came back and was settled
        assert desk.log_count(GATEWAY, "order.received", '"redelivered": true') >= 1
        books = await executions(desk)
        alpha = books.orders[A_ID]
        assert alpha.finals == [] and alpha.filled == Decimal(4), alpha
        assert desk_orders_at_alpaca(fake, "bravo") == []
        await alpaca_fills_the_rest_and_books_are_exact(desk, fake)


async def _filled(desk: Desk, order_id: str, qty: Decimal) -> bool:
    books = await executions(desk)
    trail = books.orders.get(order_id)
    return trail is not None and trail.filled == qty


async def test_a_kill_between_the_pull_record_and_the_cancel_crosses_once_after_the_restart(
    desk: Desk, fake: FakeAlpaca
) -> None:
    """The pull record is stored, the cancel of alpha's Alpaca order is being retried (5xx) when the
    gateway dies: alpha's order still rests in full; bravo's routed order comes back and is crossed
    then, once (alpha's 6 placed again as .2); nothing is crossed or placed twice."""
    assert desk.nc is not None
    async with alpaca_quotes(desk.nc):
        code, out = await desk_reconcile(desk, fake, "--set-baseline")
        assert code == 0, out
        figures = Figures()
        ack = await submit(desk.nc, order("alpha", "a-1", common_pb2.SIDE_BUY, "10", limit="155"), figures)
        assert ack.accepted, ack
        await poll(lambda: at_alpaca(fake, "alpha.a-1"), "alpha's 10 resting at Alpaca")
        fake.inject(500, count=100_000, method="DELETE", path_prefix="/v2/orders/")  # the pull's cancel: 5xx
        refused = fake.call(lambda: len(fake.refusals))
        ack = await submit(desk.nc, order("bravo", "b-1", common_pb2.SIDE_SELL, "4"), figures)
        assert ack.accepted, ack
        await poll(
            lambda: fake.call(lambda: sum(1 for s, _ in fake.refusals[refused:] if s == 500) >= 3),
            "the pull's DELETE being retried after 5xx",
        )
        books = await executions(desk)
        assert books.orders.get(B_ID) is not None and books.orders[B_ID].filled == 0  # only the pull record
        assert at_alpaca(fake, "alpha.a-1") == ("new", Decimal(10), Decimal(0))

        await desk.kill(GATEWAY)
        assert fake.clear_injections() > 0
        await desk.restart(GATEWAY)
        await desk.wait_ready(GATEWAY)

        await poll(lambda: at_alpaca(fake, "alpha.a-1.2"), "alpha's remaining 6 placed once bravo's order came back")
        await settled(desk)
        assert at_alpaca(fake, "alpha.a-1") == ("canceled", Decimal(10), Decimal(0))
        assert at_alpaca(fake, "alpha.a-1.2") == ("new", Decimal(6), Decimal(0))
        books = await executions(desk)
        assert books.orders[A_ID].finals == [] and books.orders[A_ID].filled == Decimal(4)
        await alpaca_fills_the_rest_and_books_are_exact(desk, fake)


async def test_a_kill_while_a_lock_out_pull_waits_to_re_place_completes_the_re_place_after_the_restart(
    desk: Desk, fake: FakeAlpaca
) -> None:
    """(d) The lock-out rule (issue 13, item 2): alpha bids 10 at 140, below the market (153: no
    cross); bravo sells 4 at market. The desk pulls alpha's bid (pull record first), sends bravo's
    sell - which rests at Alpaca (the fake does not fill it yet) - and would place alpha's 10 again
    once bravo's sell is done. kill -9 the gateway while it waits; restart. alpha's bid must stay
    off Alpaca while bravo's sell rests there (no 42210000), go back as ``alpha.a-1.2`` with its 10
    once Alpaca fills bravo's sell, and the books end exact and reconciled."""
    assert desk.nc is not None
    async with alpaca_quotes(desk.nc):
        code, out = await desk_reconcile(desk, fake, "--set-baseline")
        assert code == 0, out
        figures = Figures()
        ack = await submit(desk.nc, order("alpha", "a-1", common_pb2.SIDE_BUY, "10", limit="140"), figures)
        assert ack.accepted, ack
        await poll(lambda: at_alpaca(fake, "alpha.a-1"), "alpha's 10 resting at Alpaca")
        fake.call(lambda: setattr(fake, "auto_fill", False))  # bravo's market sell will rest at Alpaca
        ack = await submit(desk.nc, order("bravo", "b-1", common_pb2.SIDE_SELL, "4"), figures)
        assert ack.accepted, ack
        await poll(lambda: at_alpaca(fake, "bravo.b-1"), "bravo's sell sent to Alpaca")
        assert at_alpaca(fake, "alpha.a-1") == ("canceled", Decimal(10), Decimal(0))  # pulled for it

        await kill_and_restart_gateway(desk)

        await settled(desk)  # bravo's routed order came back (unacked at the kill): not sent again
        assert desk_orders_at_alpaca(fake, "bravo") == ["bravo.b-1"]
        assert at_alpaca(fake, "alpha.a-1.2") is None  # not beside bravo's resting sell
        books = await executions(desk)
        assert books.orders[A_ID].finals == [] and books.orders[A_ID].filled == 0, books.orders[A_ID]

        fake.fill("bravo.b-1", "4", "153")  # done at Alpaca: alpha's bid goes back with its 10
        await poll(lambda: at_alpaca(fake, "alpha.a-1.2"), "alpha's 10 placed again once bravo's sell is done")
        assert at_alpaca(fake, "alpha.a-1.2") == ("new", Decimal(10), Decimal(0))
        fake.fill("alpha.a-1.2", "10", "140")

        async def alpha_filled() -> Broker | None:
            books = await executions(desk)
            trail = books.orders.get(A_ID)
            return books if trail is not None and trail.status == E.ORDER_STATUS_FILLED else None

        books = await poll(alpha_filled, "alpha's order FILLED once Alpaca fills its 10")
        alpha, bravo = books.orders[A_ID], books.orders[B_ID]
        assert (alpha.filled, alpha.finals) == (Decimal(10), [E.EXEC_TYPE_FILL])
        assert (bravo.filled, bravo.status) == (Decimal(4), E.ORDER_STATUS_FILLED)
        assert desk_orders_at_alpaca(fake, "alpha") == ["alpha.a-1", "alpha.a-1.2"]
        assert all(code != 42210000 for _, code in fake.call(lambda: list(fake.refusals)))
        assert max(books.execution_ids.values()) == 1
        await settled(desk)
        code, out = await desk_reconcile(desk, fake, "--json")
        report = json.loads(out) if out.strip().startswith("{") else {}
        assert code == 0 and report.get("clean") is True, out
