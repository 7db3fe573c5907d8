"""desk.data.loaders: every format from real files, errors with file/row/column, order and duplicates,
and the cache's day arithmetic."""

from __future__ import annotations

import datetime as dt
import gzip
import json
from decimal import Decimal
from pathlib import Path
from typing import cast

import numpy as np
import pytest

from desk.data import cache
from desk.data.loaders import NEW_YORK, BarFileError, detect, load
from services.marketdata.feeds.replay import parse_replay
from strategy_sdk import Strategy
from strategy_sdk.models import Bar
from strategy_sdk.testing import run_backtest

SAMPLES = Path(__file__).resolve().parents[2] / "desk" / "data" / "samples"
DESK_SAMPLE = Path(__file__).resolve().parents[2] / "services" / "marketdata" / "data" / "sample_bars.csv"
T0 = int(dt.datetime(2024, 1, 2, 14, 30, tzinfo=dt.UTC).timestamp()) * 10**9
MIN = 60 * 10**9

DESK = """timestamp,symbol,open,high,low,close,volume
2024-01-02T14:30:00Z,AAPL,185.10,185.50,185.00,185.40,1000
2024-01-02T14:30:00Z,MSFT,370.00,370.20,369.90,370.10,500
2024-01-02T14:31:00Z,AAPL,185.40,185.60,185.30,185.55,1200
"""
ALPACA_CSV = """symbol,timestamp,open,high,low,close,volume,trade_count,vwap
AAPL,2024-01-02 14:30:00+00:00,185.1,185.5,185.0,185.4,1000.0,12.0,185.3
AAPL,2024-01-02 14:31:00+00:00,185.4,185.6,185.3,185.55,1200.0,15.0,185.45
MSFT,2024-01-02 14:30:00+00:00,370.0,370.2,369.9,370.1,500.0,7.0,370.05
"""
YAHOO = """Date,Open,High,Low,Close,Adj Close,Volume
2024-01-02,187.149994,188.440002,183.889999,185.639999,184.290421,82488700
2024-01-03,184.220001,185.880005,183.429993,184.250000,182.910522,58414500
2024-01-04,182.149994,183.089996,180.880005,181.910004,180.587540,71983600
"""


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_four_formats_are_detected_from_their_first_line() -> None:
    assert detect(DESK.splitlines()[0]) == "desk"
    assert detect(ALPACA_CSV.splitlines()[0]) == "alpaca-csv"
    assert detect(YAHOO.splitlines()[0]) == "yahoo"
    assert detect('  {"bars": {}}') == "alpaca-json"
    assert detect("a,b,c") is None


def test_desk_csv_and_alpaca_csv_and_json_give_the_same_bars(tmp_path: Path) -> None:
    desk = load(write(tmp_path / "desk.csv", DESK))
    alp = load(write(tmp_path / "alpaca.csv", ALPACA_CSV))
    doc = {
        "bars": {
            "AAPL": [
                {
                    "t": "2024-01-02T14:30:00Z",
                    "o": 185.1,
                    "h": 185.5,
                    "l": 185.0,
                    "c": 185.4,
                    "v": 1000,
                    "n": 12,
                    "vw": 185.3,
                },
                {
                    "t": "2024-01-02T14:31:00Z",
                    "o": 185.4,
                    "h": 185.6,
                    "l": 185.3,
                    "c": 185.55,
                    "v": 1200,
                    "n": 15,
                    "vw": 185.45,
                },
            ],
            "MSFT": [
                {
                    "t": "2024-01-02T14:30:00Z",
                    "o": 370.0,
                    "h": 370.2,
                    "l": 369.9,
                    "c": 370.1,
                    "v": 500,
                    "n": 7,
                    "vw": 370.05,
                }
            ],
        },
        "next_page_token": None,
    }
    js = load(write(tmp_path / "bars.json", json.dumps(doc)))
    assert (desk.source, alp.source, js.source) == ("desk", "alpaca-csv", "alpaca-json")

    def plain(data: object) -> list[tuple[str, int, Decimal, Decimal]]:
        return [(b.symbol, b.start_ns, b.open, b.close) for b in data]  # type: ignore[attr-defined]

    expected = [
        ("AAPL", T0, Decimal("185.1"), Decimal("185.4")),
        ("MSFT", T0, Decimal(370), Decimal("370.1")),
        ("AAPL", T0 + MIN, Decimal("185.4"), Decimal("185.55")),
    ]
    assert plain(desk) == plain(js) == expected
    assert sorted(plain(alp)) == sorted(expected) and [b.start_ns for b in alp] == [T0, T0, T0 + MIN]
    first = next(iter(alp))
    assert first.vwap == Decimal("185.3") and first.trade_count == 12 and first.interval_ns == MIN
    assert next(iter(desk)).vwap is None


