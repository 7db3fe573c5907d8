"""The example strategies: each runs in a backtest over a random walk and trades; the old one runs unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from strategy_sdk import Strategy
from strategy_sdk.loading import is_legacy_source, load_strategy_class
from strategy_sdk.testing import make_bars, random_walk_bars, run_backtest

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ROOT / "strategies"
NEW_STYLE = ["ma_crossover", "mean_reversion"]


def load(name: str) -> tuple[type[Strategy], dict[str, Any]]:
    cls = load_strategy_class(STRATEGIES / name / "strategy.py", f"example_{name}")
    return cls, json.loads((STRATEGIES / name / "config.json").read_text())


@pytest.mark.parametrize("name", NEW_STYLE)
def test_new_style_example_trades_on_a_random_walk_without_errors(name: str) -> None:
    cls, config = load(name)
    bars = random_walk_bars(config["symbols"], 300, seed=11)
    result = run_backtest(cls(), bars, config=config, strategy_id=name, member_id=config["user_id"])
    assert result.errors == 0, result.error_messages
    assert len(result.fills) >= 2
    assert all(o.accepted for o in result.orders)


@pytest.mark.parametrize("name", NEW_STYLE)
def test_new_style_example_places_its_first_order_within_a_minute_of_one_bar_per_second(name: str) -> None:
    cls, config = load(name)
    result = run_backtest(cls(), random_walk_bars(config["symbols"], 60, seed=3), config=config)
    assert result.orders, "no order within 60 bars per symbol"


def test_ma_crossover_buys_the_golden_cross_and_sells_the_death_cross_exactly() -> None:
    cls, config = load("ma_crossover")
    config = {**config, "params": {"fast": 2, "slow": 3, "qty": 10}}
    bars = make_bars("AAPL", ["10", "10", "10", "9", "8", "9", "11", "12", "11", "9", "8", "8"])
    result = run_backtest(cls(), bars, config=config, slippage_bps=0, fee_bps=0)
    # Filled at once at the crossing bar's ask (close 11 + 1 cent) and bid (close 9 - 1 cent).
    assert [(f.side, f.qty, f.price) for f in result.fills] == [
        ("buy", Decimal(10), Decimal("11.01")),
        ("sell", Decimal(10), Decimal("8.99")),
    ]
    assert result.cash == Decimal("99979.8")


def test_mean_reversion_cancels_bids_left_unfilled_after_max_bars() -> None:
    cls, config = load("mean_reversion")
    config = {**config, "params": {**config["params"], "window": 3, "entry_z": "0.5", "max_bars": 2, "offset_bps": 500}}
    # A drop makes it bid 5% under the price; the price never comes back down, so the bid is cancelled.
    bars = make_bars("AAPL", ["100", "100", "100", "97", "99", "100", "101", "102"])
    result = run_backtest(cls(), bars, config=config)
    assert [o.status for o in result.orders][:1] == ["canceled"]
    assert result.fills == []


@pytest.mark.parametrize("name", [*NEW_STYLE, "legacy_momentum"])
def test_every_example_config_has_the_old_desk_fields(name: str) -> None:
    config = json.loads((STRATEGIES / name / "config.json").read_text())
    required = {"user_id", "name", "description", "version", "env"}
    if name == "legacy_momentum":
        assert set(config) == required
    else:
        assert required | {"symbols", "initial_cash", "risk"} <= set(config)


def test_legacy_example_is_recognised_as_old_desk_code_and_the_others_are_not() -> None:
    assert is_legacy_source((STRATEGIES / "legacy_momentum" / "strategy.py").read_text())
    for name in NEW_STYLE:
        assert not is_legacy_source((STRATEGIES / name / "strategy.py").read_text())


def test_legacy_momentum_reads_stdin_and_places_orders_through_desk_client(tmp_path: Path) -> None:
    # A stand-in desk_client that records the calls, so the old script runs exactly as the old desk ran it.
    fake = tmp_path / "fake" / "desk_client"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import json, os\n"
        "def place_order(symbol, qty, side, order_type, time_in_force, limit_price=None, stop_price=None):\n"
        "    with open(os.environ['CALLS'], 'a') as f:\n"
        "        f.write(json.dumps([symbol, qty, side, order_type, time_in_force]) + '\\n')\n"
        "    return {'id': 'o1', 'client_order_id': 'c1', 'status': 'accepted', 'reason': None, 'message': ''}\n"
    )
    calls = tmp_path / "calls.jsonl"
    lines = [
        json.dumps(
            {
                "symbol": "AAPL",
                "price": p,
                "open": p,
                "high": p,
                "low": p,
                "close": p,
                "volume": 1,
                "timestamp": "2026-01-02T14:30:00+00:00",
            }
        )
        for p in (100, 101, 102, 101.5, 103, 104)
    ]
    other = json.dumps({"symbol": "TSLA", "price": 1, "timestamp": "2026-01-02T14:30:00+00:00"})
    env = {**os.environ, "PYTHONPATH": str(fake.parent), "CALLS": str(calls), "SYMBOLS": "AAPL,MSFT"}
    out = subprocess.run(
        [sys.executable, "strategy.py"],
        cwd=STRATEGIES / "legacy_momentum",
        env=env,
        input="\n".join([other, *lines, other]) + "\n",
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    recorded = [json.loads(line) for line in calls.read_text().splitlines()]
    assert recorded == [
        ["AAPL", 10, "buy", "market", "day"],
        ["AAPL", 10, "sell", "market", "day"],
        ["AAPL", 10, "buy", "market", "day"],
    ]
    assert "accepted" in out.stdout
