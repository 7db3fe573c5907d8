"""Property tests (hypothesis): the order validator, the ledger's books and the sim matching engine.

Each property runs 200 generated examples with no deadline, so the suite stays fast and never
flakes on a slow machine; a failure prints the smallest input that breaks the property.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from decimal import Decimal
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st

from desk.bus.decimals import fmt
from desk.bus.errors import DeskError
from desk.core.books import Account, Position, Side
from desk.core.matching import SimConfig, SimEngine
from desk.core.orders import STATUS, ValidOrder, validate_order
from desk.v1 import common_pb2, executions_pb2, marketdata_pb2, orders_pb2

E = executions_pb2
D = Decimal
PROPERTY = settings(max_examples=200, deadline=None, database=None)  # no .hypothesis/ example store

# --- the order validator -------------------------------------------------------------------------

# protobuf strings must be valid UTF-8: no lone surrogates
_TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
_NASTY_NUMBERS = [
    "",
    "0",
    "-0",
    "+0",
    "0.0",
    "-0.0",
    "NaN",
    "-NaN",
    "sNaN",
    "nan",
    "Infinity",
    "-inf",
    "1e400",
    "-1e400",
    "1e999999999",
    "-1e999999999",
    "1e-999999999",
    "1e9999999999999999999",
    "1e-30",
    "1E+2",
    "1e12",
    "1e12.5",
    "9" * 40,
    "0." + "0" * 39 + "1",
    "1" + "0" * 39,
    " 10",
    "10 ",
    "\t1\n",
    "1_000",
    "\u0661\u0660",  # Arabic-Indic 10
    "\uff11\uff10",  # full-width 10
    "½",
    "1,5",
    "0x10",
    "--1",
    "+-1",
    ".",
    "e5",
    "1e",
    "1.2.3",
    "\x00",
    "10\x00",
]
_NUMBER_TEXT = st.one_of(
    st.sampled_from(_NASTY_NUMBERS),
    _TEXT,
    st.decimals(allow_nan=True, allow_infinity=True).map(str),
    st.from_regex(r"\A[+-]?\d{0,45}(\.\d{0,45})?([eE][+-]?\d{1,12})?\Z"),
)
_ENUM = st.integers(min_value=-3, max_value=8)


@st.composite
def _any_order(draw: st.DrawFn) -> tuple[orders_pb2.OrderRequest, str]:
    strategy_id = draw(st.one_of(st.just("alpha"), st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z"), _TEXT))
    request = orders_pb2.OrderRequest(
        strategy_id=strategy_id,
        client_order_id=draw(st.one_of(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), _TEXT)),
        symbol=draw(st.one_of(st.sampled_from(["AAPL", "BRKB", "A"]), _TEXT)),
        side=draw(_ENUM),  # type: ignore[arg-type]  # proto3 enums are open: any int32 goes on the wire
        type=draw(_ENUM),  # type: ignore[arg-type]
        time_in_force=draw(_ENUM),  # type: ignore[arg-type]
        qty=draw(_NUMBER_TEXT),
        notional=draw(st.one_of(st.just(""), _NUMBER_TEXT)),
        limit_price=draw(st.one_of(st.just(""), _NUMBER_TEXT)),
        stop_price=draw(st.one_of(st.just(""), _NUMBER_TEXT)),
        extended_hours=draw(st.booleans()),
    )
    subject_id = draw(st.one_of(st.just(strategy_id), _TEXT))
    return request, f"desk.order.submit.{subject_id}"


@PROPERTY
@given(_any_order())
def test_the_validator_only_ever_raises_desk_errors_with_a_known_reason(
    case: tuple[orders_pb2.OrderRequest, str],
) -> None:
    request, subject = case
    try:
        order = validate_order(request, subject)
    except DeskError as err:
        assert err.code in STATUS and err.status == STATUS[err.code] and err.message
        return
    # whatever got through is sane: finite, positive, within the places and the absurdity bound
    for value, places in ((order.qty, 9), (order.notional, 2), (order.limit_price, 6), (order.stop_price, 6)):
        if value is not None:
            assert value.is_finite() and D(0) < value <= D("1e12")
            assert value.quantize(D(1).scaleb(-places)) == value
    assert (order.qty is None) != (order.notional is None)


def _decimal(places: int, low: str = "0", high: str = "1e12") -> st.SearchStrategy[Decimal]:
    return st.decimals(
        min_value=D(low), max_value=D(high), places=places, allow_nan=False, allow_infinity=False
    ).filter(lambda d: d > 0)


@dataclass(frozen=True)
class _Shape:
    type: common_pb2.OrderType
    tif: common_pb2.TimeInForce
    limit: bool
    stop: bool


_ALL_TIFS = (
    common_pb2.TIME_IN_FORCE_DAY,
    common_pb2.TIME_IN_FORCE_GTC,
    common_pb2.TIME_IN_FORCE_IOC,
    common_pb2.TIME_IN_FORCE_FOK,
)
_SHAPES = (
    [_Shape(common_pb2.ORDER_TYPE_MARKET, tif, False, False) for tif in _ALL_TIFS]
    + [_Shape(common_pb2.ORDER_TYPE_LIMIT, tif, True, False) for tif in _ALL_TIFS]
    + [_Shape(common_pb2.ORDER_TYPE_STOP, tif, False, True) for tif in _ALL_TIFS[:2]]
    + [_Shape(common_pb2.ORDER_TYPE_STOP_LIMIT, tif, True, True) for tif in _ALL_TIFS[:2]]
)


@st.composite
def _good_order(draw: st.DrawFn) -> orders_pb2.OrderRequest:
    shape = draw(st.sampled_from(_SHAPES))
    by_notional = (
        shape.type == common_pb2.ORDER_TYPE_MARKET and shape.tif == common_pb2.TIME_IN_FORCE_DAY and draw(st.booleans())
    )
    return orders_pb2.OrderRequest(
        strategy_id=draw(st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,31}\Z")),
        client_order_id=draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")),
        symbol=draw(st.from_regex(r"\A[A-Z][A-Z0-9]{0,15}\Z")),
        side=draw(st.sampled_from([common_pb2.SIDE_BUY, common_pb2.SIDE_SELL])),
        type=shape.type,
        time_in_force=shape.tif,
        qty="" if by_notional else fmt(draw(_decimal(9))),
        notional=fmt(draw(_decimal(2))) if by_notional else "",
        limit_price=fmt(draw(_decimal(6, high="1e9"))) if shape.limit else "",
        stop_price=fmt(draw(_decimal(6, high="1e9"))) if shape.stop else "",
        extended_hours=shape.type == common_pb2.ORDER_TYPE_LIMIT
        and shape.tif == common_pb2.TIME_IN_FORCE_DAY
        and draw(st.booleans()),
    )


@PROPERTY
@given(_good_order())
def test_every_well_formed_order_is_accepted_with_its_numbers(request: orders_pb2.OrderRequest) -> None:
    order = validate_order(request, f"desk.order.submit.{request.strategy_id}")
    assert isinstance(order, ValidOrder)
    assert (order.strategy_id, order.client_order_id, order.symbol) == (
        request.strategy_id,
        request.client_order_id,
        request.symbol,
    )

    def parsed(text: str) -> Decimal | None:
        return D(text) if text else None

    assert (order.qty, order.notional, order.limit_price, order.stop_price) == (
        parsed(request.qty),
        parsed(request.notional),
        parsed(request.limit_price),
        parsed(request.stop_price),
    )


# --- the ledger's books --------------------------------------------------------------------------

_FILL = st.tuples(
    st.sampled_from([Side.BUY, Side.SELL]),
    _decimal(3, high="5000"),  # qty: fractional shares
    _decimal(4, low="0.0001", high="10000"),  # price
    st.decimals(min_value=0, max_value=50, places=2),  # fee
)
_INITIAL = D(100000)


def _book(fills: list[tuple[Side, Decimal, Decimal, Decimal]]) -> tuple[Position, Account]:
    position, account = Position("AAPL"), Account(initial_cash=_INITIAL, cash=_INITIAL)
    for side, qty, price, fee in fills:
        realized = position.apply_fill(side, qty, price, fee)
        account.apply_fill(side, qty, price, fee, realized)
    return position, account


@PROPERTY
@given(st.lists(_FILL, max_size=30), _decimal(4, low="0.0001", high="10000"))
def test_realized_plus_unrealized_minus_fees_is_the_change_in_equity(
    fills: list[tuple[Side, Decimal, Decimal, Decimal]], last: Decimal
) -> None:
    position, account = _book(fills)
    equity = account.cash + position.market_value(last)
    assert position.realized_pnl + position.unrealized_pnl(last) - position.fees == equity - _INITIAL
    assert (account.realized_pnl, account.fees) == (position.realized_pnl, position.fees)
    assert position.fees == sum((fee for *_, fee in fills), D(0))


@PROPERTY
@given(st.lists(_FILL, max_size=30))
def test_a_positions_qty_is_the_signed_sum_of_its_fills(fills: list[tuple[Side, Decimal, Decimal, Decimal]]) -> None:
    position, _ = _book(fills)
    assert position.qty == sum((side.sign * qty for side, qty, _, _ in fills), D(0))
    if position.qty == 0:
        assert position.cost_basis == 0 and position.avg_cost == 0
    else:  # the basis has the sign of the position: the average cost is positive
        assert position.avg_cost > 0


@PROPERTY
@given(st.lists(_FILL, min_size=1, max_size=30), _decimal(4, low="0.0001", high="10000"), _decimal(4, high="10000"))
def test_closing_everything_leaves_no_unrealized_pnl(
    fills: list[tuple[Side, Decimal, Decimal, Decimal]], close_price: Decimal, last: Decimal
) -> None:
    position, account = _book(fills)
    if position.qty != 0:
        side, open_qty = (Side.SELL if position.qty > 0 else Side.BUY), abs(position.qty)
        realized = position.apply_fill(side, open_qty, close_price)
        account.apply_fill(side, open_qty, close_price, D(0), realized)
    assert (position.qty, position.cost_basis, position.unrealized_pnl(last)) == (D(0), D(0), D(0))
    # flat: all that is left is cash, and it is the initial cash plus realized P&L minus fees
    assert account.cash == _INITIAL + position.realized_pnl - position.fees


# --- the sim matching engine ---------------------------------------------------------------------

_SIM_ORDER = st.tuples(
    st.sampled_from([common_pb2.SIDE_BUY, common_pb2.SIDE_SELL]),
    st.sampled_from(_SHAPES),
    _decimal(3, high="500"),  # qty
    _decimal(2, low="90", high="110"),  # limit
    _decimal(2, low="90", high="110"),  # stop
)
_SIM_UPDATE = st.tuples(
    st.sampled_from(["bar", "trade", "quote"]),
    _decimal(2, low="90", high="110"),
    _decimal(2, low="0", high="3"),  # spread / range
    st.one_of(st.just(""), st.decimals(min_value=0, max_value=400, places=0).map(fmt)),  # volume / size
)


def _update(
    kind: str, price: Decimal, spread: Decimal, volume: str, ts_ns: int
) -> marketdata_pb2.Bar | marketdata_pb2.Trade | marketdata_pb2.Quote:
    if kind == "bar":
        return marketdata_pb2.Bar(
            symbol="AAPL",
            open=fmt(price),
            high=fmt(price + spread),
            low=fmt(price - spread),
            close=fmt(price),
            volume=volume,
            start_ns=ts_ns,
        )
    if kind == "trade":
        return marketdata_pb2.Trade(symbol="AAPL", price=fmt(price), size=volume, ts_ns=ts_ns)
    return marketdata_pb2.Quote(
        symbol="AAPL",
        bid_price=fmt(price - spread),
        ask_price=fmt(price + spread),
        bid_size=volume,
        ask_size=volume,
        ts_ns=ts_ns,
    )


@PROPERTY
@given(st.lists(st.one_of(_SIM_ORDER.map(lambda o: ("order", o)), _SIM_UPDATE.map(lambda u: ("md", u))), max_size=40))
def test_the_sim_never_overfills_and_its_cum_qty_and_avg_price_add_up(
    steps: list[tuple[str, tuple[object, ...]]],
) -> None:
    now = itertools.count(1_772_460_000_000_000_000, 1000)  # one UTC day: no DAY order expires mid-test
    ids = itertools.count(1)
    engine = SimEngine(SimConfig(), clock=lambda: next(now), new_execution_id=lambda: f"x-{next(ids)}")
    fills: dict[str, list[tuple[Decimal, Decimal]]] = {}
    for n, (kind, step) in enumerate(steps):
        if kind == "order":
            side, shape, qty, limit, stop = cast(tuple[common_pb2.Side, _Shape, Decimal, Decimal, Decimal], step)
            routed = orders_pb2.RoutedOrder(
                order_id=f"o{n}",
                strategy_id="alpha",
                member_id="m",
                new_order=orders_pb2.OrderRequest(
                    strategy_id="alpha",
                    client_order_id=f"c{n}",
                    symbol="AAPL",
                    side=side,
                    type=shape.type,
                    time_in_force=shape.tif,
                    qty=fmt(qty),
                    limit_price=fmt(limit) if shape.limit else "",
                    stop_price=fmt(stop) if shape.stop else "",
                ),
            )
            reports = engine.submit(routed)
        else:
            update_kind, price, spread, volume = step
            reports = engine.on_market_data(_update(str(update_kind), price, spread, str(volume), next(now)))  # type: ignore[arg-type]
        for report in reports:
            assert report.exec_type != E.EXEC_TYPE_REJECTED, report.text
            if report.exec_type in (E.EXEC_TYPE_FILL, E.EXEC_TYPE_PARTIAL_FILL):
                got = fills.setdefault(report.order_id, [])
                got.append((D(report.fill_qty), D(report.fill_price)))
                cum = sum((q for q, _ in got), D(0))
                assert D(report.fill_qty) > 0 and D(report.cum_qty) == cum <= D(report.order_qty)
                assert D(report.avg_price) == sum((q * p for q, p in got), D(0)) / cum
                assert D(report.leaves_qty) == D(report.order_qty) - cum
                assert (report.exec_type == E.EXEC_TYPE_FILL) == (cum == D(report.order_qty))
    for order_id, got in fills.items():
        order = engine.get(order_id)
        assert order is not None and order.qty is not None
        assert order.cum_qty == sum((q for q, _ in got), D(0)) <= order.qty
        assert order.avg_price == sum((q * p for q, p in got), D(0)) / order.cum_qty
        if order.cum_qty == order.qty:
            assert order.status == E.ORDER_STATUS_FILLED and order not in engine.open_orders()
