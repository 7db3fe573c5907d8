"""Valuing the books for the query endpoints: P&L rows, member totals, the leaderboard. Pure.

Positions are marked at the last trade price from ``DESK_PRICES``; a symbol without a price is
marked at cost (market value = cost basis, unrealized 0) rather than at zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal

from desk.bus.decimals import fmt
from desk.core.books import ZERO, Account, Position, return_pct
from desk.v1 import ledger_pb2

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def effective_limit(limit: int) -> int:
    """``0`` means 100; anything above :data:`MAX_LIMIT` is capped (replies must stay small)."""
    return DEFAULT_LIMIT if limit == 0 else min(limit, MAX_LIMIT)


@dataclass
class Valuation:
    """One strategy (or a member's sum of strategies) valued at last prices."""

    strategy_id: str
    member_id: str
    initial_cash: Decimal = ZERO
    cash: Decimal = ZERO
    market_value: Decimal = ZERO
    realized_pnl: Decimal = ZERO
    unrealized_pnl: Decimal = ZERO
    fees: Decimal = ZERO
    fills: int = 0
    strategies: set[str] = field(default_factory=set)

    @property
    def equity(self) -> Decimal:
        return self.cash + self.market_value

    @property
    def total_pnl(self) -> Decimal:
        return self.equity - self.initial_cash

    @property
    def return_pct(self) -> Decimal:
        return return_pct(self.total_pnl, self.initial_cash)

    def add(self, other: Valuation) -> None:
        self.initial_cash += other.initial_cash
        self.cash += other.cash
        self.market_value += other.market_value
        self.realized_pnl += other.realized_pnl
        self.unrealized_pnl += other.unrealized_pnl
        self.fees += other.fees
        self.fills += other.fills
        self.strategies.add(other.strategy_id)

    def to_row(self) -> ledger_pb2.PnlRow:
        return ledger_pb2.PnlRow(
            strategy_id=self.strategy_id,
            member_id=self.member_id,
            initial_cash=fmt(self.initial_cash),
            cash=fmt(self.cash),
            market_value=fmt(self.market_value),
            equity=fmt(self.equity),
            realized_pnl=fmt(self.realized_pnl),
            unrealized_pnl=fmt(self.unrealized_pnl),
            fees=fmt(self.fees),
            total_pnl=fmt(self.total_pnl),
            return_pct=fmt(self.return_pct),
            fills=self.fills,
        )


def value_strategy(
    strategy_id: str,
    member_id: str,
    account: Account,
    positions: Sequence[Position],
    prices: Mapping[str, Decimal],
    fills: int = 0,
) -> Valuation:
    v = Valuation(
        strategy_id=strategy_id,
        member_id=member_id,
        initial_cash=account.initial_cash,
        cash=account.cash,
        realized_pnl=account.realized_pnl,
        fees=account.fees,
        fills=fills,
        strategies={strategy_id},
    )
    for position in positions:
        last = prices.get(position.symbol)
        v.market_value += position.market_value(last)
        v.unrealized_pnl += position.unrealized_pnl(last)
    return v


def member_totals(strategies: Sequence[Valuation]) -> list[Valuation]:
    """One row per member: the sum of its strategies (strategy_id empty)."""
    members: dict[str, Valuation] = {}
    for v in strategies:
        total = members.setdefault(v.member_id, Valuation(strategy_id="", member_id=v.member_id))
        total.add(v)
    return [members[m] for m in sorted(members)]


def leaderboard(members: Sequence[Valuation]) -> list[ledger_pb2.LeaderboardRow]:
    """Members ranked by return % then total P&L (both descending), then member id."""
    ranked = sorted(members, key=lambda v: (-v.return_pct, -v.total_pnl, v.member_id))
    return [
        ledger_pb2.LeaderboardRow(
            rank=i,
            member_id=v.member_id,
            equity=fmt(v.equity),
            total_pnl=fmt(v.total_pnl),
            return_pct=fmt(v.return_pct),
            strategies=len(v.strategies),
            fills=v.fills,
        )
        for i, v in enumerate(ranked, start=1)
    ]


def position_message(
    strategy_id: str, member_id: str, position: Position, last: Decimal | None, updated_ns: int
) -> ledger_pb2.Position:
    return ledger_pb2.Position(
        strategy_id=strategy_id,
        member_id=member_id,
        symbol=position.symbol,
        qty=fmt(position.qty),
        avg_cost=fmt(position.avg_cost),
        cost_basis=fmt(position.cost_basis),
        last_price=fmt(last),
        market_value=fmt(position.market_value(last)),
        realized_pnl=fmt(position.realized_pnl),
        unrealized_pnl=fmt(position.unrealized_pnl(last)),
        updated_ns=updated_ns,
    )
