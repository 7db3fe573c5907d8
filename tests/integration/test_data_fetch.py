"""``desk data fetch`` and the cache, through the real alpaca-py StockHistoricalDataClient against the
fake Alpaca's historical endpoint on 127.0.0.1 (real HTTP, real pagination)."""

from __future__ import annotations

import datetime as dt
import json
import warnings
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from desk.cli.main import app
from desk.core.marketdata import quote_around
from desk.data import cache
from desk.data.fetch import FetchError, fetch, make_client
from desk.data.loaders import NEW_YORK, load
from services.marketdata.feeds.replay import ReplayFeed, parse_replay
from strategy_sdk import Strategy
from strategy_sdk.models import Bar
from strategy_sdk.testing import run_backtest
from tests.fakes.alpaca import FakeAlpaca

with warnings.catch_warnings():  # alpaca-py 0.44's alpaca.data imports websockets.legacy
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.data.enums import DataFeed
    from alpaca.data.historical import StockHistoricalDataClient
    from alpaca.data.requests import StockBarsRequest
    from alpaca.data.timeframe import TimeFrame, TimeFrameUnit

JAN2, JAN5 = dt.date(2024, 1, 2), dt.date(2024, 1, 5)  # Tuesday .. Friday
BARS_5MIN_PER_DAY = 78  # 09:30-16:00 New York


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving() as server:
        yield server


def client_for(fake: FakeAlpaca) -> StockHistoricalDataClient:
    return make_client(fake.key, fake.secret, fake.historical_url)


def test_fetch_pages_through_alpaca_py_caches_per_month_and_a_cached_range_needs_no_network(
    fake: FakeAlpaca, tmp_path: Path
) -> None:
    fake.historical.max_page = 100  # force several pages per request
    lines: list[str] = []
    result = fetch(
        ["AAPL", "MSFT"], JAN2, JAN5, "5Min", data_dir=tmp_path, client=client_for(fake), progress=lines.append
    )
    expected = 4 * BARS_5MIN_PER_DAY * 2
    assert result.bars == expected and result.requests == 1
    pages = [q for q in fake.historical.queries if q["symbols"] == "AAPL,MSFT"]
    assert len(pages) == -(-expected // 100)  # alpaca-py followed next_page_token to the end
    assert pages[0]["timeframe"] == "5Min" and pages[0]["feed"] == "iex" and pages[0]["adjustment"] == "raw"
    assert "page_token" not in pages[0] and all(p.get("page_token") for p in pages[1:])
    assert lines and "AAPL,MSFT 2024-01-02..2024-01-05" in lines[0] and f"{expected:,} bars" in lines[0]

    folder = cache.symbol_dir(tmp_path, "iex", "5Min", "AAPL")
    assert folder == tmp_path / "data" / "alpaca" / "iex" / "5Min" / "AAPL"
    assert sorted(p.name for p in folder.iterdir()) == ["2024-01.csv", "coverage.json"]
    assert json.loads((folder / "coverage.json").read_text()) == {"days": [["2024-01-02", "2024-01-05"]]}

    fake.stop()  # from here on any request would fail to connect
    again = fetch(["AAPL", "MSFT"], JAN2, JAN5, "5Min", data_dir=tmp_path, client=client_for(fake))
    assert again.requests == 0 and again.bars == 0 and again.cached_days == 8
    data = cache.bars(["AAPL", "MSFT"], JAN2, JAN5, "5Min", data_dir=tmp_path)
    assert len(data) == expected and data.symbol_list() == ["AAPL", "MSFT"]
    assert data.intervals() == {"AAPL": 300 * 10**9, "MSFT": 300 * 10**9}
    first = next(iter(data))
    assert first.start_ns == int(dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC).timestamp()) * 10**9
    assert first.symbol == "AAPL" and first.vwap is not None and first.trade_count > 0


def test_the_cache_holds_exactly_what_alpaca_py_returns(fake: FakeAlpaca, tmp_path: Path) -> None:
    client = client_for(fake)
    fetch(["SPY"], JAN2, JAN2, "1Min", data_dir=tmp_path, client=client)
    direct = StockHistoricalDataClient(fake.key, fake.secret, url_override=fake.historical_url).get_stock_bars(
        StockBarsRequest(
            symbol_or_symbols="SPY",
            timeframe=TimeFrame.Minute,
            start=dt.datetime(2024, 1, 2, 14),
            end=dt.datetime(2024, 1, 2, 22),
            feed=DataFeed.IEX,
        )
    )
    expected = direct.data["SPY"]  # type: ignore[union-attr]
    cached = list(cache.bars("SPY", JAN2, JAN2, "1Min", data_dir=tmp_path))
    assert len(cached) == len(expected) == 390
    for mine, theirs in zip(cached, expected, strict=True):
        assert mine.start_ns == int(theirs.timestamp.timestamp()) * 10**9
        assert (mine.open, mine.high, mine.low, mine.close) == tuple(
            Decimal(repr(x)) for x in (theirs.open, theirs.high, theirs.low, theirs.close)
        )
        assert mine.volume == Decimal(int(theirs.volume)) and mine.trade_count == int(theirs.trade_count or 0)


