"""Issue 15 items 1 and 4 on the dashboard, in headless Chromium against a running embedded desk.

Members alice (owns ma_crossover) and bob (owns mean_reversion) get logins from the operator (the
orchestrator's ``desk.ctl.member.add``, as ``desk member add`` sends it). Alice logs in from a
second browser (her own context: no operator cookie), sees controls on her strategy only, stops and
starts it, halts and resumes it (its page shows HALTED meanwhile); a stop or a halt of bob's
strategy forged from her session is refused by the desk (403 with the orchestrator's NOT_YOURS), not
just hidden. The member page and the strategy page draw their charts
(equity, drawdown, price with trade markers), unknown names answer 404 without bus errors, and a
390 px phone viewport does not overflow. Screenshots: member.png and strategy.png.
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from playwright.async_api import Browser, BrowserContext, Page, expect

from desk.bus import auth, subjects
from desk.bus.request import request
from desk.v1 import common_pb2, orders_pb2, strategy_pb2
from tests.browser.conftest import CHROMIUM, PROBE, RunningDesk
from tests.browser.test_dashboard import probe_fill_booked
from tests.support import LEDGER_ACKS, follow, ledger_caught_up, poll

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]

WAIT_MS = 60_000  # generous: the suite may run beside CPU burners
PASSWORDS = {"alice": "alice-" + uuid.uuid4().hex, "bob": "bob-" + uuid.uuid4().hex}
OWN = {"alice": "ma_crossover", "bob": "mean_reversion"}
_members_added: set[str] = set()
TEST_BOUND = 300.0  # seconds a whole test may take: a hang fails with the line it hung on


def bounded(test: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        async with asyncio.timeout(TEST_BOUND):
            await test(*args, **kwargs)

    return run


async def add_members(desk: RunningDesk) -> None:
    """The operator gives alice and bob logins (once per desk), and waits until the server takes them."""
    if _members_added == set(PASSWORDS):
        return
    nc = await nats.connect(desk.nats_url)
    try:
        for member, password in PASSWORDS.items():
            await request(
                nc,
                subjects.CTL_MEMBER_ADD,
                strategy_pb2.MemberRequest(member_id=member, password_hash=auth.hash_password(password)),
                strategy_pb2.MemberList,
                timeout=30,
            )
    finally:
        await nc.close()
    port = desk.nats_url.rsplit(":", 1)[1]

    async def can_connect() -> bool | None:
        member_nc = Client()
        try:
            await member_nc.connect(
                f"nats://127.0.0.1:{port}",
                user=auth.member_user("alice"),
                password=PASSWORDS["alice"],
                allow_reconnect=False,
                connect_timeout=5,
            )
        except Exception:  # noqa: BLE001 - not reloaded yet: try again
            return None
        finally:
            await member_nc.close()  # also a refused attempt's socket (nats-py keeps it otherwise)
        return True

    await poll(can_connect, "alice's login accepted by nats-server", timeout=60, every=0.5)
    _members_added.update(PASSWORDS)


async def state_of(nc: Client, strategy_id: str) -> str:
    reply = await request(
        nc, subjects.CTL_STATUS, strategy_pb2.StrategyControl(strategy_id=strategy_id), strategy_pb2.StrategyStatusList
    )
    return strategy_pb2.StrategyState.Name(reply.strategies[0].state) if reply.strategies else ""


async def risk_status(nc: Client) -> orders_pb2.HaltAck:
    return await request(nc, subjects.RISK_STATUS, orders_pb2.HaltRequest(), orders_pb2.HaltAck)


async def new_page(context: BrowserContext, url: str) -> Page:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(url)
    await expect(page.locator("#live-status")).to_have_text("live", timeout=WAIT_MS)
    assert not errors, errors
    return page


async def log_in(context: BrowserContext, desk: RunningDesk, member: str) -> Page:
    page = await new_page(context, desk.url + "/member/login")
    await page.fill('input[name="name"]', member)
    await page.fill('input[name="password"]', PASSWORDS[member])
    await page.click('button[type="submit"]')
    await page.wait_for_url(f"{desk.url}/members/{member}", timeout=WAIT_MS)
    await expect(page.locator("#session-member")).to_have_text(member)
    return page


async def post_control(page: Page, strategy_id: str, action: str, with_csrf: bool = True) -> tuple[int, str]:
    """A control POST made by hand from the member's page (her cookie; the page's CSRF token)."""
    result = await page.evaluate(
        """async ([url, withCsrf]) => {
            const csrf = document.querySelector('meta[name="csrf-token"]').content;
            const r = await fetch(url, {method: 'POST', headers: withCsrf ? {'X-CSRF-Token': csrf} : {}});
            return [r.status, (await r.json()).error || ''];
        }""",
        [f"/member/strategy/{strategy_id}/{action}", with_csrf],
    )
    return int(result[0]), str(result[1])


@bounded
async def test_a_member_logs_in_and_controls_only_her_own_strategies(
    running_desk: RunningDesk, browser: Browser
) -> None:
    await add_members(running_desk)
    context = await browser.new_context(viewport={"width": 1280, "height": 900})  # a second client
    admin = await nats.connect(running_desk.nats_url)
    try:
        page = await new_page(context, running_desk.url + "/member/login")
        await page.fill('input[name="name"]', "alice")
        await page.fill('input[name="password"]', "not her password")
        await page.click('button[type="submit"]')
        await expect(page.locator("#login-error")).to_have_text("wrong member name or password", timeout=WAIT_MS)
        await page.close()

        page = await log_in(context, running_desk, "alice")
        own, other = OWN["alice"], OWN["bob"]
        await expect(page.locator(f'#member-strategies tr[data-strategy="{own}"] .op-control')).to_have_count(5)
        await expect(page.locator(f'.op-control[data-strategy="{other}"]')).to_have_count(0)
        await expect(page.locator(f'pre[data-logs="{own}"]')).to_have_count(1)  # her own logs, read as her
        # Her strategy's page has her controls; bob's has none.
        await page.goto(f"{running_desk.url}/strategy/{other}")
        await expect(page.locator("#strategy-id")).to_have_text(other)
        await expect(page.locator(".op-control")).to_have_count(0)
        await page.goto(f"{running_desk.url}/strategy/{own}")
        await expect(page.locator(".op-control")).to_have_count(5)  # start, stop, restart, halt, resume

        await page.click('.op-control[data-action="stop"]')
        await expect(page.locator("#op-result")).to_have_text(f"stop {own}", timeout=WAIT_MS)
        assert await state_of(admin, own) == "STRATEGY_STATE_STOPPED"

        # A stop of bob's strategy forged from alice's session: the desk refuses it, not the page.
        # (Bob's is compared with itself: on a loaded machine it may have crashed on its own.)
        before = await state_of(admin, other)
        assert before != "STRATEGY_STATE_STOPPED", before
        status, error = await post_control(page, other, "stop")
        assert status == 403, (status, error)
        assert "NOT_YOURS" in error and other in error, error
        assert await state_of(admin, other) != "STRATEGY_STATE_STOPPED"
        assert (await post_control(page, other, "stop", with_csrf=False))[0] == 403

        await page.click('.op-control[data-action="start"]')
        await expect(page.locator("#op-result")).to_have_text(f"start {own}", timeout=WAIT_MS)
        assert await state_of(admin, own) == "STRATEGY_STATE_RUNNING"

        # Her kill switch: the router holds the halt, her page and her member page show it.
        await expect(page.locator("#halt-state")).to_have_text("open")
        await page.click('.op-control[data-action="halt"]')
        await expect(page.locator("#op-result")).to_have_text(f"halted {own}", timeout=WAIT_MS)
        assert own in (await risk_status(admin)).halted_strategies
        await expect(page.locator("#halt-state")).to_have_text("HALTED", timeout=WAIT_MS)
        await page.goto(f"{running_desk.url}/members/alice")
        badge = page.locator(f'#member-strategies tr[data-strategy="{own}"] .halt-state')
        await expect(badge).to_have_text("halted", timeout=WAIT_MS)
        status, error = await post_control(page, other, "halt")  # bob's, forged: the desk refuses it
        assert status == 403 and "NOT_YOURS" in error, (status, error)
        assert other not in (await risk_status(admin)).halted_strategies
        await page.click(f'#member-strategies tr[data-strategy="{own}"] .op-control[data-action="resume"]')
        await expect(page.locator("#op-result")).to_have_text(f"resumed {own}", timeout=WAIT_MS)
        assert own not in (await risk_status(admin)).halted_strategies
        await expect(badge).to_have_text("open", timeout=WAIT_MS)

        # Logout closes her connection: the same session cannot act any more.
        await page.click('#session form button[type="submit"]')
        await page.wait_for_url(running_desk.url + "/")
        response = await page.request.post(f"{running_desk.url}/member/strategy/{own}/stop")
        assert response.status == 401
    finally:
        if OWN["alice"] in (await risk_status(admin)).halted_strategies:
            await request(
                admin, subjects.RISK_RESUME, orders_pb2.HaltRequest(strategy_id=OWN["alice"]), orders_pb2.HaltAck
            )
        if await state_of(admin, OWN["alice"]) != "STRATEGY_STATE_RUNNING":
            await request(
                admin,
                subjects.CTL_START,
                strategy_pb2.StrategyControl(strategy_id=OWN["alice"]),
                strategy_pb2.StrategyStatusList,
                timeout=60,
            )
        await admin.close()
        await context.close()


async def probe_sell_booked(nc: Client) -> None:
    acks = await follow(nc, LEDGER_ACKS)
    ack = await request(
        nc,
        subjects.order_submit(PROBE),
        orders_pb2.OrderRequest(
            strategy_id=PROBE,
            client_order_id=f"sell-{uuid.uuid4().hex[:12]}",
            symbol="AAPL",
            side=common_pb2.SIDE_SELL,
            type=common_pb2.ORDER_TYPE_MARKET,
            time_in_force=common_pb2.TIME_IN_FORCE_DAY,
            qty="1",
        ),
        orders_pb2.OrderAck,
    )
    assert ack.accepted, ack.message
    await ledger_caught_up(nc, acks, timeout=60)


async def trades_booked(desk: RunningDesk) -> None:
    """Two buys and a sell of the probe, booked: the price chart has markers of both kinds."""
    nc = await nats.connect(desk.nats_url)
    try:
        await probe_fill_booked(nc, f"mark-{uuid.uuid4().hex[:12]}")
        await asyncio.sleep(1.0)  # a later snapshot and price between the trades
        await probe_fill_booked(nc, f"mark-{uuid.uuid4().hex[:12]}")
        await probe_sell_booked(nc)
    finally:
        await nc.close()


def screenshot_dir(tmp_path: Path) -> Path:
    target = Path(os.environ.get("DASHBOARD_SCREENSHOT_DIR") or tmp_path)
    target.mkdir(parents=True, exist_ok=True)
    return target


@bounded
async def test_the_strategy_page_draws_drawdown_and_trade_markers_and_links_its_report(
    running_desk: RunningDesk, browser: Browser, tmp_path: Path
) -> None:
    await trades_booked(running_desk)
    reports = running_desk.data_dir / "reports"
    reports.mkdir(exist_ok=True)
    (reports / f"{PROBE}.html").write_text(
        "<!doctype html><title>report</title><p id=r>backtest of the probe</p>"
        "<script>document.getElementById('r').dataset.ran = 'yes'</script>"
    )
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await new_page(context, f"{running_desk.url}/strategy/{PROBE}")
        for chart in ("#equity-chart", "#drawdown-chart", "#price-chart"):
            await expect(page.locator(f"{chart} canvas")).to_have_count(1, timeout=WAIT_MS)
        price = page.locator("#price-chart")
        buys = int(await price.get_attribute("data-buys") or 0)
        sells = int(await price.get_attribute("data-sells") or 0)
        assert buys >= 2 and sells >= 1, (buys, sells)
        # Prices to the cent, quantities without trailing zeros.
        cells = await page.locator("#fills tbody tr td:nth-child(6)").all_text_contents()
        assert cells and all(len(c.split(".")[-1]) == 2 for c in cells), cells
        qtys = await page.locator("#fills tbody tr td:nth-child(5)").all_text_contents()
        assert qtys and all(q == "1" for q in qtys), qtys
        await page.screenshot(path=str(screenshot_dir(tmp_path) / "strategy.png"), full_page=True)
        # The backtest report: linked, served with its own (sandboxed) CSP so its inline script runs.
        await page.click("#backtest-report")
        await expect(page.locator("#r")).to_have_attribute("data-ran", "yes", timeout=WAIT_MS)
        await page.close()
        page = await new_page(context, f"{running_desk.url}/strategy/{OWN['bob']}")
        await expect(page.locator("#backtest-report")).to_have_count(0)
        await page.close()
    finally:
        await context.close()


@bounded
async def test_the_member_page_shows_combined_equity_books_and_logs_only_to_the_member(
    running_desk: RunningDesk, browser: Browser, tmp_path: Path
) -> None:
    await add_members(running_desk)
    anonymous = await browser.new_context(viewport={"width": 1280, "height": 900})
    alice = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        board = await new_page(anonymous, running_desk.url + "/")
        await board.click('#members-board a[href="/members/alice"], #untraded-members a[href="/members/alice"]')
        await board.wait_for_url(running_desk.url + "/members/alice")
        await expect(board.locator("#member-strategies tbody tr")).to_have_count(1)
        await expect(board.locator('#member-strategies a[href="/strategy/ma_crossover"]')).to_have_count(1)
        for chart in ("#equity-chart", "#drawdown-chart"):
            await expect(board.locator(f"{chart} canvas")).to_have_count(1, timeout=WAIT_MS)
        await expect(board.locator("pre[data-logs]")).to_have_count(0)  # not hers: no logs
        await expect(board.locator(".op-control")).to_have_count(0)
        await board.close()

        page = await log_in(alice, running_desk, "alice")
        await expect(page.locator("#equity-chart canvas")).to_have_count(1, timeout=WAIT_MS)
        await expect(page.locator("#positions")).to_be_visible()
        await expect(page.locator("#orders")).to_be_visible()
        await expect(page.locator("#fills")).to_be_visible()
        await page.screenshot(path=str(screenshot_dir(tmp_path) / "member.png"), full_page=True)
        # Bob's page, seen by alice: no controls, no logs.
        await page.goto(running_desk.url + "/members/bob")
        await expect(page.locator("#member-id")).to_have_text("bob")
        await expect(page.locator(".op-control")).to_have_count(0)
        await expect(page.locator("pre[data-logs]")).to_have_count(0)
        await page.click('#session form button[type="submit"]')
        await page.wait_for_url(running_desk.url + "/")  # the logout's navigation done before the page closes
        await page.close()
    finally:
        await anonymous.close()
        await alice.close()


@bounded
async def test_the_leaderboard_ranks_only_what_has_traded(running_desk: RunningDesk, browser: Browser) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        page = await new_page(context, running_desk.url + "/")
        rows = page.locator("#strategies-board tbody tr[data-key]")
        await expect(rows.first).to_be_visible(timeout=WAIT_MS)
        table = await rows.evaluate_all("rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
        assert all(int(cells[8]) >= 1 for cells in table), table
        ranked = {cells[1] for cells in table}
        apart = set(await page.locator("#untraded-strategies a").all_text_contents())
        assert not ranked & apart, (ranked, apart)
        # Member rows link to the member's page.
        members = page.locator("#members-board tbody tr[data-key] td:nth-child(2) a")
        assert await members.count() >= 1
        href = await members.first.get_attribute("href")
        assert href and href.startswith("/members/")
        await page.close()
    finally:
        await context.close()


@bounded
async def test_unknown_names_answer_404_without_bus_errors(running_desk: RunningDesk, browser: Browser) -> None:
    context = await browser.new_context()
    try:
        page = await context.new_page()
        for path in ("/strategy/no_such_strategy", "/members/nobody-here", "/strategy/Not!AnId", "/api/strategy/nope"):
            response = await page.goto(running_desk.url + path)
            assert response is not None and response.status == 404, path
            text = await page.content()
            assert "desk.ctl" not in text and "desk.ledger" not in text and "NOT_FOUND" not in text, (path, text)
        await page.goto(running_desk.url + "/strategy/no_such_strategy")
        await expect(page.locator("#not-found")).to_contain_text("no strategy called 'no_such_strategy'")
        await page.close()
    finally:
        await context.close()


@bounded
async def test_pages_fit_a_phone(running_desk: RunningDesk, browser: Browser) -> None:
    context = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        for path, ready in (
            ("/", "#strategies-board"),
            ("/members/alice", "#equity-chart canvas"),
            (f"/strategy/{PROBE}", "#price-chart canvas"),
            ("/desk", "#services"),
        ):
            page = await new_page(context, running_desk.url + path)
            await expect(page.locator(ready)).to_be_visible(timeout=WAIT_MS)
            widths = await page.evaluate(
                "[document.documentElement.scrollWidth, document.body.scrollWidth, window.innerWidth]"
            )
            assert widths[0] <= widths[2] and widths[1] <= widths[2], (path, widths)
            # Wide tables scroll inside their own box instead.
            assert await page.locator(".scroll").count() >= 1, path
            await page.close()
    finally:
        await context.close()
