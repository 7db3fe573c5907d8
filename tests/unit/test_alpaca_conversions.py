"""alpaca-py objects <-> the desk's messages: order requests, activities, market data; the retry budget."""

from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
import requests
from alpaca.common.exceptions import APIError

from desk.v1 import common_pb2, orders_pb2, strategy_pb2
from services.broker_gateway.brokers.alpaca import (  # imports alpaca-py with its import-time warning silenced
    AlpacaConfig,
    AlpacaRest,
    AlpacaUnavailable,
    TimeoutSession,
    fill_from_activity,
    order_request,
)
from services.marketdata.feeds.alpaca import bar_message, quote_message, trade_message, wanted_symbols

T0 = dt.datetime(2026, 3, 2, 15, 30, tzinfo=dt.UTC)


def routed(**fields: object) -> orders_pb2.RoutedOrder:
    request = {
        "strategy_id": "alpha",
        "client_order_id": "c1",
        "symbol": "AAPL",
        "side": common_pb2.SIDE_SELL,
        "type": common_pb2.ORDER_TYPE_STOP_LIMIT,
        "time_in_force": common_pb2.TIME_IN_FORCE_GTC,
        "qty": "2.5",
        "limit_price": "99.5",
        "stop_price": "100",
    }
    request.update(fields)
    return orders_pb2.RoutedOrder(order_id="o", strategy_id="alpha", new_order=orders_pb2.OrderRequest(**request))  # type: ignore[arg-type]


def test_a_routed_order_becomes_alpaca_pys_request_with_the_strategy_prefixed_client_order_id() -> None:
    body = order_request(routed()).to_request_fields()
    assert body == {
        "symbol": "AAPL",
        "qty": 2.5,
        "side": "sell",
        "type": "stop_limit",
        "time_in_force": "gtc",
        "client_order_id": "alpha.c1",
        "limit_price": 99.5,
        "stop_price": 100.0,
    }
    market = order_request(
        routed(
            type=common_pb2.ORDER_TYPE_MARKET, limit_price="", stop_price="", time_in_force=common_pb2.TIME_IN_FORCE_DAY
        ),
        Decimal(1),
        placement=2,
    )
    assert market.to_request_fields()["client_order_id"] == "alpha.c1.2" and market.qty == 1.0


def test_a_fill_activity_keeps_cumulative_quantity_and_alpacas_execution_id() -> None:
    fill = fill_from_activity(
        {
            "id": "20260302153000123::7f1c6c0e-8e0b-4a8b-9a51-1f9a3c2f0e11",
            "order_id": "a-1",
            "cum_qty": "7",
            "qty": "3",
            "price": "101.25",
            "transaction_time": "2026-03-02T15:30:00Z",
        }
    )
    assert (fill.cum_qty, fill.qty, fill.price) == (Decimal(7), Decimal(3), Decimal("101.25"))
    assert fill.alpaca_execution_id == "7f1c6c0e-8e0b-4a8b-9a51-1f9a3c2f0e11"
    assert fill.event_ns == int(T0.timestamp()) * 10**9


def test_market_data_models_become_desk_messages_with_exact_decimals() -> None:
    from alpaca.data.models import Bar, Quote, Trade  # after feeds.alpaca imported alpaca-py quietly

    raw_time = T0
    trade = Trade("AAPL", {"t": raw_time, "p": 187.42, "s": 100, "x": "V", "i": 1, "c": ["@"], "z": "C"})
    quote = Quote("AAPL", {"t": raw_time, "bp": 187.41, "bs": 2, "ap": 187.43, "as": 3, "bx": "V", "ax": "V"})
    bar = Bar("AAPL", {"t": raw_time, "o": 1.1, "h": 1.3, "l": 1.0, "c": 1.2, "v": 500, "n": 7, "vw": 1.15})
    assert (trade_message(trade).price, trade_message(trade).ts_ns) == ("187.42", int(T0.timestamp()) * 10**9)
    assert (quote_message(quote).bid_price, quote_message(quote).ask_price) == ("187.41", "187.43")
    message = bar_message(bar)
    assert (message.open, message.high, message.close, message.volume, message.trade_count, message.vwap) == (
        "1.1",
        "1.3",
        "1.2",
        "500",
        7,
        "1.15",
    )


def test_the_feed_follows_the_strategies_symbols_and_falls_back_to_md_symbols() -> None:
    specs = [
        strategy_pb2.StrategySpec(symbols=["MSFT", "AAPL"]),
        strategy_pb2.StrategySpec(symbols=["AAPL", "bad.sym"]),
    ]
    assert wanted_symbols(specs, ["SPY"]) == ["AAPL", "MSFT"]
    assert wanted_symbols([strategy_pb2.StrategySpec()], ["SPY", "QQQ"]) == ["QQQ", "SPY"]


def test_the_session_puts_a_timeout_on_every_request() -> None:
    session = TimeoutSession(0.25)
    seen: dict[str, object] = {}

    def send(request: requests.PreparedRequest, **kwargs: object) -> requests.Response:
        seen.update(kwargs)
        raise requests.exceptions.ConnectTimeout("stub transport")

    session.send = send  # type: ignore[method-assign]
    with pytest.raises(requests.exceptions.ConnectTimeout):
        session.request("GET", "http://127.0.0.1:9/v2/account")
    session.close()
    assert seen["timeout"] == 0.25


def api_error(status: int, code: int) -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError(json.dumps({"code": code, "message": "x"}), requests.exceptions.HTTPError(response=response))


async def test_retries_stop_at_the_budget_and_non_retryable_errors_pass_through() -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    config = AlpacaConfig("k", "s", retry_budget=0.0001, retry_backoff=0.05)
    rest = AlpacaRest(None, config, sleep=sleep)  # type: ignore[arg-type]

    def rate_limited() -> None:
        raise api_error(429, 42910000)

    with pytest.raises(AlpacaUnavailable, match="alpaca 429 42910000"):
        await rest.call("x", rate_limited)

    def refused() -> None:
        raise api_error(403, 40310000)

    with pytest.raises(APIError):
        await rest.call("x", refused)
    assert pauses == []  # the budget left no room for a pause; the 403 was never retried

    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise api_error(503, 50300000)
        return "ok"

    patient = AlpacaRest(None, AlpacaConfig("k", "s", retry_budget=60, retry_backoff=0.05), sleep=sleep)  # type: ignore[arg-type]
    assert await patient.call("x", flaky) == "ok" and patient.retries == 2 and len(pauses) == 2
    assert repr(config) == "AlpacaConfig(paper=True, rest_url=None, stream_url=None)"  # no keys in reprs