def test_an_overlapping_fetch_downloads_only_the_missing_days(fake: FakeAlpaca, tmp_path: Path) -> None:
    client = client_for(fake)
    fetch(["AAPL"], JAN2, JAN5, "15Min", data_dir=tmp_path, client=client)
    before = len(fake.historical.queries)
    result = fetch(
        ["AAPL", "MSFT"], dt.date(2024, 1, 4), dt.date(2024, 1, 10), "15Min", data_dir=tmp_path, client=client
    )
    asked = fake.historical.queries[before:]
    # MSFT has nothing: all 7 days; AAPL only lacks Jan 6..10 (midnight New York = 05:00Z)
    assert sorted((q["symbols"], q["start"]) for q in asked) == [
        ("AAPL", "2024-01-06T05:00:00+00:00"),
        ("MSFT", "2024-01-04T05:00:00+00:00"),
    ]
    assert result.cached_days == 2 and result.requests == 2
    folder = cache.symbol_dir(tmp_path, "iex", "15Min", "AAPL")
    assert cache.covered(folder) == [(JAN2, dt.date(2024, 1, 10))]
    aapl = cache.bars(["AAPL"], JAN2, dt.date(2024, 1, 10), "15Min", data_dir=tmp_path)
    assert len(aapl) == 7 * 26 and aapl.report.duplicates == 0  # 7 weekdays, 26 quarter hours each


def test_a_range_crossing_months_is_stored_per_month_and_a_missing_range_names_the_fetch_command(
    fake: FakeAlpaca, tmp_path: Path
) -> None:
    lines: list[str] = []
    fetch(
        ["QQQ"],
        dt.date(2024, 1, 30),
        dt.date(2024, 2, 2),
        "1Day",
        data_dir=tmp_path,
        client=client_for(fake),
        progress=lines.append,
    )
    folder = cache.symbol_dir(tmp_path, "iex", "1Day", "QQQ")
    assert sorted(p.name for p in folder.glob("*.csv")) == ["2024-01.csv", "2024-02.csv"]
    assert [line.split(" ", 1)[0] for line in lines] == ["[1/2]", "[2/2]"]
    daily = load(folder)  # a cache folder is a loader input too
    assert len(daily) == 4 and daily.source == "alpaca-csv"
    with pytest.raises(
        cache.CacheMiss,
        match=r"QQQ: 2024-02-03..2024-02-09. Run: desk data fetch QQQ "
        r"--start 2024-01-30 --end 2024-02-09 --timeframe 1Day",
    ):
        cache.bars("QQQ", "2024-01-30", "2024-02-09", "1Day", data_dir=tmp_path)


def test_days_not_yet_over_are_fetched_but_not_recorded_as_cached(fake: FakeAlpaca, tmp_path: Path) -> None:
    now = dt.datetime(2024, 1, 4, 17, 0, tzinfo=dt.UTC)  # Thursday, during the session
    fetch(["AAPL"], JAN2, JAN5, "1Hour", data_dir=tmp_path, client=client_for(fake), now=now)
    assert cache.covered(cache.symbol_dir(tmp_path, "iex", "1Hour", "AAPL")) == [(JAN2, dt.date(2024, 1, 3))]
    before = len(fake.historical.queries)
    fetch(["AAPL"], JAN2, JAN5, "1Hour", data_dir=tmp_path, client=client_for(fake))
    assert [q["start"] for q in fake.historical.queries[before:]] == ["2024-01-04T05:00:00+00:00"]


def test_alpaca_refusals_arrive_as_api_errors_with_alpacas_codes(fake: FakeAlpaca, tmp_path: Path) -> None:
    client = StockHistoricalDataClient(fake.key, fake.secret, url_override=fake.historical_url)
    with pytest.raises(APIError) as invalid:
        client.get_stock_bars(
            StockBarsRequest(
                symbol_or_symbols="AAPL", timeframe=TimeFrame(1, TimeFrameUnit.Week), start=dt.datetime(2024, 1, 2)
            )
        )
    assert invalid.value.status_code == 422 and invalid.value.code == 42210000

    today = dt.datetime.now(dt.UTC).astimezone(NEW_YORK).date()
    with pytest.raises(FetchError, match="recent SIP data") as sip:
        fetch(["AAPL"], today, today, "1Min", feed="sip", data_dir=tmp_path, client=client_for(fake))
    assert sip.value.status == 403 and sip.value.code == 40310000

    limited = client_for(fake)
    limited._retry_wait = 0  # alpaca-py retries a 429 three times, 3 s apart: keep its retries, not the waits
    fake.historical.rate_limit = len(fake.historical.queries)
    with pytest.raises(FetchError, match="HTTP 429") as throttled:
        fetch(["AAPL"], JAN2, JAN2, "1Day", data_dir=tmp_path, client=limited)
    assert throttled.value.code == 42910000
    assert len(fake.historical.queries) - fake.historical.rate_limit == 4  # the first try and 3 retries
    assert cache.listing(tmp_path) == []  # nothing half-written


