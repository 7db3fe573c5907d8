"""Settings of the broker gateway (environment: BROKER, SIM_*, ALPACA_*; plus the bus's NATS_URL, LOG_*...)."""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import Field, SecretStr

from desk.bus.settings import BusSettings

SUPPORTED_BROKERS = ("sim", "alpaca")


class Settings(BusSettings):
    """Frozen, validated at start-up; every field is the upper-cased environment variable."""

    broker: Literal["sim", "alpaca"] = Field(
        default="sim",
        description="the venue this gateway fronts: sim (local simulator) or alpaca (paper trading via alpaca-py)",
    )
    sim_slippage_bps: Decimal = Field(
        default=Decimal(2), ge=0, le=1000, description="sim: market fills move against the order by this many bps"
    )
    sim_fee_bps: Decimal = Field(
        default=Decimal(1), ge=0, le=1000, description="sim: fee in bps of each fill's notional"
    )
    sim_fee_per_share: Decimal = Field(default=Decimal(0), ge=0, description="sim: fee per share (unit) filled")
    sim_fee_min: Decimal = Field(default=Decimal(0), ge=0, description="sim: minimum fee per execution")
    sim_participation: Decimal = Field(
        default=Decimal("0.25"),
        gt=0,
        le=1,
        description="sim: share of each update's volume (bar volume, trade or quote size) an order may take",
    )
    gateway_ack_wait: float = Field(
        default=30.0, gt=0, description="seconds before an unacked routed order is redelivered"
    )
    gateway_max_ack_pending: int = Field(
        default=64, ge=1, description="routed orders delivered to the gateway and not yet acked, at most"
    )
    gateway_fetch_batch: int = Field(
        default=64,
        ge=1,
        le=1024,
        description="sim: routed orders fetched and handled per pull; their reports are published pipelined and "
        "the orders acked together once every PubAck is in (capped at gateway_max_ack_pending; "
        "BROKER=alpaca always takes one order at a time)",
    )

    # Alpaca (BROKER=alpaca). The keys are SecretStr: never printed, logged or passed to strategies.
    alpaca_api_key: SecretStr | None = Field(
        default=None, description="alpaca: API key id (paper); required with BROKER=alpaca"
    )
    alpaca_secret_key: SecretStr | None = Field(
        default=None, description="alpaca: API secret key; required with BROKER=alpaca"
    )
    alpaca_paper: bool = Field(default=True, description="alpaca: paper trading (true) or live (false)")
    alpaca_rest_url: str | None = Field(
        default=None, description="alpaca: REST base URL override (tests: the fake; no trailing slash)"
    )
    alpaca_stream_url: str | None = Field(
        default=None, description="alpaca: trade_updates websocket URL override (full URL, with /stream)"
    )
    alpaca_timeout: float = Field(default=10.0, gt=0, description="alpaca: seconds allowed for one REST call")
    alpaca_retry_budget: float = Field(
        default=30.0, gt=0, description="alpaca: seconds one operation may spend retrying 429/5xx/timeouts"
    )
    alpaca_retry_backoff: float = Field(
        default=0.5, gt=0, description="alpaca: first pause between retries (doubles each time, at most 8 s)"
    )
    alpaca_reconcile_lookback: float = Field(
        default=86400.0,
        gt=0,
        description="alpaca: after a restart, seconds of orders and fills to reconcile (republishing is idempotent)",
    )
    alpaca_reconnect_backoff: float = Field(
        default=1.0, gt=0, description="alpaca: first pause before reconnecting a dropped trade_updates stream"
    )
    alpaca_cross_max_age: float = Field(
        default=5.0,
        gt=0,
        description="alpaca: an internal cross (two strategies' opposite orders netted inside the desk) is priced "
        "only from the Alpaca feed's quote mid, else its last trade (md.* with source alpaca: MD_FEED=alpaca), "
        "and only when that price is at most this many seconds old; otherwise nothing is crossed",
    )

    @property
    def venue(self) -> str:
        return self.broker
