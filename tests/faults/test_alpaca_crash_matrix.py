"""Issue 13, item 6: the crash matrix - kill -9 the Alpaca gateway at each step of netting.

One desk (every service an OS process, ``BROKER=alpaca``) and one fake Alpaca (tests/fakes/alpaca,
driven by the gateway through alpaca-py) are shared by every case; each case trades a symbol of its
own (``M01``, ``M02``...), so the cases are independent. A case is a *scenario* - an internal cross
that leaves a resting remainder, a lock-out pull and re-place (market open or closed), a partial
fill at Alpaca before or after the cross, a notional order - and a *kill point*, reached exactly
through a hook of the fake or an observable, never a sleep:

* ``after the cross``: the cross's fills are in EXECUTIONS, the re-place's POST is held by the fake;
* ``after the cancel``: Alpaca canceled the pulled order, its reply is held (the gateway never learns);
* ``re-place retries``: every POST of the re-place is answered 5xx, the gateway is retrying;
* ``reconnect``: the trade_updates socket was dropped, Alpaca filled meanwhile, and the gateway's
  reconcile after reconnecting is held at its ``GET /v2/orders``;
* ``after a partial fill``: the partial fill is in EXECUTIONS;
* ``cancel racing a fill``: the pull's DELETE is held while Alpaca partly fills the order;
* ``after the send``: the lock-out's order rests at Alpaca (market closed), the pulled one waits.

The gateway is killed with SIGKILL there, restarted (where the routed order is netted again after
the restart, with the symbol's quotes held back until the new process waits for a price: the
restart-without-a-price path, docs/faults.md finding 6), and the case is driven to its end (the
fake fills whatever rests). Then, per case: 0 lost (every accepted order final, in EXECUTIONS and in the
ledger, every Alpaca fill booked), 0 duplicated (no execution id twice, no Alpaca fill booked twice),
0 over-filled (filled <= qty for every order, at the desk and at the fake: Alpaca fills plus
internal crosses), the ledger's positions and cash equal the fake account's, and ``desk reconcile``
exits 0. The table of cases and counts is printed at the end of the session (conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal

import pytest
import pytest_asyncio

from desk.bus import codec, subjects
from desk.bus.request import request
from desk.core.ids import alpaca_fill_execution_id, order_id_for
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2
from tests.fakes.alpaca import FakeAlpaca
from tests.faults.conftest import TABLE_KEY
from tests.faults.harness import Broker, Desk, Figures, read_executions, submit
from tests.faults.test_alpaca_netting_crash import desk_reconcile, settled
from tests.support import poll

pytestmark = [pytest.mark.faults, pytest.mark.asyncio(loop_scope="module")]

E = executions_pb2
BUY, SELL = common_pb2.SIDE_BUY, common_pb2.SIDE_SELL
BID, ASK = "152.5", "153.5"  # the Alpaca feed's quote of every case's symbol: mid 153, the crosses' price
MID = Decimal(153)
# Seconds between the feed's quotes: well inside ALPACA_CROSS_MAX_AGE (5 s). The cases whose routed
# order is netted again after the restart hold their symbol's quotes back meanwhile (``starve``), so
# the restart-without-a-price path (docs/faults.md, finding 6) is taken every time, not by chance.
QUOTE_PACE = 2.0
STARVED: set[str] = set()  # symbols whose quotes the feed holds back for now (Run.kill_and_restart)
QUOTED: dict[str, tuple[str, str]] = {}  # symbols the feed quotes other than BID/ASK for now (a bracket's stop-loss)
GATEWAY = "broker_gateway"
TIMEOUT = 60.0
FAKE_CASH = Decimal(1_000_000)  # FakeAlpaca's starting cash
FINAL = {E.ORDER_STATUS_FILLED, E.ORDER_STATUS_CANCELED, E.ORDER_STATUS_EXPIRED, E.ORDER_STATUS_REJECTED}


@dataclass
class Placed:
    strategy_id: str
    client_order_id: str
    qty: Decimal | None
    notional: Decimal | None


@dataclass
class Case:
    """One row of the matrix: ``drive`` takes the case from its first order to the gateway's restart."""

    id: str
    scenario: str
    kill_point: str
    drive: Callable[[Run], Awaitable[None]]
    symbol: str = ""


