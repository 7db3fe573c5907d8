"""``desk reconcile``: the ledger's positions, summed per symbol across strategies, against the broker's.

Pure: the CLI fetches both sides (``desk.ledger.positions`` and ``desk.broker.<venue>.positions``,
both ``PositionsReply``) and prints :func:`format_differences` of :func:`compare`. A symbol flat on
both sides is not a difference; quantities are compared exactly (Decimal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from desk.bus.decimals import fmt
from desk.v1 import ledger_pb2

ZERO = Decimal(0)


@dataclass(frozen=True)
class Difference:
    symbol: str
    ledger_qty: Decimal
    broker_qty: Decimal
    by_strategy: tuple[tuple[str, Decimal], ...]  # the ledger's per-strategy quantities

    @property
    def delta(self) -> Decimal:
        return self.broker_qty - self.ledger_qty


def net_positions(positions: Iterable[ledger_pb2.Position]) -> dict[str, Decimal]:
    """Signed quantity per symbol, summed over every strategy (empty qty = 0)."""
    totals: dict[str, Decimal] = {}
    for p in positions:
        totals[p.symbol] = totals.get(p.symbol, ZERO) + Decimal(p.qty or "0")
    return totals


def compare(ledger: Iterable[ledger_pb2.Position], broker: Iterable[ledger_pb2.Position]) -> list[Difference]:
    """Every symbol whose summed ledger quantity differs from the broker account's, sorted by symbol."""
    ledger = list(ledger)
    ours, theirs = net_positions(ledger), net_positions(broker)
    differences = []
    for symbol in sorted(set(ours) | set(theirs)):
        mine, venue = ours.get(symbol, ZERO), theirs.get(symbol, ZERO)
        if mine != venue:
            strategies = tuple(sorted((p.strategy_id, Decimal(p.qty or "0")) for p in ledger
                                      if p.symbol == symbol and Decimal(p.qty or "0") != 0))
            differences.append(Difference(symbol, mine, venue, strategies))
    return differences


def format_differences(differences: list[Difference], venue: str) -> list[str]:
    """Lines for a terminal: one per difference, or one line saying the books agree."""
    if not differences:
        return [f"reconcile: ledger and {venue} agree on every position"]
    lines = [f"reconcile: {len(differences)} difference(s) between the ledger and {venue}:"]
    for d in differences:
        parts = ", ".join(f"{s} {fmt(q)}" for s, q in d.by_strategy) or "no strategy holds it"
        lines.append(f"  {d.symbol}: ledger {fmt(d.ledger_qty)} ({parts}), {venue} {fmt(d.broker_qty)}, "
                     f"difference {fmt(d.delta)}")
    return lines
