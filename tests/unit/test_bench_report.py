"""The bench's statistics and report: percentiles, ratios, targets and the table (pure, no clock)."""

from __future__ import annotations

import json

import pytest

from bench.stats import Figure, Target, percentile, ratio, render_table, report_json, summarize


def test_percentile_interpolates_between_closest_ranks_like_numpy() -> None:
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 90) == pytest.approx(3.7)  # numpy.percentile([1, 2, 3, 4], 90)


def test_percentile_does_not_depend_on_input_order() -> None:
    assert percentile([10.0, 1.0, 7.0, 3.0, 5.0], 50) == 5.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_refuses_no_values_and_out_of_range_q() -> None:
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_summary_of_a_series() -> None:
    s = summarize([float(v) for v in range(1, 11)])
    assert (s.n, s.p50, s.mean, s.max) == (10, pytest.approx(5.5), pytest.approx(5.5), 10.0)
    assert s.p90 == pytest.approx(9.1)
    assert s.p99 == pytest.approx(9.91)


def test_ratio_is_desk_over_bare_and_missing_when_either_is() -> None:
    assert ratio(3.0, 1.5) == pytest.approx(2.0)
    assert ratio(None, 1.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None


def test_targets_on_the_figure_and_on_the_ratio() -> None:
    p50 = Figure("orders", "p50", "ms", 1.1, bare=0.5, target=Target("ratio_max", 2.0))
    assert p50.ratio == pytest.approx(2.2)
    assert p50.met is False
    p99 = Figure("orders", "p99", "ms", 4.9, target=Target("max", 5.0))
    assert p99.met is True
    rate = Figure("orders", "rate", "orders/s", 4999.0, bare=10000.0, target=Target("min", 5000))
    assert rate.met is False
    assert Figure("x", "y", "u", None, target=Target("min", 1)).met is None
    assert Figure("x", "y", "u", 1.0).met is None


def test_table_lists_figure_bare_ratio_target_and_met() -> None:
    table = render_table(
        [
            Figure("orders", "ack p50", "ms", 1.0, bare=0.5, target=Target("ratio_max", 2.0)),
            Figure("ledger", "ingest", "fills/s", 900.0, bare=30000.0, target=Target("min", 20000)),
        ]
    )
    lines = table.splitlines()
    assert lines[0].split() == ["figure", "unit", "desk", "bare", "ratio", "target", "met"]
    assert "2.00x" in lines[2] and "<= 2x bare" in lines[2] and lines[2].endswith("yes")
    assert "0.03x" in lines[3] and ">= 20000 fills/s" in lines[3] and lines[3].endswith("NO")


def test_json_report_carries_ratio_met_and_machine() -> None:
    data = json.loads(
        report_json(
            [Figure("orders", "rate", "orders/s", 6000.0, bare=3000.0, target=Target("min", 5000))],
            {"cpu_count": 2, "python": "3.11.7"},
            ["a note"],
            quick=True,
        )
    )
    (figure,) = data["figures"]
    assert figure["ratio"] == pytest.approx(2.0)
    assert figure["met"] is True
    assert figure["target"]["text"] == ">= 5000 orders/s"
    assert data["machine"]["cpu_count"] == 2
    assert data["notes"] == ["a note"] and data["quick"] is True
