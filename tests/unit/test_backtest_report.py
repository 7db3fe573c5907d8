"""desk.backtest.report: one self-contained HTML file (nothing fetched), member text escaped, the size
kept reasonable at 100k trades, numbers formatted for people, and the terminal table."""

from __future__ import annotations

import json
import re
from decimal import Decimal as D
from pathlib import Path

import numpy as np
from markupsafe import escape

from desk.backtest.metrics import BacktestData, PriceSeries, Trade, compute, compute_data
from desk.backtest.report import (
    CHART_BUCKETS,
    MAX_TRADE_ROWS,
    decimate,
    duration,
    format_summary,
    money,
    pct,
    ratio,
    render_html,
    render_string,
)

S = 1_000_000_000
DAY = 86_400 * S
T0 = 1_735_776_000 * S
HOSTILE = '<img src=x onerror="alert(1)">&</script><script>alert(2)</script>'


def small(symbol: str = "AAPL", name: str = "demo") -> BacktestData:
    ts = [T0 + i * DAY for i in range(5)]
    trades = [
        Trade(symbol, "buy", D(10), D(100), D(1), ts[1], "o-1"),
        Trade(symbol, "sell", D(10), D(110), D(1), ts[3], "o-2"),
    ]
    return BacktestData(
        trades,
        ts,
        [100000, 100000, 100050, 100098, 100098],
        {symbol: PriceSeries(ts, [99, 100, 105, 110, 108])},
        100000,
        name=name,
    )


def fetched_urls(page: str) -> list[str]:
    """What a browser would fetch from the markup (scripts' bodies left out): src/href/action/poster
    attributes, CSS url() and @import (uPlot's CSS has none)."""
    markup = re.sub(r"<script\b[^>]*>.*?</script>", "", page, flags=re.DOTALL | re.IGNORECASE)
    found = re.findall(r"""\s(?:src|href|action|poster|srcset)\s*=\s*["']?([^"'\s>]+)""", markup, flags=re.IGNORECASE)
    found += re.findall(r"""url\(\s*["']?([^"')]+)""", markup, flags=re.IGNORECASE)
    found += re.findall(r"""@import\s+["']([^"']+)""", markup, flags=re.IGNORECASE)
    return found


def test_renders_one_self_contained_file(tmp_path: Path) -> None:
    path = render_html(small(), tmp_path / "report.html")
    page = path.read_text()
    assert page.startswith("<!DOCTYPE html>")
    for text in (
        "Summary",
        "Equity vs benchmark",
        "Drawdown",
        "Prices and trades",
        "P&amp;L per symbol",
        "Trades (2)",
        "Sharpe",
        "Sortino",
        "Calmar",
        "Win rate",
        "Profit factor",
        "Exposure",
        "Turnover",
    ):
        assert text in page, text
    assert "new uPlot(" in page and "uPlot.tzDate" in page  # the library is inlined
    assert "<script src" not in page and '<link rel="stylesheet"' not in page
    # nothing to fetch: only the inline favicon
    assert all(not re.match(r"(?:https?:)?//", url) for url in fetched_urls(page)), fetched_urls(page)
    assert "data:," in fetched_urls(page)
    assert [u for u in fetched_urls(page) if not u.startswith(("#", "data:"))] == []
    # the only http(s) text is uPlot's licence comment
    assert re.findall(r"https?://[^\s\"'<>)]+", page) == ["https://github.com/leeoniya/uPlot"]
    assert "default-src 'none'" in page  # and a CSP forbids loading anything anyway
    # the embedded data is JSON the page parses
    blob = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.DOTALL)
    assert blob is not None
    charts = json.loads(blob.group(1))
    assert charts["equity"]["strategy"] == [100000, 100000, 100050, 100098, 100098]
    assert charts["prices"][0]["buys"].count(None) == len(charts["prices"][0]["x"]) - 1


def test_member_text_is_escaped_everywhere() -> None:
    page = render_string(small(symbol=HOSTILE, name=HOSTILE))
    assert "<img" not in page
    assert "alert(2)</script>" not in page
    assert page.count("<script") == 4  # two JSON blobs, uPlot, the page's script
    assert str(escape(HOSTILE)) in page  # the title, the P&L table and the trade list
    assert page.count(str(escape(HOSTILE))) >= 4
    # in the embedded JSON, < > & are escaped and the symbol decodes back intact
    blob = re.search(r'<script type="application/json" id="chart-data">(.*?)</script>', page, re.DOTALL)
    assert blob is not None and "<" not in blob.group(1)
    assert json.loads(blob.group(1))["prices"][0]["symbol"] == HOSTILE