@dataclass
class Run:
    """One case being run: the shared desk and fake, the case's symbol, the orders it placed."""

    desk: Desk
    fake: FakeAlpaca
    symbol: str
    tag: str  # the case's client order ids: <tag>a (alpha's), <tag>b (bravo's)
    orders: dict[str, Placed] = field(default_factory=dict)  # desk order id -> order
    exits: dict[str, Decimal] = field(default_factory=dict)  # a bracket's exit order id -> what it must fill

    @property
    def a(self) -> str:
        return f"alpha.{self.tag}a"  # alpha's Alpaca client order id (first placement)

    @property
    def b(self) -> str:
        return f"bravo.{self.tag}b"

    async def place(
        self,
        strategy_id: str,
        side: int,
        qty: str | None = None,
        limit: str | None = None,
        notional: str | None = None,
        **exits: str,
    ) -> str:
        client_order_id = f"{self.tag}{strategy_id[0]}"
        message = orders_pb2.OrderRequest(
            order_class=orders_pb2.ORDER_CLASS_BRACKET if exits else orders_pb2.ORDER_CLASS_UNSPECIFIED,
            take_profit_limit_price=exits.get("take_profit", ""),
            stop_loss_stop_price=exits.get("stop_loss", ""),
            strategy_id=strategy_id,
            client_order_id=client_order_id,
            symbol=self.symbol,
            side=side,  # type: ignore[arg-type]
            type=common_pb2.ORDER_TYPE_LIMIT if limit else common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_GTC if limit or exits else common_pb2.TIME_IN_FORCE_DAY,
            qty=qty or "",
            notional=notional or "",
            limit_price=limit or "",
        )
        assert self.desk.nc is not None
        ack = await submit(self.desk.nc, message, Figures())
        assert ack.accepted, ack
        self.orders[ack.order_id] = Placed(
            strategy_id, client_order_id, Decimal(qty) if qty else None, Decimal(notional) if notional else None
        )
        return ack.order_id

    def at_alpaca(self, client_order_id: str) -> tuple[str, Decimal, Decimal] | None:
        """(status, qty, filled) of the fake's order with this client order id, if it exists."""

        def look() -> tuple[str, Decimal, Decimal] | None:
            for o in self.fake.orders.values():
                if o.client_order_id == client_order_id:
                    return o.status, o.qty, o.filled_qty
            return None

        return self.fake.call(look)

    def alpaca_id(self, client_order_id: str) -> str:
        return self.fake.order(client_order_id).id

    async def books(self) -> Broker:
        assert self.desk.nc is not None
        return await read_executions(self.desk.nc, settled=False)

    async def filled(self, order_id: str, qty: str) -> bool:
        trail = (await self.books()).orders.get(order_id)
        return trail is not None and trail.filled == Decimal(qty)

    async def resting_at_alpaca(self, client_order_id: str) -> None:
        await poll(lambda: self.at_alpaca(client_order_id), f"{client_order_id} resting at Alpaca", timeout=TIMEOUT)

    async def refusals_of(self, since: int, status: int, at_least: int) -> None:
        def enough() -> bool:
            return self.fake.call(lambda: sum(1 for s, _ in self.fake.refusals[since:] if s == status) >= at_least)

        await poll(enough, f"{at_least} requests answered {status} (the gateway retrying)", timeout=TIMEOUT)

    async def kill_and_restart(self, after_kill: Callable[[], object] = lambda: None, starve: bool = False) -> None:
        """SIGKILL the gateway where it is now; ``after_kill`` (release a gate, heal Alpaca); restart it.

        ``starve``: the restarted gateway gets no quote of the case's symbol until it waits for one
        with the redelivered routed order in hand (docs/faults.md, finding 6); then the feed resumes."""
        waits = self.desk.log_count(GATEWAY, '"order.waiting_for_price"', f'"symbol": "{self.symbol}"')
        if starve:
            STARVED.add(self.symbol)
        try:
            await self.desk.kill(GATEWAY)
            after_kill()
            await self.desk.restart(GATEWAY)
            await self.desk.wait_ready(GATEWAY)  # answers once restored, reconciled and missed re-places made
            if starve:
                await poll(
                    lambda: (
                        self.desk.log_count(GATEWAY, '"order.waiting_for_price"', f'"symbol": "{self.symbol}"') > waits
                    ),
                    "the restarted gateway waiting for an Alpaca price before netting the redelivered order",
                    timeout=TIMEOUT,
                )
        finally:
            STARVED.discard(self.symbol)


async def reached(gate_reached: Callable[[], bool], what: str) -> None:
    await poll(gate_reached, what, timeout=TIMEOUT)


# --- the scenarios, each driven to its kill point and through the restart ------------------------


async def alpha_bids(run: Run, limit: str = "155") -> str:
    """alpha buys 10 limit GTC; it rests at Alpaca (limit orders fill only when the fake is told to)."""
    order_id = await run.place("alpha", BUY, "10", limit=limit)
    await run.resting_at_alpaca(run.a)
    return order_id


