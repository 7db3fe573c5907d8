"""The SDK's public surface is pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

import desk_client
import strategy_sdk
import strategy_sdk.testing
from strategy_sdk.orders import build_order_request, new_client_order_id, to_decimal

ROOT = Path(__file__).resolve().parents[2]


def test_strategy_sdk_exports_exactly_the_documented_names() -> None:
    assert strategy_sdk.__all__ == [
        "Bar",
        "CancelResult",
        "Fill",
        "OpenOrder",
        "OrderResult",
        "OrderUpdate",
        "Quote",
        "Strategy",
        "Trade",
        "__version__",
        "run_strategy",
    ]
    for name in strategy_sdk.__all__:
        assert hasattr(strategy_sdk, name), name


def test_testing_module_and_desk_client_export_exactly_their_documented_names() -> None:
    assert strategy_sdk.testing.__all__ == [
        "BacktestOrder",
        "BacktestResult",
        "bars_from_csv",
        "make_bars",
        "random_walk_bars",
        "run_backtest",
        "run_backtest_async",
        "to_bar",
    ]
    assert desk_client.__all__ == ["cancel_order", "place_order"]


def test_strategy_base_class_offers_every_hook_and_trading_method() -> None:
    for name in (
        "on_start",
        "on_bar",
        "on_trade",
        "on_quote",
        "on_fill",
        "on_order_update",
        "on_stop",
        "buy",
        "sell",
        "submit_order",
        "cancel",
        "position",
    ):
        assert callable(getattr(strategy_sdk.Strategy, name)), name
    for name in ("cash", "log", "strategy_id", "member_id", "config", "open_orders"):
        assert isinstance(getattr(strategy_sdk.Strategy, name), property), name


def test_sdk_and_desk_client_import_neither_structlog_nor_pydantic() -> None:
    code = (
        "import sys, strategy_sdk, strategy_sdk.testing, strategy_sdk.legacy, desk_client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('structlog', 'pydantic', 'pydantic_settings',"
        " 'services', 'aiosqlite'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_sdk_and_desk_client_use_only_desk_v1_the_pure_bus_modules_and_desk_core() -> None:
    # desk.core on purpose: the SDK and desk_client share the engine's order words and rules, and its
    # order id (docs/architecture.md §8); the async bus modules (connect, lifecycle, micro, kv) stay out.
    allowed = (
        "desk.v1",
        "desk.core",
        "desk.bus.codec",
        "desk.bus.confine",
        "desk.bus.decimals",
        "desk.bus.errors",
        "desk.bus.request",
        "desk.bus.servers",
        "desk.bus.subjects",
    )  # servers: stdlib + nats-py, how to reach NATS
    code = (
        "import sys, strategy_sdk, strategy_sdk.testing, strategy_sdk.legacy, desk_client\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] == 'desk')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = [m for m in out.stdout.split() if m not in ("desk", "desk.bus")]
    assert "desk.core.orders" in loaded
    assert [m for m in loaded if not any(m == a or m.startswith(a + ".") for a in allowed)] == []


def test_runner_help_explains_the_command_and_its_environment() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "strategy_sdk", "run", "--help"], cwd=ROOT, capture_output=True, text=True, check=True
    )
    for word in (
        "PATH",
        "NATS_URL",
        "DESK_STRATEGY_ID",
        "DESK_MEMBER_ID",
        "DESK_SYMBOLS",
        "DESK_HEARTBEAT_INTERVAL",
        "exit codes",
    ):
        assert word in out.stdout, word


def test_generated_client_order_ids_are_valid_and_unique() -> None:
    ids = {new_client_order_id("a-very-long-strategy-name-indeed") for _ in range(100)}
    assert len(ids) == 100
    for cid in ids:
        assert cid.startswith("a-very-long-strategy-")
        assert len(cid) <= 64 and all(c.isalnum() or c in "-_" for c in cid)


def test_order_arguments_accept_decimal_int_and_str_and_floats_via_str() -> None:
    assert to_decimal("qty", Decimal("1.5")) == Decimal("1.5")
    assert to_decimal("qty", 3) == Decimal(3)
    assert to_decimal("qty", "0.25") == Decimal("0.25")
    assert to_decimal("qty", 0.1) == Decimal("0.1")  # via str(), not the binary fraction
    request = build_order_request("s1", "AAPL", "BUY", qty="10", type="limit", limit_price=Decimal("101.50"))
    assert (request.qty, request.limit_price, request.client_order_id.startswith("s1-")) == ("10", "101.5", True)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"side": "hold", "qty": 1}, "side must be one of"),
        ({"side": "buy", "qty": 1, "type": "iceberg"}, "type must be one of"),
        ({"side": "buy", "qty": 1, "time_in_force": "forever"}, "time_in_force must be one of"),
        ({"side": "buy", "qty": 0}, "qty must be a positive"),
        ({"side": "buy", "qty": "abc"}, "not a number"),
        ({"side": "buy", "qty": 1, "type": "limit"}, "need a limit_price"),
        ({"side": "buy", "qty": 1, "limit_price": 5}, "take no limit_price"),
        ({"side": "buy", "qty": 1, "notional": 100}, "exactly one of qty and notional"),
        ({"side": "buy", "qty": 1, "client_order_id": "has space"}, "client_order_id must match"),
    ],
)
def test_nonsense_order_arguments_raise_a_clear_value_error(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_order_request("s1", "AAPL", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("AAPL", 10, "hold", "market", "day"), "side must be one of"),
        (("AAPL", 10, "buy", "iceberg", "day"), "order_type must be one of"),
        (("AAPL", 10, "buy", "market", "forever"), "time_in_force must be one of"),
        (("AAPL", -1, "buy", "market", "day"), "qty must be a positive number"),
        (("AAPL", 10, "buy", "limit", "day"), "limit_price is required"),
        (("aapl", 10, "buy", "market", "day"), "symbol must be upper case"),
    ],
)
def test_desk_client_refuses_nonsense_with_value_error_before_touching_the_desk(
    args: tuple[object, ...], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        desk_client.place_order(*args)  # type: ignore[arg-type]