def test_no_trades_and_flat_equity_render() -> None:
    ts = [T0 + i * DAY for i in range(3)]
    page = render_string(BacktestData([], ts, [100, 100, 100], {}, 100))
    assert "No trades." in page and "Trades (0)" in page
    assert "—" in page  # undefined Sharpe etc.
    one = render_string(BacktestData([], [T0], [100], {}, 100))
    assert re.search(r"· 1 bar\s+·", one)


def test_a_hundred_thousand_trades_stay_a_reasonable_file(tmp_path: Path) -> None:
    n, k = 200_000, 100_000
    rng = np.random.default_rng(3)
    ts = T0 + np.arange(n, dtype=np.int64) * 60 * S
    closes = (100 * np.cumprod(1 + rng.normal(0, 0.0005, n))).astype(np.float64)
    equity = (100000 * np.cumprod(1 + rng.normal(0, 0.0003, n))).astype(np.float64)
    trades = [
        Trade(
            "AAPL", "buy" if i % 2 == 0 else "sell", D(1), D(f"{closes[2 * i]:.2f}"), D("0.01"), int(ts[2 * i]), f"o{i}"
        )
        for i in range(k)
    ]
    path = render_html(
        BacktestData(trades, ts, equity, {"AAPL": PriceSeries(ts, closes)}, 100000, name="big"), tmp_path / "big.html"
    )
    size = path.stat().st_size
    assert size < 1_500_000, size
    page = path.read_text()
    assert "Trades (100,000)" in page
    assert page.count('<td class="num">0.01</td>') == MAX_TRADE_ROWS  # one fee cell per listed trade
    assert f"the first {MAX_TRADE_ROWS // 2:,} and the last" in page
    assert "Charts downsampled" in page and "of 200,000 points" in page
    assert "2,000 of 100,000 trade markers" in page


def test_decimate_keeps_the_extremes() -> None:
    n = 100_003
    values = np.sin(np.arange(n) / 500.0)
    values[77_777] = 5.0
    values[12_345] = -5.0
    idx = decimate(n, values)
    assert len(idx) <= 4 * CHART_BUCKETS + 1
    assert {0, n - 1, 77_777, 12_345} <= set(idx.tolist())
    assert np.all(np.diff(idx) > 0)
    assert decimate(10, values[:10]).tolist() == list(range(10))


def test_numbers_are_formatted_for_people() -> None:
    assert money(-1234.5) == "-1,234.50" and money(0.004) == "0.00" and money(None) == "—"
    assert money(float("nan")) == "—"
    assert pct(0.12345) == "12.35%" and pct(-0.5) == "-50.00%" and pct(None) == "—"
    assert ratio(1.23456) == "1.23" and ratio(None) == "—"
    assert duration(0) == "0" and duration(42 * S) == "42s" and duration(330 * S) == "5m 30s"
    assert duration(3 * 3600 * S + 20 * 60 * S) == "3h 20m" and duration(12 * DAY + 4 * 3600 * S) == "12d 4h"
    assert duration(2 * DAY) == "2d" and duration(3600 * S) == "1h"


def test_format_summary_is_a_plain_table() -> None:
    m = compute_data(small())
    text = format_summary(m)
    lines = text.splitlines()
    assert lines[1].split() == ["Metric", "Strategy", "Benchmark"]
    assert set(lines[2]) <= {"-", " "}
    assert any(line.startswith("Total return") and line.endswith("%") for line in lines)
    assert "Profit factor" in text and "—" in text  # no losing trip: undefined
    widths = {len(line) for line in lines[1:] if not line.endswith("—")}
    assert len(widths) == 1  # right-aligned columns
    assert "<" not in format_summary(compute([], [T0], [100], {}, 100))


def test_render_html_takes_an_sdk_backtest_result(tmp_path: Path) -> None:
    from strategy_sdk import Strategy
    from strategy_sdk.testing import make_bars, run_backtest

    class BuyOnce(Strategy):
        async def on_bar(self, bar):
            if self.position(bar.symbol) == 0 and not self.open_orders:
                await self.buy(bar.symbol, 10)

    bars = make_bars("AAPL", ["100", "101", "102", "104"])
    result = run_backtest(BuyOnce(), bars, initial_cash=5000)
    page = render_html(result, tmp_path / "r.html", bars=bars, name="buy once", initial_cash=5000).read_text()
    assert "<h1>buy once</h1>" in page and "initial cash 5,000.00" in page and "Trades (1)" in page