async def cross_after_cross_published(run: Run) -> None:
    alpha = await alpha_bids(run)
    gate = run.fake.hold("POST", path="/v2/orders", client_order_id=f"{run.a}.2")
    bravo = await run.place("bravo", SELL, "4")
    await poll(lambda: run.filled(bravo, "4"), "bravo's 4 crossed (in EXECUTIONS)", timeout=TIMEOUT)
    await reached(gate.reached.is_set, "the re-place's POST held by the fake")
    assert await run.filled(alpha, "4")
    await run.kill_and_restart(lambda: run.fake.release(gate))
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 6 placed again after the restart", timeout=TIMEOUT)
    assert run.at_alpaca(f"{run.a}.2") == ("new", Decimal(6), Decimal(0))


async def cross_after_cancel(run: Run) -> None:
    await alpha_bids(run)
    gate = run.fake.hold("DELETE", path=f"/v2/orders/{run.alpaca_id(run.a)}", commit=True)
    bravo = await run.place("bravo", SELL, "4")
    await reached(gate.reached.is_set, "the pull's DELETE done at Alpaca, its reply held")
    assert run.at_alpaca(run.a) == ("canceled", Decimal(10), Decimal(0))
    assert not await run.filled(bravo, "4")  # nothing crossed yet
    await run.kill_and_restart(lambda: run.fake.release(gate), starve=True)


async def cross_replace_retries(run: Run) -> None:
    await alpha_bids(run)
    since = run.fake.call(lambda: len(run.fake.refusals))
    run.fake.inject(500, count=100_000, method="POST", path_prefix="/v2/orders", client_order_id=f"{run.a}.2")
    bravo = await run.place("bravo", SELL, "4")
    await poll(lambda: run.filled(bravo, "4"), "bravo's 4 crossed (in EXECUTIONS)", timeout=TIMEOUT)
    await run.refusals_of(since, 500, 3)
    assert run.at_alpaca(f"{run.a}.2") is None
    await run.kill_and_restart(run.fake.clear_injections)
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 6 placed after the restart", timeout=TIMEOUT)


async def cross_reconnect(run: Run) -> None:
    alpha = await alpha_bids(run)
    await run.place("bravo", SELL, "4")
    await run.resting_at_alpaca(f"{run.a}.2")
    await settled(run.desk)
    await drop_stream_then(run, lambda: run.fake.fill(f"{run.a}.2", "2", "152"))
    await poll(lambda: run.filled(alpha, "6"), "the fill made while the stream was down booked", timeout=TIMEOUT)


async def drop_stream_then(run: Run, meanwhile: Callable[[], object]) -> None:
    """Drop trade_updates (reconnects refused), ``meanwhile`` at Alpaca, let the gateway reconnect and
    kill it while its reconcile's ``GET /v2/orders`` is held; restart."""
    refused = run.fake.call(lambda: run.fake.trade_refusals)
    run.fake.drop_trade_streams(refuse_reconnect=True)
    meanwhile()
    await poll(
        lambda: run.fake.call(lambda: run.fake.trade_refusals > refused), "the gateway reconnecting", timeout=TIMEOUT
    )
    gate = run.fake.hold("GET", path="/v2/orders")
    run.fake.allow_trade_streams()
    await reached(gate.reached.is_set, "the reconnect's reconcile held at GET /v2/orders")
    await run.kill_and_restart(lambda: run.fake.release(gate))


async def cross_after_partial_fill(run: Run) -> None:
    alpha = await alpha_bids(run)
    await run.place("bravo", SELL, "4")
    await run.resting_at_alpaca(f"{run.a}.2")
    run.fake.fill(f"{run.a}.2", "2", "152")
    await poll(lambda: run.filled(alpha, "6"), "alpha's partial fill at Alpaca in EXECUTIONS", timeout=TIMEOUT)
    await run.kill_and_restart()
    trail = (await run.books()).orders[alpha]
    assert trail.finals == [] and trail.status == E.ORDER_STATUS_PARTIALLY_FILLED, trail  # 4 rest at Alpaca
    assert run.at_alpaca(f"{run.a}.2") == ("partially_filled", Decimal(6), Decimal(2))


async def partial_before_after_cross(run: Run) -> None:
    alpha = await alpha_bids(run)
    run.fake.fill(run.a, "3", "154")
    await poll(lambda: run.filled(alpha, "3"), "alpha's partial fill at Alpaca in EXECUTIONS", timeout=TIMEOUT)
    gate = run.fake.hold("POST", path="/v2/orders", client_order_id=f"{run.a}.2")
    bravo = await run.place("bravo", SELL, "4")
    await poll(lambda: run.filled(bravo, "4"), "bravo's 4 crossed (in EXECUTIONS)", timeout=TIMEOUT)
    await reached(gate.reached.is_set, "the re-place's POST held by the fake")
    await run.kill_and_restart(lambda: run.fake.release(gate))
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 3 placed again after the restart", timeout=TIMEOUT)
    assert run.at_alpaca(f"{run.a}.2") == ("new", Decimal(3), Decimal(0))


