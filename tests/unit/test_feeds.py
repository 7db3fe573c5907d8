"""The marketdata feeds as pure generators: determinism, sane bars, CSV parsing, replay timing."""

from __future__ import annotations

import itertools
from decimal import Decimal

import pytest

from services.marketdata.feeds.base import Feed
from services.marketdata.feeds.replay import ReplayFeed, ReplayFileError, delays, parse_replay, parse_timestamp
from services.marketdata.feeds.synthetic import SyntheticFeed
from services.marketdata.settings import SAMPLE_BARS

SEC = 1_000_000_000
SYMBOLS = ["AAPL", "MSFT", "SPY", "TSLA", "NVDA"]


def _bars(feed: SyntheticFeed, n: int) -> list[tuple[str, str, str, str, str, str, int]]:
    out = []
    for _ in range(n):
        for t in feed.next_bars():
            b = t.bar
            out.append((b.symbol, b.open, b.high, b.low, b.close, b.volume, b.start_ns))
    return out


def test_the_synthetic_feed_is_a_feed() -> None:
    feed: Feed = SyntheticFeed(SYMBOLS, 7, SEC, 0)
    assert feed.name == "synthetic"


def test_the_same_seed_gives_the_same_prices_and_another_seed_does_not() -> None:
    first = _bars(SyntheticFeed(SYMBOLS, 7, SEC, 0), 50)
    again = _bars(SyntheticFeed(SYMBOLS, 7, SEC, 0), 50)
    other = _bars(SyntheticFeed(SYMBOLS, 8, SEC, 0), 50)
    assert first == again
    assert first != other


def test_adding_a_symbol_does_not_change_the_other_symbols_paths() -> None:
    alone = [b for b in _bars(SyntheticFeed(["AAPL"], 7, SEC, 0), 20)]
    among = [b for b in _bars(SyntheticFeed(["MSFT", "AAPL"], 7, SEC, 0), 20) if b[0] == "AAPL"]
    assert alone == among


def test_synthetic_bars_are_consistent_with_two_decimal_prices_and_plausible_volume() -> None:
    feed = SyntheticFeed(SYMBOLS, 7, SEC, 1_000 * SEC)
    previous_close: dict[str, Decimal] = {}
    for index in range(300):
        for tick in feed.next_bars():
            bar = tick.bar
            o, h, lo, c = (Decimal(x) for x in (bar.open, bar.high, bar.low, bar.close))
            assert all(x.as_tuple().exponent == -2 for x in (o, h, lo, c))
            assert lo <= min(o, c) and max(o, c) <= h and lo > 0
            assert 1000 <= int(bar.volume) <= 50000
            assert bar.start_ns == 1_000 * SEC + index * SEC and bar.interval_ns == SEC
            if bar.symbol in previous_close:
                assert o == previous_close[bar.symbol]
            previous_close[bar.symbol] = c
            bid, ask = Decimal(tick.quote.bid_price), Decimal(tick.quote.ask_price)
            assert bid < c < ask and ask - bid <= c * Decimal("0.001")
            assert tick.trade.price == bar.close and tick.trade.ts_ns == bar.start_ns + SEC


def test_synthetic_prices_move_enough_to_trade_but_stay_near_their_start_over_hours() -> None:
    feed = SyntheticFeed(["AAPL", "SPY"], 7, SEC, 0)
    start = {t.symbol: Decimal(t.price) for t in feed.initial()}
    closes: dict[str, list[Decimal]] = {"AAPL": [], "SPY": []}
    for _ in range(4 * 3600):
        for tick in feed.next_bars():
            closes[tick.symbol].append(Decimal(tick.bar.close))
    for symbol, series in closes.items():
        first_minute = series[:60]
        assert (max(first_minute) - min(first_minute)) / start[symbol] > Decimal("0.003")
        assert all(abs(c - start[symbol]) / start[symbol] < Decimal("0.25") for c in series)


def test_the_synthetic_schedule_spaces_rounds_by_the_interval() -> None:
    feed = SyntheticFeed(["AAPL", "MSFT"], 7, 2 * SEC, 0)
    first = list(itertools.islice(feed.schedule(), 4))
    assert [s.delay for s in first] == [2.0, 0.0, 2.0, 0.0]
    assert [s.tick.symbol for s in first] == ["AAPL", "MSFT", "AAPL", "MSFT"]