def test_a_yahoo_file_takes_its_symbol_from_the_name_and_is_stamped_midnight_new_york(tmp_path: Path) -> None:
    data = load(write(tmp_path / "AAPL.csv", YAHOO))
    bars = list(data)
    assert [b.symbol for b in bars] == ["AAPL"] * 3 and data.intervals() == {"AAPL": 86_400 * 10**9}
    assert bars[0].start_ns == int(dt.datetime(2024, 1, 2, 5, tzinfo=dt.UTC).timestamp()) * 10**9  # 00:00 EST
    assert bars[0].open == Decimal("187.149994") and bars[0].volume == Decimal(82488700)
    assert [b.symbol for b in load(tmp_path / "AAPL.csv", symbol="xyz")] == ["XYZ"] * 3
    write(tmp_path / "my-data_2024.csv.txt", YAHOO)
    assert load(tmp_path / "my-data_2024.csv.txt").symbols == ["MYDATA2024"]
    write(tmp_path / "1.csv", YAHOO)
    with pytest.raises(BarFileError, match=r"^1.csv: .*pass the symbol"):
        load(tmp_path / "1.csv")


def test_yahoo_null_rows_are_an_error_naming_the_row_unless_skipped(tmp_path: Path) -> None:
    lines = YAHOO.splitlines()
    lines.insert(2, "2024-01-03,null,null,null,null,null,null")
    path = write(tmp_path / "SPY.csv", "\n".join(lines) + "\n")
    with pytest.raises(BarFileError) as err:
        load(path)
    assert str(err.value).startswith("SPY.csv row 3, column open: Yahoo 'null' row (no prices for 2024-01-03)")
    assert "--skip-null" in str(err.value) and err.value.row == 3
    data = load(path, skip_null=True)
    assert len(data) == 3 and data.report.null_rows == 1 and "1 Yahoo 'null' rows skipped" in data.report.summary()


def test_errors_name_the_file_the_row_and_the_column(tmp_path: Path) -> None:
    lines = DESK.splitlines()
    rows = lines[:1] + [lines[1]] * 15 + ["2024-01-02T14:45:00Z,AAPL,185.10,185.50,185.00,abc,1000"]
    path = write(tmp_path / "bars.csv", "\n".join(rows) + "\n")
    with pytest.raises(BarFileError) as err:
        load(path)
    assert str(err.value) == "bars.csv row 17, column close: 'abc' is not a number"
    assert (err.value.file, err.value.row, err.value.column) == ("bars.csv", 17, "close")

    cases = {
        "2024-01-02T14:45:00Z,AAPL,185.10,185.00,185.20,185.1,1": "column low: inconsistent bar",
        "yesterday,AAPL,1,1,1,1,1": "column timestamp: timestamp 'yesterday' is neither ISO-8601 nor epoch",
        "2024-01-02T14:45:00Z,aapl,1,1,1,1,1": "column symbol: 'aapl' is not a valid symbol",
        "2024-01-02T14:45:00Z,AAPL,1,1,1,1,-5": "column volume: volume must not be negative",
        "2024-01-02T14:45:00Z,AAPL,1,inf,1,1,1": "column high: 'inf' is not a number",
        "2024-01-02T14:45:00Z,AAPL,1,1": "row 2: expected 7 columns, got 4",
    }
    for row, message in cases.items():
        with pytest.raises(BarFileError, match=message.replace("(", r"\(")):
            load(write(tmp_path / "one.csv", lines[0] + "\n" + row + "\n"))
    with pytest.raises(BarFileError, match=r"^x.csv row 1: bad header 'ts,sym,o,h,l,c,v'"):
        load(write(tmp_path / "x.csv", "ts,sym,o,h,l,c,v\n1,A,1,1,1,1,1\n"))
    with pytest.raises(BarFileError, match=r"^b.json, column bars.AAPL\[1\].c: 'abc' is not a number"):
        load(
            write(
                tmp_path / "b.json",
                json.dumps(
                    {
                        "bars": {
                            "AAPL": [
                                {"t": "2024-01-02T14:30:00Z", "o": 1, "h": 1, "l": 1, "c": 1, "v": 1},
                                {"t": "2024-01-02T14:31:00Z", "o": 1, "h": 1, "l": 1, "c": "abc", "v": 1},
                            ]
                        }
                    }
                ),
            )
        )


def test_bad_rows_can_be_skipped_and_are_listed(tmp_path: Path) -> None:
    text = DESK + "2024-01-02T14:32:00Z,AAPL,1,x,1,1,1\n"
    data = load(write(tmp_path / "bars.csv", text), errors="skip")
    assert len(data) == 3 and data.report.skipped == [(5, "column high: 'x' is not a number")]


