"""The backtest report (desk.backtest.report) in headless Chromium, opened from file:// with the
network off: every chart draws a canvas, the console stays clean, no request leaves the file, and
member text stays text. Saves docs/screenshots/backtest-report.png."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal
from pathlib import Path

import pytest
from playwright.async_api import Browser, ConsoleMessage, Page, Request, Route

from desk.backtest.metrics import BacktestData, compute_data
from desk.backtest.report import render_html
from strategy_sdk import Bar, Strategy
from strategy_sdk.testing import run_backtest
from tests.browser.conftest import CHROMIUM, ROOT

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"),
]

SCREENSHOT = ROOT / "docs" / "screenshots" / "backtest-report.png"
DAY_NS = 86_400 * 1_000_000_000


def daily_bars(symbols: list[str], days: int, seed: int = 11) -> list[Bar]:
    """A seeded random walk of daily bars per symbol (weekdays only), interleaved by time."""
    rng = random.Random(seed)
    prices = {s: Decimal(100 + 60 * i) for i, s in enumerate(symbols)}
    bars: list[Bar] = []
    t0 = 1_735_776_000 * 1_000_000_000  # 2025-01-02
    day = 0
    while len(bars) < days * len(symbols):
        ts = t0 + day * DAY_NS
        day += 1
        if (day + 2) % 7 in (5, 6):  # skip weekends
            continue
        for s in symbols:
            open_ = prices[s]
            close = (open_ * Decimal(1 + rng.gauss(0.0004, 0.015))).quantize(Decimal("0.01"))
            high = (max(open_, close) * Decimal(1 + abs(rng.gauss(0, 0.004)))).quantize(Decimal("0.01"))
            low = (min(open_, close) * Decimal(1 - abs(rng.gauss(0, 0.004)))).quantize(Decimal("0.01"))
            bars.append(Bar(s, open_, high, low, close, Decimal(1000), ts, DAY_NS, source="test"))
            prices[s] = close
    return bars


class Crossover(Strategy):
    """10/30-day moving-average crossover, 20k a position."""

    def on_start(self) -> None:
        self.closes: dict[str, list[Decimal]] = {}

    async def on_bar(self, bar: Bar) -> None:
        closes = self.closes.setdefault(bar.symbol, [])
        closes.append(bar.close)
        if len(closes) < 30 or self.open_orders:
            return
        fast, slow = sum(closes[-10:]) / 10, sum(closes[-30:]) / 30
        held = self.position(bar.symbol)
        if fast > slow and held == 0:
            await self.buy(bar.symbol, int(Decimal(20000) / bar.close))
        elif fast < slow and held > 0:
            await self.sell(bar.symbol, held)


def report_data(symbols: list[str], name: str) -> BacktestData:
    bars = daily_bars(symbols, 252)
    result = run_backtest(Crossover(), bars, fee_bps=2)
    assert result.fills, "the crossover should trade"
    return BacktestData.from_result(result, bars, name=name)


async def open_offline(browser: Browser, path: Path, width: int = 1280) -> tuple[Page, list[str], list[str]]:
    context = await browser.new_context(offline=True, viewport={"width": width, "height": 900})
    requests: list[str] = []
    problems: list[str] = []

    async def refuse_network(route: Route) -> None:
        if route.request.url.startswith(("file://", "data:")):
            await route.continue_()
        else:
            await route.abort()

    await context.route("**/*", refuse_network)
    page = await context.new_page()

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type in ("error", "warning"):
            problems.append(f"console {msg.type}: {msg.text}")

    def on_request(request: Request) -> None:
        requests.append(request.url)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("request", on_request)
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    await page.goto(path.as_uri())
    await page.wait_for_selector("body[data-charts]")
    return page, requests, problems


async def test_report_renders_its_charts_offline(browser: Browser, tmp_path: Path) -> None:
    symbols = ["AAPL", "MSFT"]
    data = report_data(symbols, "MA crossover — alice")
    metrics = compute_data(data)
    path = render_html(data, tmp_path / "report.html", metrics)

    page, requests, problems = await open_offline(browser, path)
    charts = await page.get_attribute("body", "data-charts")
    assert charts == str(2 + len(symbols))
    # each uPlot chart draws on a canvas of real size
    sizes = await page.eval_on_selector_all(".uplot canvas", "els => els.map(c => [c.width, c.height])")
    assert len(sizes) == 2 + len(symbols)
    assert all(w > 200 and h > 100 for w, h in sizes), sizes
    # the canvases are not blank: some pixels differ from the first one
    drawn = await page.eval_on_selector_all(
        ".uplot canvas",
        """els => els.map(c => { const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                                 let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; })""",
    )
    assert all(n > 500 for n in drawn), drawn
    summary = await page.inner_text("#summary")
    assert "Sharpe" in summary and "Max drawdown" in summary
    trades = await page.locator("#trades tbody tr").count()
    assert trades == len(data.trades)

    assert problems == []
    assert requests and all(url.startswith(("file://", "data:")) for url in requests), requests
    assert [url for url in requests if url.startswith("file://")] == [path.as_uri()]

    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(SCREENSHOT), full_page=True)


async def test_member_text_stays_text(browser: Browser, tmp_path: Path) -> None:
    hostile = "<img src=x onerror=\"document.title='pwned'\">"
    rename = {"AAPL": hostile, "MSFT": "</script><script>document.title='pwned'</script>"}
    clean = report_data(list(rename), "x")
    # the desk refuses such symbols, but the report must not trust that
    data = dataclasses.replace(
        clean,
        name=hostile,
        trades=[dataclasses.replace(t, symbol=rename[t.symbol]) for t in clean.trades],
        prices={rename[s]: p for s, p in clean.prices.items()},
    )
    path = render_html(data, tmp_path / "hostile.html")
    page, requests, problems = await open_offline(browser, path)
    assert await page.title() != "pwned"
    assert await page.locator("img").count() == 0
    assert hostile in await page.inner_text("h1")
    titles = await page.locator("#price-charts h2").all_inner_texts()
    assert hostile in titles
    assert problems == []
    assert all(url.startswith(("file://", "data:")) for url in requests), requests
