"""The fake Alpaca takes Alpaca's native order classes through the real alpaca-py client: a bracket's
legs held until its entry fills, then live; one exit filled cancels the other (OCO); legs in the
order JSON (``nested=true``), held shares counted once; an OTO's one exit; an OCO order and its
stop-loss live at once. (The desk's gateway places the exits itself: docs/alpaca.md.)"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests.fakes.alpaca import FakeAlpaca

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    from alpaca.common.exceptions import APIError
    from alpaca.trading.client import TradingClient
    from alpaca.trading.enums import OrderClass, OrderSide, QueryOrderStatus, TimeInForce
    from alpaca.trading.models import Order
    from alpaca.trading.requests import (
        GetOrdersRequest,
        LimitOrderRequest,
        MarketOrderRequest,
        OrderRequest,
        StopLossRequest,
        TakeProfitRequest,
    )


@pytest.fixture
def fake() -> Iterator[FakeAlpaca]:
    with FakeAlpaca.serving(prices={"AAPL": "100"}) as server:
        yield server


def client(fake: FakeAlpaca) -> TradingClient:
    return TradingClient(fake.key, fake.secret, paper=True, url_override=fake.rest_url)


def submit(trading: TradingClient, request: OrderRequest) -> Order:
    placed = trading.submit_order(request)
    assert isinstance(placed, Order)
    return placed


def listed(trading: TradingClient, request: GetOrdersRequest) -> list[Order]:
    found = trading.get_orders(request)
    assert all(isinstance(o, Order) for o in found)
    return [o for o in found if isinstance(o, Order)]


def bracket(fake: FakeAlpaca, auto_fill: bool = True) -> tuple[str, str, str]:
    """A bracket market buy of 10 (take-profit 110, stop-loss 95): the parent's and its legs' ids."""
    fake.call(lambda: setattr(fake, "auto_fill", auto_fill))
    order = submit(
        client(fake),
        MarketOrderRequest(
            symbol="AAPL",
            qty=10,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.GTC,
            order_class=OrderClass.BRACKET,
            take_profit=TakeProfitRequest(limit_price=110),
            stop_loss=StopLossRequest(stop_price=95),
        ),
    )
    assert order.legs is not None and len(order.legs) == 2
    tp, sl = sorted(order.legs, key=lambda leg: str(leg.type))  # limit, stop
    return str(order.id), str(tp.id), str(sl.id)


def test_a_brackets_legs_are_held_until_the_entry_fills_then_one_exit_cancels_the_other(fake: FakeAlpaca) -> None:
    parent, tp, sl = bracket(fake, auto_fill=False)
    assert [fake.orders[i].status for i in (tp, sl)] == ["held", "held"]
    fake.call(lambda: fake._execute(fake.orders[parent], fake.orders[parent].qty, fake.prices["AAPL"]))
    assert [fake.orders[i].status for i in (tp, sl)] == ["new", "new"]
    assert (fake.orders[tp].side, fake.orders[tp].limit_price, fake.orders[sl].stop_price) == ("sell", 110, 95)
    assert fake.call(lambda: fake._held_for_sells("AAPL")) == 10  # the two exits hold the 10 shares once
    fake.fill(fake.orders[tp].client_order_id, "10", "110")
    assert (fake.orders[tp].status, fake.orders[sl].status) == ("filled", "canceled")
    assert fake.call(lambda: fake.positions["AAPL"][0]) == 0


def test_nested_listing_puts_the_legs_under_their_parent(fake: FakeAlpaca) -> None:
    parent, tp, sl = bracket(fake)
    nested = listed(client(fake), GetOrdersRequest(status=QueryOrderStatus.ALL, nested=True))
    assert [str(o.id) for o in nested] == [parent]
    assert nested[0].legs is not None and {str(leg.id) for leg in nested[0].legs} == {tp, sl}
    flat = listed(client(fake), GetOrdersRequest(status=QueryOrderStatus.ALL))
    assert {str(o.id) for o in flat} == {parent, tp, sl}
    assert all(o.legs is None for o in flat)


def test_canceling_a_live_exit_cancels_its_oco_partner(fake: FakeAlpaca) -> None:
    _, tp, sl = bracket(fake)
    client(fake).cancel_order_by_id(sl)
    assert (fake.orders[tp].status, fake.orders[sl].status) == ("canceled", "canceled")


def test_an_oco_order_and_its_stop_loss_are_live_at_once_and_an_oto_has_one_exit(fake: FakeAlpaca) -> None:
    trading = client(fake)
    trading.submit_order(MarketOrderRequest(symbol="AAPL", qty=5, side=OrderSide.BUY, time_in_force=TimeInForce.GTC))
    oco = submit(
        trading,
        LimitOrderRequest(
            symbol="AAPL",
            qty=5,
            side=OrderSide.SELL,
            time_in_force=TimeInForce.GTC,
            order_class=OrderClass.OCO,
            take_profit=TakeProfitRequest(limit_price=110),
            stop_loss=StopLossRequest(stop_price=90),
        ),
    )
    assert (oco.status, str(oco.order_class.value) if oco.order_class else "", oco.limit_price) == ("new", "oco", "110")
    assert oco.legs is not None and [(str(leg.type.value), leg.status) for leg in oco.legs if leg.type] == [
        ("stop", "new")
    ]
    fake.fill(oco.legs[0].client_order_id, "5", "90")
    assert fake.orders[str(oco.id)].status == "canceled"
    oto = submit(
        trading,
        MarketOrderRequest(
            symbol="AAPL",
            qty=2,
            side=OrderSide.BUY,
            time_in_force=TimeInForce.GTC,
            order_class=OrderClass.OTO,
            stop_loss=StopLossRequest(stop_price=80),
        ),
    )
    assert oto.legs is not None and len(oto.legs) == 1
    assert fake.orders[str(oto.legs[0].id)].status == "new"  # the entry filled at once: its exit is live
    with pytest.raises(APIError, match="oto orders require exactly one"):
        trading.submit_order(
            MarketOrderRequest(
                symbol="AAPL",
                qty=2,
                side=OrderSide.BUY,
                time_in_force=TimeInForce.GTC,
                order_class=OrderClass.OTO,
                stop_loss=StopLossRequest(stop_price=80),
                take_profit=TakeProfitRequest(limit_price=120),
            )
        )