def test_the_single_symbol_route_and_descending_sort(fake: FakeAlpaca) -> None:
    client = StockHistoricalDataClient(fake.key, fake.secret, raw_data=True, url_override=fake.historical_url)
    body = client.get(
        "/stocks/AAPL/bars",
        {"timeframe": "1Hour", "start": "2024-01-02", "end": "2024-01-03", "limit": 3, "sort": "desc", "feed": "iex"},
    )
    assert isinstance(body, dict) and body["symbol"] == "AAPL" and len(body["bars"]) == 3
    stamps = [b["t"] for b in body["bars"]]
    assert stamps == sorted(stamps, reverse=True) and stamps[0] == "2024-01-02T20:00:00Z"
    assert body["next_page_token"]


def test_desk_data_fetch_and_list_on_the_command_line(
    fake: FakeAlpaca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALPACA_API_KEY", fake.key)
    monkeypatch.setenv("ALPACA_SECRET_KEY", fake.secret)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.historical_url)
    runner = CliRunner()
    args = [
        "data",
        "fetch",
        "AAPL,MSFT",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-05",
        "--timeframe",
        "1Day",
        "--data-dir",
        str(tmp_path),
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "fetched 8 bars in 1 requests" in first.output
    second = runner.invoke(app, args)
    assert second.exit_code == 0 and "all cached" in second.output
    listed = runner.invoke(app, ["data", "list", "--json", "--data-dir", str(tmp_path)])
    entries = json.loads(listed.output)
    assert [(e["symbol"], e["timeframe"], e["bars"], e["ranges"]) for e in entries] == [
        ("AAPL", "1Day", 4, [["2024-01-02", "2024-01-05"]]),
        ("MSFT", "1Day", 4, [["2024-01-02", "2024-01-05"]]),
    ]
    monkeypatch.delenv("ALPACA_API_KEY")
    missing = runner.invoke(
        app, ["data", "fetch", "SPY", "--start", "2024-01-02", "--end", "2024-01-02", "--data-dir", str(tmp_path)]
    )
    assert missing.exit_code == 1 and "ALPACA_API_KEY" in missing.output


class BuyFirstBar(Strategy):
    async def on_bar(self, bar: Bar) -> None:
        if self.position(bar.symbol) == 0 and not self.open_orders:
            await self.buy(bar.symbol, 1)


def test_cached_bars_feed_a_backtest_and_the_replay_feed(fake: FakeAlpaca, tmp_path: Path) -> None:
    fetch(["AAPL"], JAN2, JAN5, "1Hour", data_dir=tmp_path, client=client_for(fake))
    data = cache.bars(["AAPL"], JAN2, JAN5, "1Hour", data_dir=tmp_path)
    result = run_backtest(BuyFirstBar(), data)
    bars = list(data)
    # Filled at once at the first bar's ask (the replay feed's quote around its close) plus SIM_SLIPPAGE_BPS=2.
    ask = Decimal(quote_around("AAPL", bars[0].close, 0, "replay").ask_price)
    assert result.positions == {"AAPL": Decimal(1)} and result.fills[0].price == ask * Decimal("1.0002")
    assert len(result.equity_curve) == len(data) == 4 * 7  # hours starting 09:00 .. 15:00 New York

    month = cache.symbol_dir(tmp_path, "iex", "1Hour", "AAPL") / "2024-01.csv"
    with month.open(newline="") as handle:
        replay = parse_replay(handle)
    assert replay.bad_rows == [] and len(replay.rows) == len(data)
    feed = ReplayFeed(replay, 0)
    assert feed.intervals == {"AAPL": 3600 * 10**9}
    assert [r.close for r in replay.rows] == [b.close for b in bars]


def test_desk_data_fetch_then_desk_backtest_html_reads_only_the_cache(
    fake: FakeAlpaca, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's flow: fetch a quarter of daily bars, then backtest the example strategy from the
    cache into a self-contained HTML report, with the fake Alpaca stopped (no network at all)."""
    monkeypatch.setenv("ALPACA_API_KEY", fake.key)
    monkeypatch.setenv("ALPACA_SECRET_KEY", fake.secret)
    monkeypatch.setenv("ALPACA_DATA_URL", fake.historical_url)
    runner = CliRunner()
    span = ["--start", "2024-01-02", "--end", "2024-03-28", "--timeframe", "1Day", "--data-dir", str(tmp_path)]
    fetched = runner.invoke(app, ["data", "fetch", "AAPL,MSFT", *span])
    assert fetched.exit_code == 0, fetched.output
    fake.stop()  # from here on nothing may reach Alpaca
    report = tmp_path / "report.html"
    strategy = Path(__file__).resolve().parents[2] / "strategies" / "ma_crossover"
    run = runner.invoke(
        app, ["backtest", str(strategy), "--symbols", "AAPL,MSFT", *span, "--html", str(report), "--json"]
    )
    assert run.exit_code == 0, run.output
    summary = json.loads(run.output[run.output.index("{") :])
    assert summary["symbols"] == ["AAPL", "MSFT"] and summary["orders"] > 0
    html = report.read_text()
    assert "<html" in html and "AAPL" in html and "MSFT" in html
    assert 'src="http' not in html and 'href="http' not in html  # opens offline: everything inlined