async def partial_races_cancel(run: Run) -> None:
    alpha = await alpha_bids(run)
    gate = run.fake.hold("DELETE", path=f"/v2/orders/{run.alpaca_id(run.a)}")  # held, never reaches Alpaca
    await run.place("bravo", SELL, "4")
    await reached(gate.reached.is_set, "the pull's DELETE held by the fake")
    run.fake.fill(run.a, "3", "154")  # Alpaca fills while the desk is pulling the order
    await poll(lambda: run.filled(alpha, "3"), "the racing partial fill in EXECUTIONS", timeout=TIMEOUT)
    await run.kill_and_restart(lambda: run.fake.release(gate), starve=True)


async def lockout_open_after_cancel(run: Run) -> None:
    await alpha_bids(run, limit="140")  # below the mid: bravo's market sell cannot cross it
    gate = run.fake.hold("DELETE", path=f"/v2/orders/{run.alpaca_id(run.a)}", commit=True)
    await run.place("bravo", SELL, "4")
    await reached(gate.reached.is_set, "the lock-out pull's DELETE done at Alpaca, its reply held")
    assert run.at_alpaca(run.b) is None  # bravo not sent yet
    await run.kill_and_restart(lambda: run.fake.release(gate), starve=True)


async def lockout_open_replace_retries(run: Run) -> None:
    await alpha_bids(run, limit="140")
    since = run.fake.call(lambda: len(run.fake.refusals))
    run.fake.inject(500, count=100_000, method="POST", path_prefix="/v2/orders", client_order_id=f"{run.a}.2")
    bravo = await run.place("bravo", SELL, "4")
    await poll(lambda: run.filled(bravo, "4"), "bravo's 4 filled at Alpaca (market open)", timeout=TIMEOUT)
    await run.refusals_of(since, 500, 3)
    await run.kill_and_restart(run.fake.clear_injections)
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 10 placed again after the restart", timeout=TIMEOUT)
    assert run.at_alpaca(f"{run.a}.2") == ("new", Decimal(10), Decimal(0))


async def lockout_closed_after_send(run: Run) -> None:
    run.fake.close_market()
    try:
        alpha = await alpha_bids(run, limit="140")
        await run.place("bravo", SELL, "4")
        await run.resting_at_alpaca(run.b)  # rests: the market is closed; alpha's bid waits off Alpaca
        assert run.at_alpaca(run.a) == ("canceled", Decimal(10), Decimal(0))
        await run.kill_and_restart()
        await settled(run.desk)
        assert run.at_alpaca(f"{run.a}.2") is None  # not beside bravo's resting sell
        trail = (await run.books()).orders[alpha]
        assert trail.finals == [] and trail.filled == 0, trail
    finally:
        run.fake.open_market()  # bravo's sell fills at the open; alpha's bid goes back
    assert run.at_alpaca(run.b) == ("filled", Decimal(4), Decimal(4))
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 10 placed again at the open", timeout=TIMEOUT)


async def lockout_closed_reconnect(run: Run) -> None:
    run.fake.close_market()
    try:
        await alpha_bids(run, limit="140")
        await run.place("bravo", SELL, "4")
        await run.resting_at_alpaca(run.b)
        await drop_stream_then(run, run.fake.open_market)  # bravo fills while the stream is down
    finally:
        run.fake.open_market()
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 10 placed again after the restart", timeout=TIMEOUT)


async def notional_after_cross(run: Run) -> None:
    await run.place("alpha", SELL, "10", limit="150")  # a sell at or below the mid: crossable
    await run.resting_at_alpaca(run.a)
    gate = run.fake.hold("POST", path="/v2/orders", client_order_id=f"{run.a}.2")
    bravo = await run.place("bravo", BUY, notional="612")  # 4 shares at 153
    await poll(lambda: run.filled(bravo, "4"), "bravo's $612 crossed as 4 shares", timeout=TIMEOUT)
    await reached(gate.reached.is_set, "the re-place's POST held by the fake")
    await run.kill_and_restart(lambda: run.fake.release(gate))
    await poll(lambda: run.at_alpaca(f"{run.a}.2"), "alpha's 6 placed again after the restart", timeout=TIMEOUT)


async def notional_after_cancel(run: Run) -> None:
    await run.place("alpha", SELL, "10", limit="150")
    await run.resting_at_alpaca(run.a)
    gate = run.fake.hold("DELETE", path=f"/v2/orders/{run.alpaca_id(run.a)}", commit=True)
    await run.place("bravo", BUY, notional="612")
    await reached(gate.reached.is_set, "the pull's DELETE done at Alpaca, its reply held")
    await run.kill_and_restart(lambda: run.fake.release(gate), starve=True)


