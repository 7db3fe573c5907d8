"""The marketdata service against a real nats-server: bars on md.*, prices in DESK_PRICES."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from structlog.testing import capture_logs

from desk.bus import codec, subjects
from desk.bus.testing import NatsServer, run_in_process
from desk.v1 import marketdata_pb2
from services.marketdata.feeds.replay import parse_replay
from services.marketdata.service import NAME, MarketDataService
from services.marketdata.settings import SAMPLE_BARS, Settings

pytestmark = pytest.mark.integration


class Collector:
    """Collects messages until ``n`` have arrived."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.messages: list[Msg] = []
        self.done = asyncio.Event()

    async def on_msg(self, msg: Msg) -> None:
        self.messages.append(msg)
        if len(self.messages) >= self.n:
            self.done.set()


async def test_synthetic_prices_are_in_the_kv_before_the_service_reports_ready(
    nats_server: NatsServer, nc: Client
) -> None:
    bars = Collector(1)
    sub = await nc.subscribe("md.bar.>", cb=bars.on_msg)
    await nc.flush()
    settings = Settings(nats_url=nats_server.url, md_symbols="AAPL,MSFT,XYZ", md_interval=3600)
    svc = await run_in_process(NAME, settings, MarketDataService(settings).start)
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PRICES)
        for symbol in ("AAPL", "MSFT", "XYZ"):
            trade = codec.decode((await kv.get(symbol)).value or b"", marketdata_pb2.Trade)
            assert trade.symbol == symbol and Decimal(trade.price) > 0 and trade.source == "synthetic"
        assert bars.messages == []  # known before any bar was published
        info = json.loads((await nc.request("$SRV.INFO.marketdata", b"", timeout=5)).data)
        assert info["metadata"]["feed"] == "synthetic"
    finally:
        await sub.unsubscribe()
        assert await svc.stop() == 0


async def test_synthetic_bars_quotes_and_trades_reach_a_subscriber(nats_server: NatsServer, nc: Client) -> None:
    bars, quotes, trades = Collector(6), Collector(6), Collector(6)
    subs = [
        await nc.subscribe("md.bar.>", cb=bars.on_msg),
        await nc.subscribe("md.quote.>", cb=quotes.on_msg),
        await nc.subscribe("md.trade.>", cb=trades.on_msg),
    ]
    await nc.flush()
    settings = Settings(nats_url=nats_server.url, md_symbols="AAPL,MSFT", md_interval=0.05)
    svc = await run_in_process(NAME, settings, MarketDataService(settings).start)
    try:
        await asyncio.wait_for(asyncio.gather(bars.done.wait(), quotes.done.wait(), trades.done.wait()), 10)
        decoded = [codec.decode(m.data, marketdata_pb2.Bar, m.headers) for m in bars.messages[:6]]
        assert [b.symbol for b in decoded] == ["AAPL", "MSFT"] * 3
        assert [m.subject for m in bars.messages[:2]] == ["md.bar.AAPL", "md.bar.MSFT"]
        assert all(m.headers and m.headers["Desk-Type"] == "desk.v1.Bar" for m in bars.messages)
        assert decoded[2].start_ns - decoded[0].start_ns == 50_000_000
        assert quotes.messages[0].headers and quotes.messages[0].headers["Desk-Type"] == "desk.v1.Quote"
        trade = codec.decode(trades.messages[0].data, marketdata_pb2.Trade, trades.messages[0].headers)
        assert trade.price == decoded[0].close
    finally:
        for sub in subs:
            await sub.unsubscribe()
        assert await svc.stop() == 0


async def test_the_replay_feed_publishes_the_sample_file_in_order_then_keeps_serving(
    nats_server: NatsServer, nc: Client
) -> None:
    with SAMPLE_BARS.open(newline="") as handle:
        rows = parse_replay(handle).rows
    bars = Collector(len(rows))
    sub = await nc.subscribe("md.bar.>", cb=bars.on_msg)
    await nc.flush()
    settings = Settings(nats_url=nats_server.url, md_feed="replay", md_replay_speed=0)
    with capture_logs() as logs:
        svc = await run_in_process(NAME, settings, MarketDataService(settings).start)
        try:
            await asyncio.wait_for(bars.done.wait(), 30)
            got = [codec.decode(m.data, marketdata_pb2.Bar, m.headers) for m in bars.messages]
            assert [(b.symbol, b.close) for b in got] == [(r.symbol, f"{r.close:f}") for r in rows]
            assert all(b.source == "replay" for b in got)
            # the feed has ended, the service still answers
            pong = await nc.request("$SRV.PING.marketdata", b"", timeout=5)
            assert json.loads(pong.data)["name"] == "marketdata"
            kv = await nc.jetstream().key_value(subjects.KV_PRICES)
            last_spy = [r for r in rows if r.symbol == "SPY"][-1]
            spy = codec.decode((await kv.get("SPY")).value or b"", marketdata_pb2.Trade)
            assert Decimal(spy.price) == last_spy.close
        finally:
            await sub.unsubscribe()
            assert await svc.stop() == 0
    assert any(e["event"] == "feed.finished" for e in logs)


async def test_bad_replay_rows_are_logged_with_their_line_and_skipped(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> None:
    csv = tmp_path / "bars.csv"
    csv.write_text(
        "timestamp,symbol,open,high,low,close,volume\n"
        "2024-03-04T14:30:00Z,AAPL,175.10,175.20,175.00,175.15,1000\n"
        "2024-03-04T14:31:00Z,AAPL,175.15,nope,175.00,175.05,1200\n"
        "2024-03-04T14:32:00Z,AAPL,175.05,175.30,175.00,175.25,900\n"
    )
    bars = Collector(2)
    sub = await nc.subscribe("md.bar.>", cb=bars.on_msg)
    await nc.flush()
    settings = Settings(nats_url=nats_server.url, md_feed="replay", md_replay_file=csv, md_replay_speed=0)
    with capture_logs() as logs:
        svc = await run_in_process(NAME, settings, MarketDataService(settings).start)
        try:
            await asyncio.wait_for(bars.done.wait(), 10)
            closes = [codec.decode(m.data, marketdata_pb2.Bar).close for m in bars.messages]
            assert closes == ["175.15", "175.25"]
        finally:
            await sub.unsubscribe()
            assert await svc.stop() == 0
    bad = [e for e in logs if e["event"] == "replay.bad_row"]
    assert len(bad) == 1 and bad[0]["line"] == 3 and "high 'nope'" in bad[0]["reason"]
