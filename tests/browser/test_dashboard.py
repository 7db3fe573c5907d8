"""The dashboard in headless Chromium against a running embedded desk: the leaderboard ranks the
strategies that traded, a new fill shows up without a reload, member-controlled text stays text,
the desk page shows services, kill switch and prices, and the kill switch refuses anyone who is
not a logged-in operator."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from decimal import Decimal
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client
from playwright.async_api import Browser, Page, expect

from desk.bus import codec, subjects
from desk.bus.request import request
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, orders_pb2
from tests.browser.conftest import CHROMIUM, OPERATOR_PASSWORD, PROBE, PROBE_LOG, PROBE_MEMBER, PROBE_NAME, RunningDesk
from tests.support import LEDGER_ACKS, follow, follow_executions, ledger_caught_up

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]

WAIT_MS = 30_000
FILL_TYPES = (executions_pb2.EXEC_TYPE_FILL, executions_pb2.EXEC_TYPE_PARTIAL_FILL)


async def submit_probe_order(nc: Client, client_order_id: str) -> orders_pb2.OrderAck:
    return await request(
        nc,
        subjects.order_submit(PROBE),
        orders_pb2.OrderRequest(
            strategy_id=PROBE,
            client_order_id=client_order_id,
            symbol="AAPL",
            side=common_pb2.SIDE_BUY,
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            qty="1",
        ),
        orders_pb2.OrderAck,
    )


async def probe_fill_booked(nc: Client, client_order_id: str) -> None:
    """Send a probe order and return once the ledger has booked its fill (acked it on EXECUTIONS).

    The fill is read from the stream, not a core subscription: a core subscriber can see a report
    before JetStream has stored it, and then "everything stored is acked" would not cover it."""
    executions = await follow_executions(nc)
    acks = await follow(nc, LEDGER_ACKS)
    ack = await submit_probe_order(nc, client_order_id)
    assert ack.accepted, ack.message
    async with asyncio.timeout(30):
        while True:
            msg = await executions.get()
            report = codec.decode(msg.data, executions_pb2.ExecutionReport, msg.headers)
            if report.client_order_id == client_order_id and report.exec_type == executions_pb2.EXEC_TYPE_FILL:
                break
    await ledger_caught_up(nc, acks, timeout=30)


async def live_page(browser: Browser, url: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    assert not errors, errors
    return page


async def test_the_leaderboard_ranks_the_strategies_that_have_traded(
    running_desk: RunningDesk, browser: Browser
) -> None:
    nc = await nats.connect(running_desk.nats_url)
    try:
        await probe_fill_booked(nc, f"rank-{uuid.uuid4().hex[:12]}")
        pnl = await request(nc, subjects.LEDGER_PNL, ledger_pb2.LedgerQuery(), ledger_pb2.PnlReply)
    finally:
        await nc.close()
    traded = {row.strategy_id for row in pnl.strategies if row.fills > 0}
    assert PROBE in traded

    page = await live_page(browser, running_desk.url + "/")
    rows = page.locator("#strategies-board tbody tr")
    await expect(rows.filter(has_text=PROBE)).to_have_count(1, timeout=WAIT_MS)
    table = await rows.evaluate_all("rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    shown = {cells[1]: cells for cells in table}
    assert traded <= set(shown), f"traded {traded}, shown {set(shown)}"
    assert [int(cells[0]) for cells in table] == list(range(1, len(table) + 1))
    returns = [Decimal(cells[3]) for cells in table]
    assert returns == sorted(returns, reverse=True), "not ranked by return"
    probe = shown[PROBE]
    assert probe[2] == PROBE_MEMBER and int(probe[8]) >= 1  # member, trades
    members = await page.locator("#members-board tbody tr td:nth-child(2)").all_text_contents()
    assert PROBE_MEMBER in members
    # The link to the strategy page works and the page shows its equity curve with a benchmark.
    await page.click(f'#strategies-board a[href="/strategy/{PROBE}"]')
    await expect(page.locator("#strategy-id")).to_have_text(PROBE)
    await expect(page.locator("#equity-chart canvas")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.locator("#benchmark-note")).to_contain_text("buy-and-hold of AAPL")
    await page.close()


async def test_a_new_fill_appears_without_a_reload(running_desk: RunningDesk, browser: Browser) -> None:
    board = await live_page(browser, running_desk.url + "/")
    strategy = await live_page(browser, f"{running_desk.url}/strategy/{PROBE}")
    for page in (board, strategy):
        await page.evaluate("window.__notReloaded = true")
    client_order_id = f"live-{uuid.uuid4().hex[:12]}"
    nc = await nats.connect(running_desk.nats_url)
    try:
        ack = await submit_probe_order(nc, client_order_id)
        assert ack.accepted, ack.message
    finally:
        await nc.close()
    await expect(board.locator("#live-fills tbody tr", has_text=client_order_id)).to_have_count(1, timeout=WAIT_MS)
    await expect(strategy.locator("#fills tbody tr", has_text=client_order_id)).to_have_count(1, timeout=WAIT_MS)
    # The orders table is refreshed from the ledger once it has booked the fill.
    await expect(strategy.locator("#orders tbody tr", has_text=client_order_id)).to_contain_text(
        "filled", timeout=WAIT_MS
    )
    for page in (board, strategy):
        assert await page.evaluate("window.__notReloaded === true"), "the page was reloaded"
        await page.close()


async def test_member_controlled_text_is_shown_as_text(running_desk: RunningDesk, browser: Browser) -> None:
    page = await live_page(browser, f"{running_desk.url}/strategy/{PROBE}")
    await expect(page.locator("h1 small")).to_have_text(PROBE_NAME)
    await expect(page.locator("h1 b")).to_have_count(0)
    await expect(page.locator("#logs")).to_contain_text(PROBE_LOG, timeout=WAIT_MS)
    assert await page.locator("#logs img").count() == 0
    assert await page.title() != "pwned"
    await page.close()


async def test_the_desk_page_shows_service_health_the_kill_switch_and_last_prices(
    running_desk: RunningDesk, browser: Browser
) -> None:
    page = await live_page(browser, running_desk.url + "/desk")
    for name in ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator", "dashboard"):
        await expect(page.locator(f'#services tr[data-service="{name}"] td:nth-child(2)')).to_have_text("up")
    await expect(page.locator("#kill-switch")).to_have_text("trading: orders accepted")
    # The dashboard is itself a NATS micro service; its INFO says where it serves.
    nc = await nats.connect(running_desk.nats_url)
    try:
        info = json.loads((await nc.request("$SRV.INFO.dashboard", b"", timeout=5)).data)
    finally:
        await nc.close()
    assert info["metadata"]["url"] == running_desk.url + "/"
    prices = page.locator("#prices tbody tr[data-symbol]")
    assert await prices.count() >= 1
    aapl = page.locator('#prices tr[data-symbol="AAPL"] td.price')
    first = await aapl.text_content()
    assert first and Decimal(first) > 0
    # Prices move live: the synthetic feed trades every 0.25 s.
    await expect(aapl).not_to_have_text(first, timeout=WAIT_MS)
    await page.close()


async def risk_status(nats_url: str) -> orders_pb2.HaltAck:
    nc = await nats.connect(nats_url)
    try:
        return await request(nc, subjects.RISK_STATUS, orders_pb2.HaltRequest(), orders_pb2.HaltAck)
    finally:
        await nc.close()


async def test_an_unauthenticated_kill_switch_request_is_refused(running_desk: RunningDesk, browser: Browser) -> None:
    page = await live_page(browser, running_desk.url + "/desk")
    await page.click("#halt-button")
    await expect(page.locator("#op-result")).to_have_text("refused (401): operator login required", timeout=WAIT_MS)
    # The same request made by hand (no cookie, no CSRF token) is refused too.
    response = await page.request.post(running_desk.url + "/operator/risk/halt", form={"reason": "x"})
    assert response.status == 401
    assert not (await risk_status(running_desk.nats_url)).global_halted
    await expect(page.locator("#kill-switch")).to_have_text("trading: orders accepted")
    await page.close()


async def test_a_logged_in_operator_halts_and_resumes_the_desk(running_desk: RunningDesk, browser: Browser) -> None:
    page = await live_page(browser, running_desk.url + "/login")
    await page.fill('input[name="password"]', "not the password")
    await page.click('button[type="submit"]')
    await expect(page.locator("#login-error")).to_have_text("wrong password")
    await page.fill('input[name="password"]', OPERATOR_PASSWORD)
    await page.click('button[type="submit"]')
    await page.wait_for_url(running_desk.url + "/desk")
    try:
        # A logged-in request without the page's CSRF token is still refused.
        forged = await page.evaluate("fetch('/operator/risk/halt', {method: 'POST'}).then(r => r.status)")
        assert forged == 403
        assert not (await risk_status(running_desk.nats_url)).global_halted

        await page.click("#halt-button")
        await expect(page.locator("#kill-switch")).to_have_text("HALTED: new orders refused", timeout=WAIT_MS)
        assert (await risk_status(running_desk.nats_url)).global_halted
    finally:
        await page.click("#resume-button")
        await expect(page.locator("#kill-switch")).to_have_text("trading: orders accepted", timeout=WAIT_MS)
    assert not (await risk_status(running_desk.nats_url)).global_halted
    await page.close()


async def test_screenshots_of_every_page(running_desk: RunningDesk, browser: Browser, tmp_path: Path) -> None:
    """Each page renders in full; with DASHBOARD_SCREENSHOT_DIR set (docs/screenshots) they are kept
    (strategy.png and member.png: test_members.py, after trades that put markers on the chart)."""
    target = Path(os.environ.get("DASHBOARD_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    nc = await nats.connect(running_desk.nats_url)
    try:
        await probe_fill_booked(nc, f"shot-{uuid.uuid4().hex[:12]}")
    finally:
        await nc.close()
    shots = {
        "leaderboard.png": ("/", "#strategies-board tbody tr[data-key]"),
        "desk.png": ("/desk", "#prices tbody tr[data-symbol]"),
    }
    for name, (path, ready) in shots.items():
        page = await live_page(browser, running_desk.url + path)
        await expect(page.locator(ready).first).to_be_visible(timeout=WAIT_MS)
        if name == "leaderboard.png":
            await expect(page.locator("#live-fills tbody tr[data-execution]").first).to_be_visible(timeout=WAIT_MS)
        await page.screenshot(path=str(target / name), full_page=True)
        await page.close()
        assert (target / name).stat().st_size > 10_000
