"""The README's indicator recipe is true: its strategy, taken from the README as written, runs in a
backtest with talipp's indicators and trades on their signals."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from desk.data import load
from strategy_sdk.testing import run_backtest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SAMPLE = ROOT / "desk" / "data" / "samples" / "IXIC.csv"  # real daily NASDAQ Composite, 2014-2018


def recipe() -> str:
    section = README.read_text().split("### Indicators", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README's Indicators section has no python block"
    return match.group(1)


def test_the_readme_indicator_recipe_runs_and_trades_on_talipps_signals() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(recipe(), "README.md", "exec"), namespace)  # noqa: S102 - the project's own README
    strategy = namespace["RsiDip"]()
    config = {"risk": {"max_order_notional": "1000000", "max_position_notional": "1000000"}}
    result = run_backtest(strategy, load(SAMPLE), config=config)
    assert result.errors == 0, result.error_messages
    buys = [f for f in result.fills if f.side == "buy"]
    assert buys and all(f.qty == Decimal(10) for f in buys)
    assert strategy.rsi["IXIC"][-1] is not None and 0 <= strategy.rsi["IXIC"][-1] <= 100
    closes = [float(b.close) for b in strategy.history("IXIC", 50)]
    assert abs(strategy.trend["IXIC"][-1] - sum(closes) / 50) < 1e-6  # talipp's SMA = the last 50 closes