def test_out_of_order_rows_are_sorted_and_duplicates_dropped_and_both_reported(tmp_path: Path) -> None:
    lines = DESK.splitlines()
    text = "\n".join([lines[0], lines[3], lines[1], lines[2], lines[1].replace("185.40,1000", "185.40,9")]) + "\n"
    data = load(write(tmp_path / "bars.csv", text))
    assert [b.start_ns for b in data] == [T0, T0, T0 + MIN]
    assert data.report.out_of_order == 1 and data.report.duplicates == 1
    assert data.report.duplicate_examples == [("AAPL", T0)]
    assert next(iter(data)).volume == Decimal(1000)  # the first of the duplicates is kept
    assert "1 rows out of time order" in data.report.summary()


def test_gzip_files_and_folders_load_and_epoch_nanoseconds_are_accepted(tmp_path: Path) -> None:
    with gzip.open(tmp_path / "a.csv.gz", "wt") as handle:
        handle.write(DESK)
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.csv", f"start_ns,symbol,open,high,low,close\n{T0 + 2 * MIN},AAPL,1,2,1,2\n")
    data = load(tmp_path)
    assert len(data) == 4 and data.symbol_list() == ["AAPL", "MSFT"]
    assert int(data.ts_ns[-1]) == T0 + 2 * MIN and float(data.volume[-1]) == 0.0


def test_the_columnar_form_costs_under_70_bytes_a_bar(tmp_path: Path) -> None:
    count = 50_000
    lines = ["timestamp,symbol,open,high,low,close,volume"]
    lines += [f"{1_704_205_800 + 60 * i},SPY,470.{i % 100:02d},471.5,469.5,470.5,{i}" for i in range(count)]
    data = load(write(tmp_path / "big.csv", "\n".join(lines) + "\n"))
    assert len(data) == count and data.nbytes / count < 70
    assert data.ts_ns.dtype == np.int64 and data.close.dtype == np.float64
    assert sum(1 for _ in data.rows()) == count


def test_the_real_sample_data_loads_and_backtests() -> None:
    spx = load(SAMPLES / "GSPC.csv")
    ixic = load(SAMPLES / "IXIC.csv")
    assert len(spx) == len(ixic) == 1258 and spx.report.summary() == "" and spx.symbols == ["GSPC"]
    bars = list(spx)
    assert bars[0].close == Decimal("1831.97998") and bars[-1].close == Decimal("2506.850098")
    assert bars[0].timestamp.astimezone(NEW_YORK).date() == dt.date(2014, 1, 2)
    result = run_backtest(_Hold(), spx)
    assert len(result.equity_curve) == 1258 and result.positions == {"GSPC": Decimal(1)}


class _Hold(Strategy):
    """Buys one unit on the first bar."""

    async def on_bar(self, bar: Bar) -> None:
        if self.position(bar.symbol) == 0 and not self.open_orders:
            await self.buy(bar.symbol, 1)


def test_the_replay_feed_reads_other_formats_through_the_loaders(tmp_path: Path) -> None:
    with DESK_SAMPLE.open(newline="") as sample:
        desk = parse_replay(sample)
    assert desk.rows[0].open == Decimal("175.10")  # the desk's own CSV keeps its exact text
    yahoo = tmp_path / "AAPL.csv"
    write(yahoo, YAHOO)
    with yahoo.open(newline="") as handle:
        data = parse_replay(handle)
    assert [r.symbol for r in data.rows] == ["AAPL"] * 3 and data.rows[2].close == Decimal("181.910004")
    with (tmp_path / "bad.csv").open("w") as handle:
        handle.write(ALPACA_CSV + "AAPL,2024-01-02 14:32:00+00:00,1,1,1,zz,1,1,1\n")
    with (tmp_path / "bad.csv").open(newline="") as handle:
        mixed = parse_replay(handle)
    assert len(mixed.rows) == 3 and [b.line for b in mixed.bad_rows] == [5]


def test_cache_day_ranges_merge_and_report_what_is_missing(tmp_path: Path) -> None:
    folder = tmp_path / "AAPL"
    d = dt.date
    cache.store(folder, "AAPL", [], d(2024, 1, 1), d(2024, 1, 5), complete_until=d(2030, 1, 1))
    cache.store(folder, "AAPL", [], d(2024, 1, 6), d(2024, 1, 9), complete_until=d(2030, 1, 1))
    cache.store(folder, "AAPL", [], d(2024, 1, 20), d(2024, 1, 25), complete_until=d(2024, 1, 22))
    assert cache.covered(folder) == [(d(2024, 1, 1), d(2024, 1, 9)), (d(2024, 1, 20), d(2024, 1, 22))]
    assert cache.missing_ranges(folder, d(2023, 12, 30), d(2024, 1, 31)) == [
        (d(2023, 12, 30), d(2023, 12, 31)),
        (d(2024, 1, 10), d(2024, 1, 19)),
        (d(2024, 1, 23), d(2024, 1, 31)),
    ]
    assert cache.missing_ranges(folder, d(2024, 1, 2), d(2024, 1, 8)) == []
    assert not list(folder.glob("*.csv"))  # no bars: no month files, only coverage


