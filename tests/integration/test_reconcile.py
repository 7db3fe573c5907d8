"""``desk reconcile`` against the fake Alpaca: the real gateway (alpaca-py), the real ledger (SQLite),
a real nats-server; clean after crosses and Alpaca's partial fills, then every injected difference
named on its own line (a fill the ledger never booked, a cash movement, an order the desk did not place)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client

from desk import reconcile
from desk.bus import kv as desk_kv
from desk.bus import subjects
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.core.ids import alpaca_execution_id, alpaca_fill_execution_id, order_id_for
from desk.v1 import common_pb2, ledger_pb2, strategy_pb2
from services.broker_gateway.brokers.alpaca_book import canonical, execution_id, parse_client_order_id
from services.ledger.service import LedgerService
from services.ledger.settings import Settings as LedgerSettings
from tests.fakes.alpaca import FakeAlpaca
from tests.integration.test_alpaca_gateway import Gateway, Reports, oid, quote, route, routed, start_gateway

pytestmark = pytest.mark.integration

TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices={"AAPL": "100"}) as server:
        yield server


@pytest.fixture
async def reports(nc: Client) -> AsyncIterator[Reports]:
    sub = await nc.jetstream().subscribe("desk.exec.>", ordered_consumer=True)
    try:
        yield Reports(sub)
    finally:
        await sub.unsubscribe()


class Desk:
    """The ledger and the Alpaca gateway in process, two strategies' specs in DESK_STRATEGIES."""

    def __init__(self, nats_server: NatsServer, nc: Client, fake: FakeAlpaca, tmp_path: Path) -> None:
        self.nats_server, self.nc, self.fake, self.tmp_path = nats_server, nc, fake, tmp_path
        self.ledger: LedgerService | None = None
        self.ledger_proc: InProcessService | None = None
        self.gateway: Gateway | None = None
        self.baseline = tmp_path / "baseline.json"
        self.since = time.time_ns() - 1_000_000_000

    async def start(self) -> None:
        await self.nc.jetstream().key_value(subjects.KV_STRATEGIES)
        for strategy, member in (("alpha", "alice"), ("beta", "bob")):
            spec = strategy_pb2.StrategySpec(strategy_id=strategy, member_id=member, initial_cash="100000")
            await desk_kv.put(self.nc.jetstream(), subjects.KV_STRATEGIES, strategy, spec)
        settings = LedgerSettings(
            nats_url=self.nats_server.url, ledger_db_path=str(self.tmp_path / "ledger.db"), drain_timeout=5
        )
        self.ledger = LedgerService(settings)
        self.ledger_proc = await run_in_process("ledger", settings, self.ledger.start)
        self.gateway = await start_gateway(self.nats_server, self.fake)

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.service.stop()
        if self.ledger_proc is not None:
            await self.ledger_proc.stop()

    async def booked(self) -> None:
        """Until the ledger has stored every report in EXECUTIONS."""
        assert self.ledger is not None
        stored = (await self.nc.jetstream().stream_info(subjects.STREAM_EXECUTIONS)).state.messages
        await self.ledger.wait_for(lambda s: s.messages >= stored, timeout=TIMEOUT)

    async def check(self, baseline: reconcile.Baseline | None = None) -> reconcile.Result:
        client = reconcile.make_trading_client(self.fake.key, self.fake.secret, rest_url=self.fake.rest_url)
        account = await asyncio.to_thread(reconcile.fetch_account, client, self.since)
        books = await reconcile.fetch_books(self.nc, self.since)
        return reconcile.check(books, account, self.since, baseline)

    async def cli(self, *args: str) -> tuple[int, str]:
        """``desk reconcile`` as a user runs it, keys in the environment."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ALPACA_", "NATS_"))}
        env.update(
            PYTHONPATH=str(ROOT),
            ALPACA_API_KEY=self.fake.key,
            ALPACA_SECRET_KEY=self.fake.secret,
            ALPACA_REST_URL=self.fake.rest_url,
            COLUMNS="400",
        )
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "desk.cli",
            "--nats-url",
            self.nats_server.url,
            "--credentials",
            str(self.tmp_path / "none.json"),
            "reconcile",
            "--baseline",
            str(self.baseline),
            "--since",
            reconcile._iso(self.since),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode() + err.decode()


@pytest.fixture
async def desk(nats_server: NatsServer, nc: Client, fake: FakeAlpaca, tmp_path: Path) -> AsyncIterator[Desk]:
    running = Desk(nats_server, nc, fake, tmp_path)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()


async def trade_two_strategies(desk: Desk, reports: Reports) -> None:
    """alpha buys 10 (limit 101), beta sells 6 at market: 6 crossed inside the desk at the Alpaca
    quote's mid 100, alpha's other 4 re-placed and filled by Alpaca in two parts; beta sells 2 more at Alpaca."""
    assert desk.gateway is not None
    nc, fake = desk.nc, desk.fake
    await quote(nc, desk.gateway, "AAPL", "99.5", "100.5")
    await route(nc, routed("a-buy", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="101", qty="10"))
    await reports.until(lambda r: r.order_id == oid("a-buy"))
    await route(nc, routed("b-sell", strategy="beta", side=common_pb2.SIDE_SELL, qty="6"))
    await reports.until(lambda r: r.order_id == oid("b-sell", "beta") and bool(r.fill_qty))
    await route(nc, routed("b-sell2", strategy="beta", side=common_pb2.SIDE_SELL, qty="2", symbol="MSFT"))
    fake.set_price("MSFT", "50")
    await reports.until(lambda r: r.order_id == oid("b-sell2", "beta") and bool(r.fill_qty))
    fake.fill("alpha.c-a-buy.2", "1", "100.5")
    fake.fill("alpha.c-a-buy.2", "3", "100.25")
    await reports.until(lambda r: r.order_id == oid("a-buy") and r.cum_qty == "10")
    await desk.booked()


def test_the_reconcile_computes_the_gateways_execution_ids_and_reads_its_client_order_ids() -> None:
    # one formula (desk.core.ids), used by the gateway and the reconcile alike; pinned here
    assert reconcile.desk_order_of is parse_client_order_id and execution_id is alpaca_execution_id
    for alpaca_id, cum, text in (
        ("9c7a-1", Decimal(4), "4"),
        ("x", Decimal("10.50"), "10.5"),
        ("y", Decimal("1E+1"), "10"),
    ):
        want = str(uuid.uuid5(uuid.NAMESPACE_URL, f"alpaca:{alpaca_id}:fill:{text}"))
        assert alpaca_fill_execution_id(alpaca_id, cum) == execution_id(alpaca_id, "fill", canonical(cum)) == want
    for client_id, parsed in (
        ("alpha.c-1", ("alpha", "c-1")),
        ("alpha.c-1.2", ("alpha", "c-1")),
        ("manual", None),
        ("a.b.c", None),
        ("a..1", None),
        ("alpha.c-1.x", None),
    ):
        assert parse_client_order_id(client_id) == parsed
    now = 1_000_000 * 1_000_000_000
    assert reconcile.parse_since("90m", now) == now - 5400 * 1_000_000_000
    assert reconcile.parse_since("2026-12-01T09:30", now) == reconcile._ns("2026-12-01T09:30:00+00:00")


async def test_a_clean_desk_reconciles_on_every_check_and_the_cli_says_so(desk: Desk, reports: Reports) -> None:
    code, out = await desk.cli("--set-baseline")  # before any trade: account cash 1 000 000, ledger flow 0
    assert code == 0, out
    assert json.loads(desk.baseline.read_text())["account_cash"] == "1000000"
    await trade_two_strategies(desk, reports)

    result = await desk.check(reconcile.Baseline.load(desk.baseline))
    assert result.findings == [] and result.not_checked == []
    assert result.checked == ["positions", "cash", "fills", "attribution", "orders", "crosses"]

    code, out = await desk.cli("--json")
    assert code == 0, out
    report = json.loads(out)
    assert (report["clean"], report["differences"], report["not_checked"]) == (True, [], [])
    code, out = await desk.cli()
    assert code == 0 and out.splitlines()[0].startswith(
        "reconcile: ledger and alpaca agree (positions, cash, fills, attribution, orders, crosses; orders since "
    )


async def test_every_injected_difference_is_named_on_its_own_line_and_a_restarted_gateway_heals_the_fill(
    desk: Desk, reports: Reports
) -> None:
    assert desk.gateway is not None
    fake = desk.fake
    baseline_cash = fake.cash
    await trade_two_strategies(desk, reports)
    await route(desk.nc, routed("rest", strategy="alpha", type=common_pb2.ORDER_TYPE_LIMIT, limit_price="95", qty="5"))
    await reports.until(lambda r: r.order_id == oid("rest"))
    await desk.booked()
    baseline = reconcile.Baseline("3f7ae1a4-8a0d-4b4e-9f6e-6a4d2a8d7c11", baseline_cash, Decimal(0), desk.since)
    assert (await desk.check(baseline)).findings == []

    # 1. Alpaca fills 2 of alpha's resting order while no gateway listens: the ledger never books it
    await desk.gateway.service.stop()
    desk.gateway = None
    fake.fill("alpha.c-rest", "2", "95")
    # 2. the account's cash moves by itself (a fee the desk never saw)
    fake.call(lambda: setattr(fake, "cash", fake.cash - Decimal("1.25")))
    # 3. someone trades on the account outside the desk
    client = reconcile.make_trading_client(fake.key, fake.secret, rest_url=fake.rest_url)
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.requests import MarketOrderRequest

    manual = await asyncio.to_thread(
        client.submit_order,
        MarketOrderRequest(
            symbol="AAPL", qty=1, side=OrderSide.BUY, time_in_force=TimeInForce.DAY, client_order_id="by-hand"
        ),
    )

    result = await desk.check(baseline)
    rest_id = fake.order("alpha.c-rest").id
    when = reconcile._iso(desk.since)
    lines = [f.line() for f in result.findings]
    assert lines[:2] == [
        "position AAPL: ledger 4 (alpha 10, beta -6), alpaca 7, difference 3",
        (
            f"cash USD: the account's cash moved -592.5 since the baseline of {when}, the ledger's fills -301.25, "
            "difference -291.25"
        ),  # 2 x 95 unbooked, the 1.25 fee, the 100 of the order placed by hand
    ]
    assert lines[2].startswith("fill alpha.c-rest: Alpaca filled buy 2 AAPL @ 95 at ")
    assert lines[2].endswith(f" (alpaca order {rest_id}): not in the ledger")
    assert lines[3:] == [
        (
            f"attribution alpha.c-rest: filled 2 at Alpaca (order {rest_id}), the strategies' fills of it in the ledger "
            "add up to 0 (none)"
        ),
        f"order {manual.id}: buy 1 AAPL filled at Alpaca by an order the desk did not place (client_order_id 'by-hand')",
        (
            "order alpha/c-rest: the ledger says filled 0; Alpaca filled 2 @ 95 (alpha.c-rest) + crossed inside the desk 0 "
            "= 2 @ 95"
        ),
    ]

    # the CLI: every difference one per line, exit 1; --json for machines
    desk.baseline.write_text(baseline.to_json())
    code, out = await desk.cli()
    assert code == 1, out
    assert out.splitlines()[0] == "reconcile: 6 difference(s) between the ledger and alpaca:"
    assert [line.strip() for line in out.splitlines()[1:7]] == lines
    code, out = await desk.cli("--json")
    differences = json.loads(out)["differences"]
    assert code == 1 and [d["check"] for d in differences] == [
        "position",
        "cash",
        "fill",
        "attribution",
        "order",
        "order",
    ]
    assert differences[1]["difference"] == "-291.25" and differences[2]["alpaca_order_id"] == rest_id

    # a restarted gateway reconciles the missed fill into the ledger: what the desk did not do remains
    desk.gateway = await start_gateway(desk.nats_server, fake)
    await reports.until(lambda r: r.order_id == oid("rest") and bool(r.fill_qty))
    await desk.booked()
    healed = await desk.check(baseline)
    assert [f.line() for f in healed.findings] == [
        "position AAPL: ledger 6 (alpha 12, beta -6), alpaca 7, difference 1",
        (
            f"cash USD: the account's cash moved -592.5 since the baseline of {when}, the ledger's fills -491.25, "
            "difference -101.25"
        ),
        f"order {manual.id}: buy 1 AAPL filled at Alpaca by an order the desk did not place (client_order_id 'by-hand')",
    ]


def test_a_fill_booked_to_the_wrong_strategy_and_an_unbalanced_cross_are_differences() -> None:
    """The pure checks on hand-made sides: what a ledger could get wrong that the running desk never does."""
    since = 1_000 * 1_000_000_000
    order = reconcile.AlpacaOrder("A1", "alpha.c-1", "AAPL", "buy", "filled", Decimal(3), Decimal(10), since + 1)
    activity = reconcile.AlpacaFill("A1", "AAPL", "buy", Decimal(3), Decimal(10), Decimal(3), since + 2)
    exec_id = alpaca_fill_execution_id("A1", Decimal(3))
    beta_order = order_id_for("beta", "c-9")
    wrong = ledger_pb2.Fill(
        execution_id=exec_id,
        order_id=beta_order,
        client_order_id="c-9",
        strategy_id="beta",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        qty="3",
        price="10",
        venue="alpaca",
        event_ns=since + 2,
    )
    half_cross = ledger_pb2.Fill(
        execution_id="x1",
        order_id=beta_order,
        client_order_id="c-9",
        strategy_id="beta",
        symbol="MSFT",
        side=common_pb2.SIDE_SELL,
        qty="2",
        price="50",
        venue="alpaca",
        event_ns=since + 3,
    )
    alpha_record = ledger_pb2.OrderRecord(
        order_id=order_id_for("alpha", "c-1"),
        client_order_id="c-1",
        strategy_id="alpha",
        symbol="AAPL",
        filled_qty="3",
        avg_price="10",
        venue="alpaca",
        created_ns=since + 1,
    )
    books = reconcile.Books(
        positions=[ledger_pb2.Position(strategy_id="beta", symbol="AAPL", qty="3")],
        cash_flow=Decimal(70),
        orders=[alpha_record],
        fills=[wrong, half_cross],
    )
    account = reconcile.Account(
        positions=[ledger_pb2.Position(symbol="AAPL", qty="3")],
        cash=Decimal(970),
        account_id="acc",
        orders=[order],
        fills=[activity],
    )
    result = reconcile.check(books, account, since, reconcile.Baseline("acc", Decimal(1000), Decimal(0), since))
    assert [f.line() for f in result.findings] == [
        (
            "cash USD: the account's cash moved -30 since the baseline of 1970-01-01T00:16:40+00:00, the ledger's fills "
            "70, difference -100"
        ),
        (
            "fill alpha.c-1: Alpaca filled buy 3 AAPL @ 10 at 1970-01-01T00:16:40+00:00 (alpaca order A1): booked to "
            "beta/c-9, not alpha/c-1"
        ),
        "order alpha/c-1: the ledger's order says filled 3 @ 10, its fills add up to 0",
        (
            "cross MSFT: the internal crosses since 1970-01-01T00:16:40+00:00 do not balance: 1 fills, net -2 shares for "
            "100 USD (each cross is a buy and a sell of the same quantity at one price)"
        ),
    ]
    assert result.checked == ["positions", "cash", "fills", "attribution", "orders", "crosses"]


def test_without_keys_or_a_baseline_what_was_not_checked_is_said() -> None:
    account = reconcile.Account(positions=[ledger_pb2.Position(symbol="AAPL", qty="1")])
    books = reconcile.Books(
        positions=[ledger_pb2.Position(strategy_id="a", symbol="AAPL", qty="1")], cash_flow=Decimal(0)
    )
    result = reconcile.check(books, account, 0)
    assert result.clean and result.checked == ["positions"]
    assert result.not_checked == [
        "cash: the account's cash or the ledger's P&L was not read",
        (
            "fills, orders, attribution, crosses: the alpaca account's orders and fills were not read "
            "(ALPACA_API_KEY/ALPACA_SECRET_KEY are not set here)"
        ),
    ]
    assert result.lines("alpaca")[1:] == [f"  not checked: {r}" for r in result.not_checked]
