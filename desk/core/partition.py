"""Strategy -> router partition: a stable hash, the same in every replica, process and release.

The order router's replicas split the strategies between them by partition (services.order_router
.partitions): a replica answers the orders of a strategy only while it holds the lease of that
strategy's partition. Every replica must compute the same partition for a strategy, so the formula
is fixed (and pinned by tests/unit/test_partition.py): the first 8 bytes of the SHA-256 of the
strategy id (UTF-8), read big-endian, modulo the number of partitions. Python's ``hash()`` would not
do: it is salted per process.
"""

from __future__ import annotations

import hashlib

#: The most partitions a desk may have (ROUTER_PARTITIONS); each is one lease key in DESK_LEASES.
MAX_PARTITIONS = 256


def partition_of(strategy_id: str, partitions: int) -> int:
    """The partition (0 .. partitions-1) of ``strategy_id``."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be 1..{MAX_PARTITIONS}, got {partitions}")
    digest = hashlib.sha256(strategy_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % partitions
