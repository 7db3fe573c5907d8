"""Ledger settings: the shared bus settings plus LEDGER_* (docs/architecture.md §8)."""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from desk.bus.settings import BusSettings


class Settings(BusSettings):
    """Read from the environment once, validated, frozen."""

    ledger_db_path: str = Field(
        default="var/ledger.db", description="SQLite file of the books (parent dirs are created)"
    )
    ledger_instance: str = Field(
        default="",
        max_length=32,
        pattern=r"^[A-Za-z0-9_-]*$",
        description="this ledger replica's name: its durable consumer on EXECUTIONS is ledger-<name> (empty: "
        "ledger, the single ledger's); each replica needs its own LEDGER_DB_PATH (a second ledger on one file is "
        "refused)",
    )
    ledger_batch_size: int = Field(
        default=256, ge=1, le=10000, description="executions fetched and booked per SQLite transaction"
    )
    ledger_snapshot_interval: float = Field(
        default=10.0, gt=0, description="seconds between equity snapshots (one row per strategy)"
    )
    ledger_fetch_timeout: float = Field(
        default=1.0, gt=0, le=30, description="seconds one fetch from the EXECUTIONS consumer waits for messages"
    )
    ledger_linger: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="seconds executions may gather after a fetch that came back short of a batch: fewer, fuller "
        "transactions under light load, for that much more lag (0: book each fetch at once)",
    )
    ledger_default_initial_cash: Decimal = Field(
        default=Decimal(100000), gt=0, description="initial cash of a strategy whose spec gives none (or no spec yet)"
    )
