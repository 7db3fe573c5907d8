"""The fake Alpaca's hooks the crash matrix stands on (tests/fakes/alpaca/server.py), through alpaca-py.

``hold``/``release`` keep requests unanswered (applied first with ``commit``), ``inject`` can fail one
order's requests only, ``close_market``/``open_market`` make market orders rest and then fill, and
``trade_refusals`` counts refused trade_updates handshakes.
"""

from __future__ import annotations

import concurrent.futures
import warnings
from collections.abc import Iterator
from decimal import Decimal

import pytest
import requests

from tests.fakes.alpaca import FakeAlpaca

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderSide, TimeInForce
    from alpaca.trading.models import Clock, Order
    from alpaca.trading.requests import LimitOrderRequest, MarketOrderRequest

pytestmark = pytest.mark.faults

WAIT = 10.0


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices={"AAPL": "153"}) as server:
        yield server


@pytest.fixture
def client(fake: FakeAlpaca) -> TradingClient:
    return TradingClient(fake.key, fake.secret, paper=True, url_override=fake.rest_url)


def submit(client: TradingClient, request: LimitOrderRequest | MarketOrderRequest) -> Order:
    placed = client.submit_order(request)
    assert isinstance(placed, Order)
    return placed


def market_open(client: TradingClient) -> bool:
    clock = client.get_clock()
    assert isinstance(clock, Clock)
    return clock.is_open


def limit_buy(client_order_id: str) -> LimitOrderRequest:
    return LimitOrderRequest(
        symbol="AAPL",
        qty=10,
        side=OrderSide.BUY,
        time_in_force=TimeInForce.GTC,
        limit_price=150,
        client_order_id=client_order_id,
    )


def test_a_held_post_never_reaches_the_account_when_dropped(fake: FakeAlpaca, client: TradingClient) -> None:
    gate = fake.hold("POST", path="/v2/orders", client_order_id="alpha.a-1")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.submit_order, limit_buy("alpha.a-1"))
        assert gate.reached.wait(WAIT)
        assert not call.done()  # unanswered while held
        assert fake.call(lambda: len(fake.orders)) == 0
        assert fake.release(gate) == 1
        with pytest.raises(requests.exceptions.ConnectionError):
            call.result(WAIT)
    assert fake.call(lambda: len(fake.orders)) == 0
    placed = submit(client, limit_buy("alpha.a-1"))  # released: no longer held
    assert str(placed.client_order_id) == "alpha.a-1"


def test_a_committed_hold_applies_the_cancel_and_holds_only_its_reply(fake: FakeAlpaca, client: TradingClient) -> None:
    placed = submit(client, limit_buy("alpha.a-1"))
    gate = fake.hold("DELETE", path=f"/v2/orders/{placed.id}", commit=True)
    other = submit(client, limit_buy("alpha.a-2"))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        call = pool.submit(client.cancel_order_by_id, placed.id)
        assert gate.reached.wait(WAIT)
        assert fake.order("alpha.a-1").status == "canceled"  # done at Alpaca, the client not told
        assert not call.done()
        client.cancel_order_by_id(other.id)  # another order's cancel is not held
        fake.release(gate, proceed=True)
        assert call.result(WAIT) is None
    assert fake.order("alpha.a-2").status == "canceled"


def test_an_injection_for_one_client_order_id_fails_only_that_orders_post(
    fake: FakeAlpaca, client: TradingClient
) -> None:
    fake.inject(500, count=5, method="POST", path_prefix="/v2/orders", client_order_id="alpha.a-1.2")
    client.submit_order(limit_buy("alpha.a-1"))
    with pytest.raises(APIError) as refused:
        client.submit_order(limit_buy("alpha.a-1.2"))
    assert refused.value.status_code == 500
    assert fake.clear_injections() == 4


def test_a_closed_market_rests_market_orders_until_the_open(fake: FakeAlpaca, client: TradingClient) -> None:
    fake.close_market()
    assert market_open(client) is False
    order = MarketOrderRequest(
        symbol="AAPL", qty=4, side=OrderSide.SELL, time_in_force=TimeInForce.DAY, client_order_id="bravo.b-1"
    )
    client.submit_order(order)
    assert (fake.order("bravo.b-1").status, fake.order("bravo.b-1").filled_qty) == ("new", Decimal(0))
    assert fake.open_market() == 1
    assert market_open(client) is True
    assert (fake.order("bravo.b-1").status, fake.order("bravo.b-1").filled_qty) == ("filled", Decimal(4))
    assert fake.call(lambda: fake.positions["AAPL"][0]) == Decimal(-4)


def test_refused_trade_stream_handshakes_are_counted(fake: FakeAlpaca) -> None:
    fake.drop_trade_streams(refuse_reconnect=True)
    for _ in range(2):
        with pytest.raises(requests.exceptions.HTTPError):
            response = requests.get(
                fake.stream_url.replace("ws://", "http://"),
                headers={
                    "Connection": "Upgrade",
                    "Upgrade": "websocket",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
                timeout=WAIT,
            )
            response.raise_for_status()
    assert fake.call(lambda: fake.trade_refusals) == 2