def test_desk_data_check_reports_a_file_or_its_first_problem(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from desk.cli.main import app

    runner = CliRunner()
    good = runner.invoke(app, ["data", "check", str(SAMPLES / "GSPC.csv")])
    assert good.exit_code == 0 and "yahoo, 1,258 bars of GSPC" in good.output
    lines = YAHOO.splitlines()
    path = write(tmp_path / "QQQ.csv", "\n".join([*lines, "2024-01-05,null,null,null,null,null,null"]) + "\n")
    bad = runner.invoke(app, ["data", "check", str(path)])
    assert bad.exit_code == 1 and "QQQ.csv row 5, column open: Yahoo 'null' row" in bad.output
    skipped = runner.invoke(app, ["data", "check", str(path), "--skip-null"])
    assert skipped.exit_code == 0 and "1 Yahoo 'null' rows skipped" in skipped.output


def _columns_equal(a: object, b: object) -> None:
    for name in ("sym", "ts_ns", "open", "high", "low", "close", "volume"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    for name in ("vwap", "trade_count"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.symbols == b.symbols  # type: ignore[attr-defined]
    assert a.source == b.source  # type: ignore[attr-defined]


@pytest.mark.parametrize("stamp", ["iso", "iso-fraction", "epoch", "epoch-ns"])
def test_the_fast_csv_reader_equals_the_row_by_row_parser(
    tmp_path: Path, stamp: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clean file goes through pandas' C parser; what it gives must be exactly the exact parser's:
    awkward floats (17 significant digits, exponents), several symbols in first-appearance order,
    every timestamp style, empty vwap cells."""
    import random

    from desk.data import loaders

    rng = random.Random(3)
    header = (
        "start_ns,symbol,open,high,low,close,volume,trade_count,vwap"
        if stamp == "epoch-ns"
        else "symbol,timestamp,open,high,low,close,volume,trade_count,vwap"
    )
    lines = [header]
    for i in range(3000):
        symbol = ("MSFT", "AAPL", "SPY")[i % 3]
        ts = T0 // 10**9 + i * 60
        when = {
            "iso": dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(),
            "iso-fraction": dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z"),
            "epoch": str(ts),
            "epoch-ns": str(ts * 10**9),
        }[stamp]
        low = rng.uniform(1, 500)
        o, c = low + rng.random(), low + rng.random() * 2
        high = max(o, c) + rng.random()
        prices = [repr(o), f"{high:.17g}", repr(low), f"{c:.6e}"]  # open, high, low, close
        o_v, h_v, lo_v, c_v = (float(x) for x in prices)
        if not (lo_v <= min(o_v, c_v) and max(o_v, c_v) <= h_v):
            continue
        first = [str(ts * 10**9), symbol] if stamp == "epoch-ns" else [symbol, when]
        rest = [repr(rng.uniform(0, 1e7)), str(rng.randint(0, 99)), "" if i % 7 == 0 else repr(rng.uniform(low, high))]
        lines.append(",".join(first + prices + rest))
    path = write(tmp_path / "bars.csv", "\n".join(lines) + "\n")
    with path.open() as handle:
        slow = loaders.parse_lines(handle, name=path.name)
    fast = loaders._fast_csv(path, header.split(","), lines[1], cast(loaders.Format, slow.source))
    assert fast is not None  # the file is clean: the fast reader took it
    _columns_equal(fast, slow)
    monkeypatch.setattr(loaders, "FAST_CSV_BYTES", 0)  # and load() uses it for such a file
    _columns_equal(load(path), slow)
    assert fast.symbols == ["MSFT", "AAPL", "SPY"]


def test_a_file_with_one_bad_row_deep_inside_still_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast reader gives up on it; the row-by-row parser names the row and column."""
    from desk.data import loaders

    monkeypatch.setattr(loaders, "FAST_CSV_BYTES", 0)
    rows = [f"{T0 + i * MIN},AAPL,10,11,9,10.5,100" for i in range(5000)]
    rows[4321] = f"{T0 + 4321 * MIN},AAPL,10,11,9,abc,100"
    path = write(tmp_path / "bars.csv", "start_ns,symbol,open,high,low,close,volume\n" + "\n".join(rows) + "\n")
    with pytest.raises(BarFileError) as err:
        load(path)
    assert str(err.value) == "bars.csv row 4323, column close: 'abc' is not a number"
