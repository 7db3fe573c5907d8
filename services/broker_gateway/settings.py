"""Settings of the broker gateway (environment: BROKER, SIM_*; plus the bus's NATS_URL, LOG_*...)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field

from desk.bus.settings import BusSettings

SUPPORTED_BROKERS = ("sim",)


class Settings(BusSettings):
    """Frozen, validated at start-up; every field is the upper-cased environment variable."""

    broker: Literal["sim", "alpaca"] = Field(
        default="sim", description="the venue this gateway fronts: sim (local simulator) or alpaca (not in this build)"
    )
    sim_slippage_bps: Decimal = Field(
        default=Decimal(2), ge=0, le=1000, description="sim: market fills move against the order by this many bps"
    )
    sim_fee_bps: Decimal = Field(default=Decimal(1), ge=0, le=1000, description="sim: fee in bps of each fill's notional")
    sim_fee_per_share: Decimal = Field(default=Decimal(0), ge=0, description="sim: fee per share (unit) filled")
    sim_fee_min: Decimal = Field(default=Decimal(0), ge=0, description="sim: minimum fee per execution")
    sim_participation: Decimal = Field(
        default=Decimal("0.25"), gt=0, le=1,
        description="sim: share of each update's volume (bar volume, trade or quote size) an order may take",
    )
    gateway_ack_wait: float = Field(
        default=30.0, gt=0, description="seconds before an unacked routed order is redelivered"
    )
    gateway_max_ack_pending: int = Field(
        default=64, ge=1, description="routed orders delivered to the gateway and not yet acked, at most"
    )

    @property
    def venue(self) -> str:
        return self.broker