async def bracket_resting(run: Run) -> str:
    """alpha's bracket buy of 10 (take-profit 160, stop-loss 150) filled at the mid: its take-profit
    rests at Alpaca (``<a>-tp``), its stop-loss is armed at the desk."""
    entry = await run.place("alpha", BUY, "10", take_profit="160", stop_loss="150")
    await poll(lambda: run.filled(entry, "10"), "the bracket's entry filled", timeout=TIMEOUT)
    await run.resting_at_alpaca(f"{run.a}-tp")
    assert run.at_alpaca(f"{run.a}-sl") is None  # armed at the desk: one exit holds the shares at Alpaca
    return entry


async def exits_done(run: Run, take_profit: str, stop_loss: str) -> None:
    """Until the take-profit filled ``take_profit`` and the stop-loss ``stop_loss`` (all of it at Alpaca,
    once), the stop-loss's Alpaca order filled and nothing of the bracket open there."""
    books_ids = {"-tp": take_profit, "-sl": stop_loss}
    for suffix, qty in books_ids.items():
        run.exits[order_id_for("alpha", f"{run.tag}a{suffix}")] = Decimal(qty)  # counted and checked in check()

    async def done() -> bool:
        books = await run.books()
        for suffix, qty in books_ids.items():
            trail = books.orders.get(order_id_for("alpha", f"{run.tag}a{suffix}"))
            if Decimal(qty) and (trail is None or trail.filled != Decimal(qty)):
                return False
        return all(
            not o.is_open for o in run.fake.call(lambda: list(run.fake.orders.values())) if o.symbol == run.symbol
        )

    await poll(done, f"the bracket's exits done on {run.symbol}", timeout=TIMEOUT)
    assert run.at_alpaca(f"{run.a}-sl") == ("filled", Decimal(stop_loss), Decimal(stop_loss))


async def bracket_restart_resting(run: Run) -> None:
    await bracket_resting(run)
    await run.kill_and_restart(lambda: run.fake.fill(f"{run.a}-tp", "4", "160"))  # filled while it is down
    QUOTED[run.symbol] = ("148.5", "149.5")  # mid 149: the stop-loss's stop 150 reached
    try:
        await exits_done(run, take_profit="4", stop_loss="6")
    finally:
        QUOTED.pop(run.symbol, None)


async def bracket_after_trigger(run: Run) -> None:
    await bracket_resting(run)
    gate = run.fake.hold("DELETE", path=f"/v2/orders/{run.alpaca_id(f'{run.a}-tp')}", commit=True)
    QUOTED[run.symbol] = ("148.5", "149.5")
    try:
        await reached(gate.reached.is_set, "the take-profit's cancel done at Alpaca, its reply held")
        assert run.at_alpaca(f"{run.a}-sl") is None  # the stop-loss not sent yet
        await run.kill_and_restart(lambda: run.fake.release(gate))
    finally:
        QUOTED.pop(run.symbol, None)  # the restart sends it from the stored trigger record, at any price
    await exits_done(run, take_profit="0", stop_loss="10")


CROSS = "cross, remainder rests"
PARTIAL_BEFORE = "partial fill before the cross"
LOCKOUT_OPEN = "lock-out pull/re-place, market open"
LOCKOUT_CLOSED = "lock-out pull/re-place, market closed"
NOTIONAL = "notional order crossed"
BRACKET = "bracket: take-profit at Alpaca, stop-loss armed"

CASES = [
    Case("cross-after-cross", CROSS, "after the cross is published", cross_after_cross_published),
    Case("cross-after-cancel", CROSS, "after the cancel, before the re-place", cross_after_cancel),
    Case("cross-retries", CROSS, "during the re-place's 5xx retries", cross_replace_retries),
    Case("cross-reconnect", CROSS, "during a trade_updates reconnect", cross_reconnect),
    Case("cross-partial", CROSS, "after a partial fill (of the re-place)", cross_after_partial_fill),
    Case("partial-after-cross", PARTIAL_BEFORE, "after the cross is published", partial_before_after_cross),
    Case("partial-races-cancel", PARTIAL_BEFORE, "a partial fill racing the pull's cancel", partial_races_cancel),
    Case("lockout-after-cancel", LOCKOUT_OPEN, "after the cancel, before the send", lockout_open_after_cancel),
    Case("lockout-retries", LOCKOUT_OPEN, "during the re-place's 5xx retries", lockout_open_replace_retries),
    Case(
        "closed-after-send", LOCKOUT_CLOSED, "after the send (it rests), before the re-place", lockout_closed_after_send
    ),
    Case(
        "closed-reconnect",
        LOCKOUT_CLOSED,
        "during a trade_updates reconnect (filled at the open)",
        lockout_closed_reconnect,
    ),
    Case("notional-after-cross", NOTIONAL, "after the cross is published", notional_after_cross),
    Case("notional-after-cancel", NOTIONAL, "after the cancel, before the re-place", notional_after_cancel),
    Case("bracket-resting", BRACKET, "exits resting (take-profit filled 4 while down)", bracket_restart_resting),
    Case("bracket-trigger", BRACKET, "stop-loss triggered, the take-profit's cancel done", bracket_after_trigger),
]
for number, case in enumerate(CASES, start=1):
    case.symbol = f"M{number:02d}"
