"""The strategy -> router partition formula is fixed: every replica, process and release must agree."""

from __future__ import annotations

import hashlib

import pytest

from desk.core.partition import MAX_PARTITIONS, partition_of


def test_the_partition_is_the_first_eight_bytes_of_sha256_modulo_the_count() -> None:
    # Pinned: changing these moves strategies between partitions (routers of two releases disagree).
    assert [partition_of(s, 8) for s in ("alpha", "beta", "load0", "probe", "ma_crossover")] == [6, 1, 7, 3, 4]
    assert [partition_of(s, 3) for s in ("alpha", "beta", "load0", "probe", "ma_crossover")] == [2, 0, 2, 1, 0]
    digest = int.from_bytes(hashlib.sha256(b"alpha").digest()[:8], "big")
    assert partition_of("alpha", 8) == digest % 8


def test_every_strategy_has_partition_zero_when_there_is_one() -> None:
    assert {partition_of(f"s{n}", 1) for n in range(50)} == {0}


def test_strategies_spread_over_the_partitions() -> None:
    counts = [0] * 8
    for n in range(800):
        counts[partition_of(f"strategy-{n}", 8)] += 1
    assert min(counts) > 60  # 100 each on average


@pytest.mark.parametrize("count", [0, -1, MAX_PARTITIONS + 1])
def test_a_partition_count_out_of_range_is_refused(count: int) -> None:
    with pytest.raises(ValueError, match="partitions must be"):
        partition_of("alpha", count)