def test_initial_prices_cover_every_symbol_with_plausible_values() -> None:
    trades = SyntheticFeed([*SYMBOLS, "ZZZ"], 7, SEC, 5).initial()
    assert [t.symbol for t in trades] == [*SYMBOLS, "ZZZ"]
    assert all(Decimal(20) <= Decimal(t.price) <= Decimal(500) and t.ts_ns == 5 for t in trades)


CSV = """timestamp,symbol,open,high,low,close,volume
2024-03-04T14:30:00Z,AAPL,175.10,175.20,175.00,175.15,1000
2024-03-04T14:30:00Z,MSFT,414.90,415.00,414.80,414.95,500
oops,AAPL,1,1,1,1,1
2024-03-04T14:31:00Z,AAPL,175.15,175.10,175.00,175.05,1200
2024-03-04T14:31:00Z,aapl,175.15,175.20,175.00,175.05,1200
2024-03-04T14:31:00Z,AAPL,abc,175.20,175.00,175.05,1200
2024-03-04T14:31:00Z,AAPL,175.15,175.20
1709562660,AAPL,175.15,175.30,175.10,175.25,900

1709562690,MSFT,414.95,415.10,414.90,415.00,700
"""


def test_replay_parsing_keeps_good_rows_in_order_and_reports_bad_rows_by_line() -> None:
    data = parse_replay(CSV.splitlines(keepends=True))
    assert [(r.line, r.symbol, r.close) for r in data.rows] == [
        (2, "AAPL", Decimal("175.15")),
        (3, "MSFT", Decimal("414.95")),
        (9, "AAPL", Decimal("175.25")),
        (11, "MSFT", Decimal("415.00")),
    ]
    reasons = {bad.line: bad.reason for bad in data.bad_rows}
    assert sorted(reasons) == [4, 5, 6, 7, 8]
    assert "neither ISO-8601 nor epoch" in reasons[4]
    assert "inconsistent bar" in reasons[5]
    assert "not a valid symbol" in reasons[6]
    assert "open 'abc' is not a decimal number" in reasons[7]
    assert "expected 7 columns" in reasons[8]


def test_timestamps_parse_as_iso_or_epoch_seconds_with_naive_meaning_utc() -> None:
    assert parse_timestamp("1970-01-01T00:00:01Z") == SEC
    assert parse_timestamp("1970-01-01T00:00:01") == SEC
    assert parse_timestamp("1970-01-01T01:00:01+01:00") == SEC
    assert parse_timestamp("1.5") == SEC + SEC // 2
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_a_file_without_the_header_is_refused() -> None:
    with pytest.raises(ReplayFileError, match="bad header"):
        parse_replay(["ts,sym,o,h,l,c,v\n"])
    with pytest.raises(ReplayFileError, match="empty"):
        parse_replay([])


def test_replay_delays_are_the_original_spacing_divided_by_the_speed() -> None:
    rows = parse_replay(CSV.splitlines(keepends=True)).rows
    assert delays(rows, 60) == [0.0, 0.0, 1.0, 0.5]
    assert delays(rows, 0) == [0.0, 0.0, 0.0, 0.0]
    assert delays(rows, 1) == [0.0, 0.0, 60.0, 30.0]


def test_a_replay_emits_the_file_once_or_loops_with_time_moving_on() -> None:
    data = parse_replay(CSV.splitlines(keepends=True))
    once = list(ReplayFeed(data, 0).schedule())
    assert [s.tick.bar.close for s in once] == ["175.15", "414.95", "175.25", "415.00"]
    assert once[0].tick.bar.interval_ns == 60 * SEC
    assert once[0].tick.trade.price == "175.15" and once[0].tick.trade.ts_ns == once[0].tick.bar.start_ns + 60 * SEC

    looping = ReplayFeed(data, 60, loop=True)
    ticks = list(itertools.islice(looping.schedule(), 8))
    starts = [s.tick.bar.start_ns for s in ticks]
    assert starts[4:] == [s + looping.pass_ns for s in starts[:4]] and starts[4] > starts[3]
    # the next pass starts one (shortest) bar after the last row: 60 s of file time at speed 60
    assert ticks[4].delay == 1.0


def test_the_shipped_sample_file_is_clean_and_realistic() -> None:
    with SAMPLE_BARS.open(newline="") as handle:
        data = parse_replay(handle)
    assert data.bad_rows == [] and len(data.rows) >= 200
    assert {r.symbol for r in data.rows} == {"AAPL", "MSFT", "SPY"}
    assert ReplayFeed(data, 60).intervals == {"AAPL": 60 * SEC, "MSFT": 60 * SEC, "SPY": 60 * SEC}
