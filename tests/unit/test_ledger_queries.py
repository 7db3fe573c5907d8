"""The ledger's valuation of the books: total P&L after fees, member totals, the leaderboard."""

from __future__ import annotations

from decimal import Decimal as D

from desk.core.books import Account, Position, Side, return_pct
from services.ledger.queries import Valuation, leaderboard, member_totals, value_strategy


def test_fees_reduce_cash_and_total_pnl_but_not_average_cost_or_realized() -> None:
    p = Position("AAPL")
    a = Account(initial_cash=D(1000), cash=D(1000))
    for side, qty, price, fee in ((Side.BUY, D(5), D(100), D("1.25")), (Side.SELL, D(5), D(101), D("0.75"))):
        realized = p.apply_fill(side, qty, price, fee)
        a.apply_fill(side, qty, price, fee, realized)
        if side is Side.BUY:
            assert p.avg_cost == D(100)
    assert a.cash == D("1003.00")  # 1000 - 500 - 1.25 + 505 - 0.75
    assert (a.realized_pnl, a.fees, p.fees) == (D(5), D(2), D(2))
    v = value_strategy("s1", "m1", a, [p], {})
    assert v.total_pnl == D(3)  # realized 5 minus fees 2


def test_members_are_ranked_by_return_then_pnl() -> None:
    def val(strategy: str, member: str, initial: str, cash: str) -> Valuation:
        return value_strategy(strategy, member, Account(initial_cash=D(initial), cash=D(cash)), [], {}, fills=1)

    members = member_totals(
        [
            val("a1", "alice", "100", "110"),
            val("a2", "alice", "100", "100"),
            val("b1", "bob", "1000", "1050"),
            val("c1", "carol", "100", "95"),
        ]
    )
    rows = leaderboard(members)
    assert [(r.rank, r.member_id, r.return_pct) for r in rows] == [
        (1, "bob", "5"),
        (2, "alice", "5"),
        (3, "carol", "-5"),
    ]
    assert rows[0].total_pnl == "50"  # same return as alice: the larger P&L ranks first
    assert rows[1].total_pnl == "10" and rows[1].strategies == 2 and rows[1].fills == 2
    assert return_pct(D(1), D(3)) == D("33.3333")