SYMBOLS = [case.symbol for case in CASES]


# --- the shared desk ------------------------------------------------------------------------------


@dataclass
class Row:
    case: Case
    orders: int = 0
    fills: int = 0
    lost: int = 0
    duplicated: int = 0
    over_filled: int = 0
    reconcile: str = "not run"
    seconds: float = 0.0


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices=dict.fromkeys(SYMBOLS, str(MID))) as server:
        yield server


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def desk(tmp_path_factory: pytest.TempPathFactory, fake: FakeAlpaca) -> AsyncIterator[Desk]:
    running = Desk(
        tmp_path_factory.mktemp("matrix"),
        extra_env={
            "BROKER": "alpaca",
            "ROUTER_VENUE": "alpaca",
            "MD_SYMBOLS": ",".join(SYMBOLS),
            "ALPACA_API_KEY": fake.key,
            "ALPACA_SECRET_KEY": fake.secret,
            "ALPACA_REST_URL": fake.rest_url,
            "ALPACA_STREAM_URL": fake.stream_url,
            "ALPACA_TIMEOUT": "120",  # a request held by the fake waits for the kill, never times out first
            "ALPACA_RETRY_BACKOFF": "0.05",
            "ALPACA_RETRY_BUDGET": "600",
            "ALPACA_RECONNECT_BACKOFF": "0.05",
            "GATEWAY_ACK_WAIT": "3",  # a routed order left unacked by the kill comes back soon after the restart
        },
    )
    try:
        await running.start(["alpha", "bravo"])
        async with alpaca_quotes(running):
            code, out = await desk_reconcile(running, fake, "--set-baseline")
            assert code == 0, out
            yield running
    finally:
        await running.stop()


@contextlib.asynccontextmanager
async def alpaca_quotes(desk: Desk) -> AsyncIterator[None]:
    """The Alpaca feed's quotes of every case's symbol, fresh all along (crosses are priced only from
    a quote at most ALPACA_CROSS_MAX_AGE old)."""
    assert desk.nc is not None
    nc = desk.nc

    async def feed() -> None:
        while True:
            for symbol in SYMBOLS:
                if symbol in STARVED:
                    continue
                bid, ask = QUOTED.get(symbol, (BID, ASK))
                message = marketdata_pb2.Quote(
                    symbol=symbol,
                    bid_price=bid,
                    bid_size="100",
                    ask_price=ask,
                    ask_size="100",
                    ts_ns=time.time_ns(),
                    source="alpaca",
                )
                data, headers = codec.encode(message)
                await nc.publish(f"md.quote.{symbol}", data, headers=headers)
            await asyncio.sleep(QUOTE_PACE)  # a feed's pace, not synchronisation

    task = asyncio.create_task(feed())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture(scope="module")
def rows(request: pytest.FixtureRequest) -> Iterator[list[Row]]:
    table: list[Row] = []
    yield table
    request.config.stash.setdefault(TABLE_KEY, []).append(format_table(table))


