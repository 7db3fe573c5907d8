"""Settings of the order router (environment variables ROUTER_*, plus the shared NATS_*/LOG_*)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from desk.bus.settings import BusSettings
from desk.core.partition import MAX_PARTITIONS
from desk.core.risk import DEFAULT_INITIAL_CASH, DEFAULT_LIMITS


class Settings(BusSettings):
    """The router's settings; each field is read from the upper-cased env var of its name."""

    router_venue: str = Field(
        default="sim", pattern=r"^[a-z0-9_-]{1,16}$", description="venue whose gateway gets routed orders"
    )
    router_venue_wait: float = Field(
        default=2.0,
        ge=0,
        le=4.0,
        description="seconds an order waits for ROUTER_VENUE's gateway to appear (its durable consumer gateway-<venue> "
        "on ORDERS) before it is refused as VENUE_UNAVAILABLE; covers a desk that is just starting",
    )
    router_default_max_order_notional: Decimal = Field(
        default=DEFAULT_LIMITS.max_order_notional,
        gt=0,
        description="largest order notional when a strategy's spec sets none",
    )
    router_default_max_position_notional: Decimal = Field(
        default=DEFAULT_LIMITS.max_position_notional,
        gt=0,
        description="largest absolute position notional per symbol, by default",
    )
    router_default_max_orders_per_minute: int = Field(
        default=DEFAULT_LIMITS.max_orders_per_minute,
        gt=0,
        description="orders a strategy may send in any 60 s window, by default",
    )
    router_default_initial_cash: Decimal = Field(
        default=DEFAULT_INITIAL_CASH, gt=0, description="virtual account cash when a strategy's spec sets none"
    )
    router_partitions: int = Field(
        default=8,
        ge=1,
        le=MAX_PARTITIONS,
        description="partitions the strategies are split into (a stable hash of the strategy id); a replica answers "
        "a strategy's orders only while it holds its partition's lease (router-p<i> in DESK_LEASES), so limits "
        "are exact with any number of replicas; every replica must use the same number",
    )
    router_startup_timeout: float = Field(
        default=30.0, gt=0, description="seconds allowed to load KV state and replay executions at start"
    )
