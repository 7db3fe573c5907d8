"""MD_FEED=alpaca: alpaca-py's StockDataStream against the fake's msgpack stream, onto md.* and DESK_PRICES."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client
from pydantic import SecretStr

from desk.bus import codec, subjects
from desk.bus import kv as desk_kv
from desk.bus.testing import InProcessService, NatsServer, run_in_process
from desk.v1 import marketdata_pb2, strategy_pb2
from services.marketdata.service import NAME, MarketDataService
from services.marketdata.settings import Settings
from tests.fakes.alpaca import FakeAlpaca

pytestmark = pytest.mark.integration
TIMEOUT = 15.0
T0 = dt.datetime(2026, 3, 2, 15, 30, 0, 123456, tzinfo=dt.UTC)


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving() as server:
        yield server


async def deploy(nc: Client, strategy_id: str, *symbols: str) -> None:
    spec = strategy_pb2.StrategySpec(strategy_id=strategy_id, member_id="m1", symbols=list(symbols))
    await desk_kv.put(nc.jetstream(), subjects.KV_STRATEGIES, strategy_id, spec)


@pytest.fixture
async def marketdata(nats_server: NatsServer, nc: Client, fake: FakeAlpaca) -> AsyncIterator[InProcessService]:
    await deploy(nc, "alpha", "AAPL")
    settings = Settings(
        nats_url=nats_server.url,
        drain_timeout=5,
        md_feed="alpaca",
        md_symbols="SPY",
        alpaca_api_key=SecretStr(fake.key),
        alpaca_secret_key=SecretStr(fake.secret),
        md_alpaca_url=fake.data_url,
    )
    service = await run_in_process(NAME, settings, MarketDataService(settings).start)
    try:
        yield service
    finally:
        await service.stop()


def market(symbol: str, price: float) -> list[dict[str, object]]:
    """A trade, a quote and a bar as Alpaca sends them (prices as the wire's float64s)."""

    def p(offset: float) -> float:
        return round(price + offset, 2)

    return [
        {"T": "t", "S": symbol, "i": 96921, "x": "V", "p": price, "s": 100, "t": T0, "c": ["@"], "z": "C"},
        {
            "T": "q",
            "S": symbol,
            "bx": "V",
            "bp": p(-0.01),
            "bs": 2,
            "ax": "V",
            "ap": p(0.01),
            "as": 3,
            "t": T0,
            "c": ["R"],
            "z": "C",
        },
        {
            "T": "b",
            "S": symbol,
            "o": price,
            "h": p(1),
            "l": p(-1),
            "c": p(0.5),
            "v": 4200,
            "n": 37,
            "vw": p(0.25),
            "t": T0.replace(microsecond=0),
        },
    ]


async def receive(nc: Client, symbol: str, fake: FakeAlpaca, price: float) -> dict[str, object]:
    got: dict[str, object] = {}
    done = asyncio.Event()
    types = {"bar": marketdata_pb2.Bar, "trade": marketdata_pb2.Trade, "quote": marketdata_pb2.Quote}

    async def on(msg: object) -> None:
        kind = msg.subject.split(".")[1]  # type: ignore[attr-defined]
        got[kind] = codec.decode(msg.data, types[kind], msg.headers)  # type: ignore[attr-defined]
        if len(got) == 3:
            done.set()

    sub = await nc.subscribe(f"md.*.{symbol}", cb=on)
    try:
        await nc.flush()
        assert await asyncio.to_thread(fake.publish_market, market(symbol, price)) == 3
        await asyncio.wait_for(done.wait(), TIMEOUT)
    finally:
        await sub.unsubscribe()
    return got


async def test_the_deployed_strategies_symbols_are_streamed_onto_md_subjects_and_desk_prices(
    nc: Client, fake: FakeAlpaca, marketdata: InProcessService
) -> None:
    await asyncio.to_thread(fake.wait_data_subscribed, {"AAPL"})
    assert all("SPY" not in s["trades"] for s in fake.data_subscriptions())  # MD_SYMBOLS is only the fallback
    got = await receive(nc, "AAPL", fake, 187.42)
    trade, quote, bar = got["trade"], got["quote"], got["bar"]
    assert isinstance(trade, marketdata_pb2.Trade) and (trade.price, trade.size, trade.source) == (
        "187.42",
        "100",
        "alpaca",
    )
    assert trade.ts_ns == int(T0.timestamp()) * 10**9 + 123456000
    assert isinstance(quote, marketdata_pb2.Quote) and (quote.bid_price, quote.ask_price, quote.ask_size) == (
        "187.41",
        "187.43",
        "3",
    )
    assert isinstance(bar, marketdata_pb2.Bar)
    assert (bar.open, bar.high, bar.close, bar.volume, bar.trade_count, bar.vwap) == (
        "187.42",
        "188.42",
        "187.92",
        "4200",
        37,
        "187.67",
    )
    kv = await nc.jetstream().key_value(subjects.KV_PRICES)
    last = marketdata_pb2.Trade.FromString((await kv.get("AAPL")).value or b"")
    assert last.price == "187.42"


async def test_a_newly_deployed_strategys_symbols_are_added_and_a_dropped_stream_comes_back(
    nc: Client, fake: FakeAlpaca, marketdata: InProcessService
) -> None:
    await asyncio.to_thread(fake.wait_data_subscribed, {"AAPL"})
    await deploy(nc, "beta", "MSFT")
    await asyncio.to_thread(fake.wait_data_subscribed, {"AAPL", "MSFT"})
    assert (await receive(nc, "MSFT", fake, 410.1))["trade"].price == "410.1"  # type: ignore[attr-defined]
    fake.drop_data_streams()
    await asyncio.to_thread(fake.wait_data_subscribed, {"AAPL", "MSFT"}, 2)  # alpaca-py reconnected, resubscribed
    assert (await receive(nc, "AAPL", fake, 190.0))["trade"].price == "190"  # type: ignore[attr-defined]
