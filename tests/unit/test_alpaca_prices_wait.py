"""AlpacaPrices.wait_fresh: a restarted gateway waits (bounded) for the feed's next price (docs/faults.md, finding 6)."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

from desk.v1 import marketdata_pb2
from services.broker_gateway.brokers.alpaca import AlpacaPrices


def quote(symbol: str = "AAPL", source: str = "alpaca") -> marketdata_pb2.Quote:
    return marketdata_pb2.Quote(
        symbol=symbol, bid_price="99", ask_price="101", bid_size="1", ask_size="1", ts_ns=time.time_ns(), source=source
    )


async def test_it_returns_at_once_when_a_fresh_price_is_known() -> None:
    prices = AlpacaPrices(max_age=5)
    prices.update(quote())
    await asyncio.wait_for(prices.wait_fresh("AAPL", 30), 1)
    assert prices.fair_price("AAPL")[0] == Decimal(100)


async def test_it_returns_when_the_symbols_next_alpaca_price_arrives() -> None:
    prices = AlpacaPrices(max_age=5)
    waiting = asyncio.create_task(prices.wait_fresh("AAPL", 30))
    await asyncio.sleep(0)  # let it start waiting (scheduling, not synchronisation)
    prices.update(quote("MSFT"))  # another symbol
    prices.update(quote(source="synthetic"))  # not the Alpaca feed
    await asyncio.sleep(0)
    assert not waiting.done()
    prices.update(quote())
    await asyncio.wait_for(waiting, 1)
    assert prices.fair_price("AAPL")[0] == Decimal(100)


async def test_it_gives_up_after_its_timeout_without_a_price() -> None:
    prices = AlpacaPrices(max_age=5)
    began = time.monotonic()
    await asyncio.wait_for(prices.wait_fresh("AAPL", 0.05), 5)
    assert time.monotonic() - began >= 0.05
    assert prices.fair_price("AAPL")[0] is None
