"""The bench's backtest section: its data, the desk-only path of the harness, and how it reports counts.

The peers (backtrader, NautilusTrader) live in bench/.venv-peers and are not needed here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import backtest
from bench.stats import Target
from desk.data import load


def test_the_bench_data_is_seeded_desk_csv_that_the_desk_loader_reads(tmp_path: Path) -> None:
    path = backtest.write_bars(tmp_path / "S00.csv", "S00", 2_000, seed=7)
    again = backtest.write_bars(tmp_path / "again.csv", "S00", 2_000, seed=7)
    assert path.read_bytes() == again.read_bytes()
    assert path.read_text().splitlines()[0] == "timestamp,symbol,open,high,low,close,volume"
    bars = load(path)
    assert len(bars) == 2_000
    assert bars.symbol_list() == ["S00"]
    assert set(bars.intervals().values()) == {60_000_000_000}
    assert (bars.low <= bars.close).all() and (bars.close <= bars.high).all()
    assert bars.close.min() >= 1.0


def test_the_walk_is_floored_exactly_where_the_free_walk_would_go_below() -> None:
    closes = backtest.walk(200_000, seed=3)
    assert closes.min() >= 10_000
    steps = closes[1:] - closes[:-1]
    assert ((steps >= -3000) & (steps <= 3000)).all()


def test_the_quick_harness_runs_the_desk_alone_when_the_peers_env_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(backtest, "PEERS_PYTHON", tmp_path / "no-such-venv" / "python")
    plan = backtest.Plan(sizes=(400, 4_000), multi=(2, 300), repeats=1, repeat_upto=0, target_size=4_000)
    figures, raw = backtest.run(plan, progress=lambda _text: None)
    runs = raw["runs"]
    assert set(runs) == {"400 bars, 1 symbol", "4k bars, 1 symbol", "2 symbols x 300 bars"}
    for label, engines in runs.items():
        assert set(engines) == {"desk"}, label
        desk = engines["desk"]
        assert desk["orders"] > 0 and desk["rejected"] == 0 and desk["hook_errors"] == 0
        assert 0 <= desk["buys"] - desk["sells"] <= desk["symbols"]  # at most one long open per symbol
    assert runs["2 symbols x 300 bars"]["desk"]["bars"] == 600
    names = [f.name for f in figures]
    assert "bars/s 4k bars, 1 symbol, desk (loading the file included)" in names
    assert "time 4k bars, 1 symbol / time 400 bars, 1 symbol, desk" in names
    missing = [f for f in figures if f.name.startswith("peers")]
    assert missing and "make bench-peers-env" in missing[0].note
    target = next(f for f in figures if f.name.startswith("bars/s 4k bars") and f.target)
    assert target.target == Target("min", backtest.TARGET_BARS_PER_S)


def _run(engine: str, orders: int, seconds: float = 1.0) -> dict[str, object]:
    return {
        "engine": engine,
        "bars": 1000,
        "seconds": seconds,
        "bars_per_s": 1000 / seconds,
        "peak_rss_mb": 50.0,
        "orders": orders,
        "round_trips": orders // 2,
        "load_s": 0.1,
        "process_s": seconds + 0.5,
    }


def test_counts_that_disagree_say_so_in_the_row_and_the_note() -> None:
    plan = backtest.Plan(sizes=(1000,), multi=None, target_size=1000)
    raw = {
        "runs": {
            "1k bars, 1 symbol": {
                "desk": _run("desk", 400),
                "backtrader": _run("backtrader", 400),
                "nautilus": _run("nautilus", 380, 4.0),
            }
        }
    }
    figures = backtest.figures_from(raw, plan, ("desk", "backtrader", "nautilus"))
    by_name = {f.name: f for f in figures}
    agree = by_name["orders 1k bars, 1 symbol: desk vs backtrader"]
    assert agree.met is True
    bad = by_name["orders 1k bars, 1 symbol: desk vs nautilus — MISMATCH"]
    assert bad.met is False and "TRADE COUNTS DISAGREE" in bad.note
    assert "bars/s 1k bars, 1 symbol: desk vs nautilus — trade counts DISAGREE" in by_name
    speed = by_name["bars/s 1k bars, 1 symbol: desk vs backtrader"]
    assert speed.ratio == pytest.approx(1.0) and speed.met is False  # the 6x target at the target size


def test_ratio_near_targets_accept_counts_within_the_tolerance() -> None:
    near = Target("ratio_near", 0.01)
    assert near.met(None, 1.009) is True
    assert near.met(None, 0.99) is True
    assert near.met(None, 1.02) is False
    assert near.met(None, None) is None
    assert near.describe("orders") == "within 1 % of bare"
