"""The SDK's backtester runs the desk's own cores: the same reports as the sim venue fed directly,
the same ticks as the replay feed, the same defaults as the router and the sim gateway."""

from __future__ import annotations

import dataclasses
import random
from decimal import Decimal

import pytest

from desk.core import marketdata
from desk.core.marketdata import replay_tick
from desk.core.matching import SimConfig, SimEngine
from desk.core.risk import DEFAULT_INITIAL_CASH, DEFAULT_LIMITS
from desk.v1 import orders_pb2
from services.broker_gateway.settings import Settings as GatewaySettings
from services.marketdata.feeds import base, replay, synthetic
from services.order_router.settings import Settings as RouterSettings
from strategy_sdk import Bar, Strategy
from strategy_sdk.orders import build_order_request
from strategy_sdk.testing import random_walk_bars, run_backtest

HOURS_3 = 3 * 3600 * 1_000_000_000
SYMBOLS = ["AAPL", "MSFT", "SPY"]


def spread_over_days(bars: list[Bar]) -> list[Bar]:
    """Bars three hours apart per round of symbols, so DAY orders expire along the way."""
    t0 = bars[0].start_ns
    n = len(SYMBOLS)
    return [dataclasses.replace(b, start_ns=t0 + (i // n) * HOURS_3, interval_ns=HOURS_3) for i, b in enumerate(bars)]


def random_script(seed: int, bars: int) -> dict[int, list[tuple[str, dict[str, object]]]]:
    """Per bar index, the orders (and cancels) a strategy sends: every type, time in force and size."""
    rng = random.Random(seed)
    script: dict[int, list[tuple[str, dict[str, object]]]] = {}
    n = 0
    for i in range(bars):
        actions: list[tuple[str, dict[str, object]]] = []
        for _ in range(rng.choice([0, 0, 1, 2])):
            n += 1
            if n > 3 and rng.random() < 0.2:
                actions.append(("cancel", {"client_order_id": f"o{rng.randint(1, n - 1)}"}))
                continue
            kind = rng.choice(["market", "limit", "stop", "stop_limit"])
            args: dict[str, object] = {
                "symbol": rng.choice(SYMBOLS),
                "side": rng.choice(["buy", "sell"]),
                "qty": rng.randint(1, 80),
                "type": kind,
                "time_in_force": rng.choice(["day", "gtc", "ioc", "fok"]),
                "client_order_id": f"o{n}",
            }
            offset = Decimal(rng.randint(-200, 200)) / 100
            if kind in ("limit", "stop_limit"):
                args["limit_price"] = Decimal(100) + offset
            if kind in ("stop", "stop_limit"):
                args["stop_price"] = Decimal(100) + offset + Decimal(rng.randint(-50, 50)) / 100
            actions.append(("order", args))
        if actions:
            script[i] = actions
    return script


class Scripted(Strategy):
    def __init__(self, script: dict[int, list[tuple[str, dict[str, object]]]]) -> None:
        self.script = script
        self.index = -1

    async def on_bar(self, bar: Bar) -> None:
        self.index += 1
        for action, args in self.script.get(self.index, []):
            if action == "cancel":
                await self.cancel(str(args["client_order_id"]))
            else:
                await self.submit_order(**args)  # type: ignore[arg-type]


GENEROUS = {
    "risk": {
        "max_order_notional": "10000000",
        "max_position_notional": "10000000",
        "max_orders_per_minute": 100000,
        "allow_short": True,
    },
    "initial_cash": "100000000",
}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lazy_market_data_gives_the_same_reports_as_feeding_every_tick(seed: int) -> None:
    bars = spread_over_days(random_walk_bars(SYMBOLS, 150, seed=seed, step_bps=150))
    script = random_script(seed, len(bars))
    lazy = run_backtest(Scripted(script), bars, config=GENEROUS, record_reports=True)
    eager = run_backtest(Scripted(script), bars, config=GENEROUS, feed_every_tick=True, record_reports=True)
    assert len(lazy.reports) > 100
    kinds = {r.exec_type for r in lazy.reports}
    assert len(kinds) >= 5, kinds  # new, partial fills, fills, cancels, expiries...
    assert lazy.reports == eager.reports
    assert lazy.fills == eager.fills and lazy.updates == eager.updates
    assert list(lazy.equity_curve) == list(eager.equity_curve) and lazy.final_equity == eager.final_equity


def test_the_backtest_and_the_sim_engine_fed_directly_make_the_same_reports() -> None:
    bars = spread_over_days(random_walk_bars(SYMBOLS, 120, seed=9, step_bps=150))
    script = random_script(9, len(bars))
    result = run_backtest(
        Scripted(script), bars, config=GENEROUS, strategy_id="parity", member_id="m", record_reports=True
    )

    # The sim gateway's engine, fed what the replay feed publishes, with the orders routed after each tick.
    now = [0]
    engine = SimEngine(SimConfig(), clock=lambda: now[0])
    intervals = marketdata.infer_intervals((b.symbol, b.start_ns) for b in bars)
    direct = []
    for index, bar in enumerate(bars):
        tick = replay_tick(
            bar.symbol,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
            bar.start_ns,
            bar.interval_ns or intervals[bar.symbol],
        )
        now[0] = tick.trade.ts_ns
        direct += engine.on_bar(tick.bar) + engine.on_quote(tick.quote) + engine.on_trade(tick.trade)
        for action, args in script.get(index, []):
            if action == "cancel":
                cid = str(args["client_order_id"])
                order = engine.get(next((o.order_id for o in result.orders if o.client_order_id == cid), ""))
                if order is None or order.is_final:
                    continue  # the router refuses cancels of final or unknown orders
                cancel = orders_pb2.CancelRequest(strategy_id="parity", client_order_id=cid)
                direct += engine.cancel(
                    orders_pb2.RoutedOrder(order_id=order.order_id, strategy_id="parity", member_id="m", cancel=cancel)
                )
            else:
                request = build_order_request("parity", **args)  # type: ignore[arg-type]
                record = next(o for o in result.orders if o.client_order_id == request.client_order_id)
                if not record.accepted:  # the router refused it (here: a symbol not priced yet)
                    assert record.reason == "UNKNOWN_SYMBOL" and index < len(SYMBOLS)
                    continue
                direct += engine.submit(
                    orders_pb2.RoutedOrder(
                        order_id=record.order_id, strategy_id="parity", member_id="m", new_order=request
                    )
                )
    assert len(direct) > 100
    assert result.reports == direct


def test_the_backtests_defaults_are_the_routers_and_the_sim_gateways() -> None:
    router = RouterSettings()
    assert (
        DEFAULT_LIMITS.max_order_notional,
        DEFAULT_LIMITS.max_position_notional,
        DEFAULT_LIMITS.max_orders_per_minute,
        DEFAULT_LIMITS.allow_short,
        DEFAULT_INITIAL_CASH,
    ) == (
        router.router_default_max_order_notional,
        router.router_default_max_position_notional,
        router.router_default_max_orders_per_minute,
        False,
        router.router_default_initial_cash,
    )
    gateway = GatewaySettings()
    assert SimConfig() == SimConfig(
        slippage_bps=gateway.sim_slippage_bps,
        fee_bps=gateway.sim_fee_bps,
        fee_per_share=gateway.sim_fee_per_share,
        fee_min=gateway.sim_fee_min,
        participation=gateway.sim_participation,
    )


def test_the_feeds_build_ticks_with_the_pure_core_so_they_cannot_drift() -> None:
    assert base.quote_around is vars(synthetic)["quote_around"] is marketdata.quote_around
    assert base.Tick is vars(replay)["Tick"] is marketdata.Tick
    data = replay.parse_replay(
        [
            "timestamp,symbol,open,high,low,close,volume\n",
            "2026-01-02T14:30:00Z,AAPL,100.5,101,99.75,100.25,1200\n",
            "2026-01-02T14:31:00Z,AAPL,100.25,100.5,100,100.4,800\n",
        ]
    )
    feed = replay.ReplayFeed(data, speed=0)
    row = data.rows[1]
    assert feed.tick(row) == replay_tick(
        "AAPL", row.open, row.high, row.low, row.close, row.volume, row.ts_ns, 60_000_000_000
    )
    tick = feed.tick(row)
    assert (tick.quote.bid_price, tick.quote.ask_price, tick.trade.price, tick.trade.size) == (
        "100.38",
        "100.42",
        "100.4",
        "100",
    )  # half spread: 1.004 cents, rounded up