def format_table(table: list[Row]) -> str:
    head = ("case", "scenario", "kill point", "orders", "fills", "lost", "dup", "over", "reconcile", "s")
    lines = [
        (
            r.case.id,
            r.case.scenario,
            r.case.kill_point,
            str(r.orders),
            str(r.fills),
            str(r.lost),
            str(r.duplicated),
            str(r.over_filled),
            r.reconcile,
            f"{r.seconds:.1f}",
        )
        for r in table
    ]
    widths = [max(len(x) for x in column) for column in zip(head, *lines, strict=True)]
    out = ["Alpaca netting crash matrix (kill -9 of broker_gateway; tests/faults/test_alpaca_crash_matrix.py)"]
    for line in [head, *lines]:
        out.append("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    total = sum(r.lost + r.duplicated + r.over_filled for r in table)
    clean = sum(1 for r in table if r.reconcile == "clean")
    out.append(f"{len(table)} cases: lost+duplicated+over-filled = {total}; reconcile clean in {clean}")
    return "\n".join(out)


# --- the end of every case -------------------------------------------------------------------------


async def finish(run: Run) -> Broker:
    """Let Alpaca fill whatever of the case rests (limits at their price, market orders at the mid)
    until every order of the case is final; the books then."""

    def fill_resting() -> None:
        resting = run.fake.call(
            lambda: [
                (o.client_order_id, o.leaves, o.limit_price or MID)
                for o in run.fake.orders.values()
                if o.symbol == run.symbol and o.is_open
            ]
        )
        for client_order_id, leaves, price in resting:
            run.fake.fill(client_order_id, leaves, price)

    async def all_final() -> Broker | None:
        books = await run.books()
        if all(o in books.orders and books.orders[o].status in FINAL for o in run.orders):
            return books
        fill_resting()
        return None

    await settled(run.desk)
    return await poll(all_final, f"every order on {run.symbol} final", timeout=TIMEOUT)


async def check(run: Run, row: Row) -> None:
    """The counts of ``row`` from EXECUTIONS, the ledger and the fake; then the assertions."""
    await settled(run.desk)
    books = await run.books()
    assert run.desk.nc is not None
    mine = {oid: books.orders[oid] for oid in run.orders}
    row.orders = len(mine) + len(run.exits)
    row.fills = sum(t.fills for t in mine.values()) + sum(books.orders[o].fills for o in run.exits)
    problems: list[str] = []
    for oid, qty in run.exits.items():  # a bracket's exits: one final each, filled exactly what they must
        exit_trail = books.orders[oid]
        if exit_trail.status not in FINAL or len(exit_trail.finals) != 1 or exit_trail.filled != qty:
            problems.append(f"exit {oid}: {E.OrderStatus.Name(exit_trail.status)} {exit_trail.filled} of {qty}")
            row.lost += exit_trail.filled < qty or len(exit_trail.finals) != 1
            row.over_filled += exit_trail.filled > qty

    # lost: an order without one final report, an Alpaca fill not booked; duplicated: an id twice
    for oid, trail in mine.items():
        if trail.status not in FINAL or len(trail.finals) != 1:
            problems.append(f"{oid}: status {E.OrderStatus.Name(trail.status)}, finals {trail.finals}")
            row.lost += 1
    row.duplicated += sum(n - 1 for n in books.execution_ids.values() if n > 1)
    alpaca_fills = run.fake.call(
        lambda: [
            (a["order_id"], Decimal(a["cum_qty"]))
            for a in run.fake.activities
            if a["symbol"] == run.symbol and a["order_id"] in run.fake.orders
        ]
    )
    stored = await reports(run)
    booked = fill_ids(stored)
    for alpaca_order_id, cum_qty in alpaca_fills:
        count = booked.get(alpaca_fill_execution_id(alpaca_order_id, cum_qty), 0)
        row.lost += count == 0
        row.duplicated += max(count - 1, 0)
        if count != 1:
            problems.append(f"Alpaca fill of {alpaca_order_id} to {cum_qty} booked {count} times")

    # over-filled: at the desk (EXECUTIONS, ledger) and at the fake (its fills plus the crosses)
    ledger = await ledger_orders(run)
    at_fake = run.fake.call(
        lambda: {o.client_order_id: o.filled_qty for o in run.fake.orders.values() if o.symbol == run.symbol}
    )
    for oid, placed in run.orders.items():
        trail, record = mine[oid], ledger.get(oid)
        crossed = crossed_qty(stored, oid)
        alpaca = sum(
            (q for c, q in at_fake.items() if c.split(".")[:2] == [placed.strategy_id, placed.client_order_id]),
            Decimal(0),
        )
        limit = placed.qty if placed.qty is not None else (placed.notional or Decimal(0)) / MID
        if trail.status != E.ORDER_STATUS_FILLED or trail.filled != limit:  # nothing here ends otherwise
            row.lost += 1
            problems.append(f"{oid}: ended {E.OrderStatus.Name(trail.status)} with {trail.filled} of {limit}")
        if record is None:
            row.lost += 1
            problems.append(f"{oid}: not in the ledger")
            continue
        if record.status != trail.status or Decimal(record.filled_qty or "0") != trail.filled:
            row.lost += 1
            problems.append(
                f"{oid}: ledger {record.status} {record.filled_qty}, EXECUTIONS {trail.status} {trail.filled}"
            )
        if max(trail.filled, Decimal(record.filled_qty or "0"), alpaca + crossed) > limit:
            row.over_filled += 1
            problems.append(
                f"{oid}: filled {trail.filled} (ledger {record.filled_qty}, fake {alpaca} + crossed {crossed}) of {limit}"
            )
        if alpaca + crossed != trail.filled:
            row.lost += 1
            problems.append(f"{oid}: fake {alpaca} + crossed {crossed} != EXECUTIONS {trail.filled}")

    left_open = run.fake.call(
        lambda: [o.client_order_id for o in run.fake.orders.values() if o.symbol == run.symbol and o.is_open]
    )
    if left_open:  # every desk order is final: nothing of it may still rest at Alpaca
        row.lost += len(left_open)
        problems.append(f"still open at Alpaca: {left_open}")
    await ledger_equals_account(run, problems)
    code, out = await desk_reconcile(run.desk, run.fake, "--json")
    report = json.loads(out) if out.strip().startswith("{") else {}
    row.reconcile = "clean" if code == 0 and report.get("clean") is True else f"exit {code}"
    assert not problems, "\n".join(problems)
    assert (row.lost, row.duplicated, row.over_filled) == (0, 0, 0)
    assert code == 0 and report.get("clean") is True, out
    assert (report["differences"], report["not_checked"]) == ([], [])


def fill_ids(stored: list[executions_pb2.ExecutionReport]) -> dict[str, int]:
    """Execution id -> fills in ``stored`` with it."""
    found: dict[str, int] = {}
    for report in stored:
        if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL):
            found[report.execution_id] = found.get(report.execution_id, 0) + 1
    return found


