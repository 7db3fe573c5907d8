"""`desk backtest` as a member runs it: a strategy folder over the shipped sample data, a summary or
JSON, the HTML report, and clear errors for what is wrong."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "desk" / "data" / "samples" / "GSPC.csv"


def desk(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "desk.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200"),
    )


@pytest.fixture
def strategy(tmp_path: Path) -> Path:
    folder = tmp_path / "ma"
    folder.mkdir()
    shutil.copy(ROOT / "strategies" / "ma_crossover" / "strategy.py", folder / "strategy.py")
    (folder / "config.json").write_text(
        json.dumps(
            {
                "user_id": "alice",
                "name": "MA 10/30",
                "symbols": ["GSPC"],
                "initial_cash": "100000",
                # 20 GSPC (~1,800-2,900) is over the router's default 25,000 per order: the backtest applies the desk's risk.
                "risk": {"max_order_notional": "100000", "max_position_notional": "100000"},
                "params": {"fast": 10, "slow": 30, "qty": 20},
            }
        )
    )
    return folder


def test_a_backtest_prints_the_summary_and_writes_the_report(strategy: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.html"
    run = desk("backtest", str(strategy), "--data", str(SAMPLE), "--html", str(report), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "1,258 bars of GSPC" in run.stdout
    for label in ("Total return", "Sharpe", "Max drawdown", "Round trips", "Win rate", "Benchmark"):
        assert label in run.stdout, label
    html = report.read_text()
    assert "MA 10/30" in html and "Equity vs benchmark" in html
    assert "uPlot" in html and "https://" not in html.split("<script", 1)[0]


def test_json_has_the_stable_keys_and_the_same_numbers_each_run(strategy: Path, tmp_path: Path) -> None:
    first = desk("backtest", str(strategy), "--data", str(SAMPLE), "--json", cwd=tmp_path)
    again = desk(
        "backtest",
        str(strategy),
        "--data",
        str(SAMPLE),
        "--json",
        "--start",
        "2014-01-01",
        "--end",
        "2018-12-31",
        cwd=tmp_path,
    )
    assert first.returncode == 0 and again.returncode == 0, first.stderr + again.stderr
    one, two = json.loads(first.stdout), json.loads(again.stdout)
    assert one == two
    assert one["bars"] == 1258 and one["strategy"] == "ma" and one["symbols"] == ["GSPC"]
    assert one["fills"] > 0 and one["round_trips"] > 0 and one["hook_errors"] == 0
    assert one["benchmark"]["symbols"] == ["GSPC"] and one["initial_cash"] == 100000


def test_a_shorter_range_runs_fewer_bars(strategy: Path, tmp_path: Path) -> None:
    run = desk(
        "backtest",
        str(strategy),
        "--data",
        str(SAMPLE),
        "--json",
        "--start",
        "2016-01-01",
        "--end",
        "2016-12-31",
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["bars"] == 252


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--symbols", "AAPL"], 1, "the data has GSPC; pass --symbols"),
        (["--start", "tomorrow"], 2, "--start 'tomorrow' is neither a date"),
        (["--cash", "lots"], 2, "initial cash 'lots' is not a number"),
    ],
)
def test_what_is_wrong_is_said(strategy: Path, tmp_path: Path, args: list[str], code: int, message: str) -> None:
    run = desk("backtest", str(strategy), "--data", str(SAMPLE), *args, cwd=tmp_path)
    assert run.returncode == code, run.stdout + run.stderr
    assert message in run.stderr


def test_no_data_and_no_cache_range_is_refused_with_the_way_out(strategy: Path, tmp_path: Path) -> None:
    run = desk("backtest", str(strategy), cwd=tmp_path)
    assert run.returncode == 2 and "give --data FILE" in run.stderr
    missing = desk(
        "backtest",
        str(strategy),
        "--symbols",
        "GSPC",
        "--start",
        "2024-01-02",
        "--end",
        "2024-01-05",
        "--data-dir",
        str(tmp_path / "var"),
        cwd=tmp_path,
    )
    assert missing.returncode == 1 and "desk data fetch" in missing.stderr


def test_an_old_desk_strategy_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "strategy.py").write_text(
        "import sys\nfrom desk_client import place_order\nfor line in sys.stdin:\n    pass\n"
    )
    (folder / "config.json").write_text('{"user_id": "dave"}')
    run = desk("backtest", str(folder), "--data", str(SAMPLE), cwd=tmp_path)
    assert run.returncode == 1 and "old-desk (stdin) strategy" in run.stderr
