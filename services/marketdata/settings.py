"""Settings of the marketdata service (environment variables MD_*, plus the bus's)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from desk.bus import subjects
from desk.bus.settings import BusSettings

SAMPLE_BARS = Path(__file__).parent / "data" / "sample_bars.csv"


class Settings(BusSettings):
    md_feed: Literal["synthetic", "replay", "alpaca"] = Field(
        default="synthetic",
        description="feed to run: synthetic (seeded random walk), replay (CSV bars) or alpaca (StockDataStream)",
    )
    md_symbols: str = Field(
        default="AAPL,MSFT,SPY,TSLA,NVDA",
        description="comma-separated symbols of the synthetic feed; alpaca: used when no strategy names any",
    )
    alpaca_api_key: SecretStr | None = Field(default=None, description="alpaca feed: API key id (MD_FEED=alpaca)")
    alpaca_secret_key: SecretStr | None = Field(default=None, description="alpaca feed: API secret key")
    md_alpaca_url: str | None = Field(
        default=None, description="alpaca feed: market-data websocket URL override (full URL; tests: the fake)"
    )
    md_alpaca_feed: Literal["iex", "sip"] = Field(default="iex", description="alpaca feed: iex (free) or sip")
    md_interval: float = Field(default=1.0, gt=0, le=3600, description="seconds between synthetic bars")
    md_seed: int = Field(default=7, description="seed of the synthetic feed (same seed, same prices)")
    md_replay_file: Path = Field(
        default=SAMPLE_BARS, description="CSV of bars for the replay feed (timestamp,symbol,open,high,low,close,volume)"
    )
    md_replay_speed: float = Field(
        default=60.0, ge=0, description="replay speed-up: original spacing / speed (0 = as fast as possible)"
    )
    md_replay_loop: bool = Field(default=False, description="start the replay file again when it ends")
    md_replay_pace: float = Field(
        default=0.0,
        ge=0,
        le=3600,
        description="replay: seconds between consecutive bars whatever the file's spacing (0 = use MD_REPLAY_SPEED)",
    )
    md_replay_wait_for: str = Field(
        default="",
        description="replay: comma-separated strategy ids; the replay starts once each has sent a heartbeat "
        "(it is subscribed and started), so they see the file from its first bar",
    )

    @field_validator("md_symbols")
    @classmethod
    def _symbols_are_valid(cls, value: str) -> str:
        symbols = [s.strip() for s in value.split(",") if s.strip()]
        if not symbols:
            raise ValueError("at least one symbol is needed")
        bad = [s for s in symbols if not subjects.SYMBOL_RE.match(s)]
        if bad:
            raise ValueError(
                f"invalid symbols {bad}: expected upper-case tickers like AAPL or BRKB (no dots: a symbol is one subject token)"
            )
        return ",".join(dict.fromkeys(symbols))

    @field_validator("md_replay_wait_for")
    @classmethod
    def _strategy_ids_are_valid(cls, value: str) -> str:
        ids = [s.strip() for s in value.split(",") if s.strip()]
        bad = [s for s in ids if not subjects.STRATEGY_ID_RE.match(s)]
        if bad:
            raise ValueError(f"invalid strategy ids {bad}: expected {subjects.STRATEGY_ID_RE.pattern}")
        return ",".join(dict.fromkeys(ids))

    @property
    def replay_wait_for(self) -> list[str]:
        return [s for s in self.md_replay_wait_for.split(",") if s]

    @property
    def symbols(self) -> list[str]:
        return self.md_symbols.split(",")