def crossed_qty(stored: list[executions_pb2.ExecutionReport], order_id: str) -> Decimal:
    return sum(
        (
            Decimal(r.fill_qty)
            for r in stored
            if r.order_id == order_id and r.fill_qty and r.text.startswith("internal cross")
        ),
        Decimal(0),
    )


async def reports(run: Run) -> list[executions_pb2.ExecutionReport]:
    """Every report of the case's symbol in EXECUTIONS (an ordered consumer over the stream)."""
    assert run.desk.nc is not None
    js = run.desk.nc.jetstream()
    last = (await js.stream_info(subjects.STREAM_EXECUTIONS)).state.last_seq
    found: list[executions_pb2.ExecutionReport] = []
    sub = await js.subscribe(subjects.EXEC_ALL, stream=subjects.STREAM_EXECUTIONS, ordered_consumer=True)
    try:
        seq = 0
        while seq < last:
            msg = await sub.next_msg(timeout=10)
            seq = msg.metadata.sequence.stream
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            if report.symbol == run.symbol:
                found.append(report)
    finally:
        await sub.unsubscribe()
    return found


async def ledger_orders(run: Run) -> dict[str, ledger_pb2.OrderRecord]:
    assert run.desk.nc is not None
    found: dict[str, ledger_pb2.OrderRecord] = {}
    for strategy_id in ("alpha", "bravo"):
        reply = await request(
            run.desk.nc,
            subjects.LEDGER_ORDERS,
            ledger_pb2.LedgerQuery(strategy_id=strategy_id, symbol=run.symbol, limit=100),
            ledger_pb2.OrdersReply,
            timeout=10,
        )
        found.update({o.order_id: o for o in reply.orders})
    return found


async def ledger_equals_account(run: Run, problems: list[str]) -> None:
    """The ledger's positions per symbol (summed over strategies) and its cash flow = the fake account's."""
    assert run.desk.nc is not None
    positions = await request(
        run.desk.nc,
        subjects.LEDGER_POSITIONS,
        ledger_pb2.LedgerQuery(limit=1000),
        ledger_pb2.PositionsReply,
        timeout=10,
    )
    pnl = await request(
        run.desk.nc, subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(limit=1000), ledger_pb2.PnlReply, timeout=10
    )
    ledger: dict[str, Decimal] = {}
    for p in positions.positions:
        ledger[p.symbol] = ledger.get(p.symbol, Decimal(0)) + Decimal(p.qty)
    account = run.fake.call(lambda: {s: q for s, (q, _) in run.fake.positions.items()})
    for symbol in sorted(set(ledger) | set(account)):
        if ledger.get(symbol, Decimal(0)) != account.get(symbol, Decimal(0)):
            problems.append(f"position {symbol}: ledger {ledger.get(symbol)}, account {account.get(symbol)}")
    flow = sum((Decimal(r.cash) - Decimal(r.initial_cash) for r in pnl.strategies), Decimal(0))
    cash = run.fake.call(lambda: run.fake.cash) - FAKE_CASH
    if flow != cash:
        problems.append(f"cash: ledger flow {flow}, account change {cash}")


# --- the matrix ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_kill_9_of_the_gateway_during_netting(case: Case, desk: Desk, fake: FakeAlpaca, rows: list[Row]) -> None:
    run = Run(desk, fake, case.symbol, tag=case.id.replace("-", "")[:20] + "x")
    row = Row(case)
    rows.append(row)
    began = time.monotonic()
    try:
        await case.drive(run)
        await finish(run)
        await check(run, row)
    finally:
        row.seconds = time.monotonic() - began
        for gate in list(fake.call(lambda: list(fake.gates))):
            fake.release(gate)  # a failed case leaves no request held for the next one
        fake.clear_injections()
        fake.allow_trade_streams()
        fake.open_market()
        gateway = desk.services[GATEWAY].process
        if gateway is None or gateway.returncode is not None:  # a case that failed between kill and restart
            await desk.restart(GATEWAY)
            await desk.wait_ready(GATEWAY)
