"""The backtest's fast paths make exactly what the plain code would: a Bar built without the frozen
dataclass's __init__, Decimals built without a string each, plain in-process reports and their message."""

from __future__ import annotations

import copy
import dataclasses
import pickle
from decimal import Decimal

import numpy as np
import pytest

from desk.core.orders import Report
from desk.data.loaders import _decimal, _decimals
from desk.v1 import common_pb2, executions_pb2
from strategy_sdk.models import Bar, Fill, OrderUpdate, new_bar

FIELDS = (
    "AAPL",
    Decimal("187.25"),
    Decimal(188),
    Decimal("186.5"),
    Decimal("187.75"),
    Decimal(1200),
    1_700_000_000_000_000_000,
    60_000_000_000,
    Decimal("187.4"),
    42,
    "replay",
)


def test_new_bar_makes_an_ordinary_frozen_bar() -> None:
    fast, plain = new_bar(*FIELDS), Bar(*FIELDS)
    assert type(fast) is Bar
    assert fast == plain and hash(fast) == hash(plain) and repr(fast) == repr(plain)
    assert pickle.loads(pickle.dumps(fast)) == plain
    assert copy.copy(fast) == plain and copy.deepcopy(fast) == plain
    assert dataclasses.replace(fast, close=Decimal(190)).close == Decimal(190)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.close = Decimal(1)  # type: ignore[misc]  # frozen, as a Bar is
    assert not hasattr(fast, "__dict__")  # the slots of Bar, nothing else


def test_reports_as_fills_and_updates_are_the_same_from_the_plain_report_and_the_message() -> None:
    report = Report(
        execution_id="e1",
        order_id="o1",
        client_order_id="c1",
        strategy_id="alpha",
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        exec_type=executions_pb2.EXEC_TYPE_PARTIAL_FILL,
        status=executions_pb2.ORDER_STATUS_PARTIALLY_FILLED,
        order_qty="10",
        fill_qty="4",
        fill_price="187.25",
        cum_qty="4",
        leaves_qty="6",
        avg_price="187.25",
        fee="0.01",
        venue="sim",
        event_ns=123,
    )
    message = report.to_proto()
    assert type(Fill.from_report(report)) is Fill
    assert Fill.from_report(report) == Fill.from_report(message)
    assert OrderUpdate.from_report(report) == OrderUpdate.from_report(message)


def test_the_plain_report_has_every_field_of_the_message_and_to_proto_carries_each() -> None:
    names = [f.name for f in executions_pb2.ExecutionReport.DESCRIPTOR.fields]
    assert sorted(f.name for f in dataclasses.fields(Report)) == sorted(names)  # cannot drift from the wire
    values: dict[str, object] = {}
    for f in executions_pb2.ExecutionReport.DESCRIPTOR.fields:
        if f.name in ("exec_type", "status", "side", "type", "time_in_force"):
            values[f.name] = 1
        elif f.type == f.TYPE_STRING:
            values[f.name] = f"v-{f.name}"
        else:
            values[f.name] = 7
    assert Report(**values).to_proto() == executions_pb2.ExecutionReport(**values)  # type: ignore[arg-type]


EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    0.2,
    0.3,
    1e-6,
    1.5e-6,
    1e-7,
    123456.789012,
    999_999_999.5,
    1e9,
    1e9 + 0.5,
    1e15,
    1e16,
    187.25,
    187.2499999,
    0.000001,
    5e-324,
    1.7976931348623157e308,
    33.33,
    100.01,
    2.675,
]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_vectorised_decimals_equal_the_shortest_repr_decimal_coefficient_and_exponent(seed: int) -> None:
    rng = np.random.default_rng(seed)
    prices = np.concatenate([np.round(rng.uniform(0, 5000, 3_000), k) for k in range(7)])  # 0..6 decimals
    raw = rng.normal(0, 1e4, 5_000)  # full-precision floats: the slow path
    values = np.concatenate([prices, raw, np.array(EDGES), -np.array(EDGES)]).astype(np.float64)
    fast = _decimals(values)
    for x, got in zip(values.tolist(), fast.tolist(), strict=True):
        want = _decimal(x)
        assert got.as_tuple() == want.as_tuple(), (x, got, want)
