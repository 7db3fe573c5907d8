"""Output for the CLI: rich tables for people, JSON (``--json``) for programs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

from desk.bus import codec

# Not a terminal (piped, captured): wide enough that tables never truncate ids.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def print_json(message: Message | dict[str, Any] | list[Any]) -> None:
    data = codec.to_dict(message) if isinstance(message, Message) else message
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def ts(ns: int) -> str:
    if not ns:
        return "-"
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def enum_name(value: str) -> str:
    """ "ORDER_STATUS_PARTIALLY_FILLED" -> "partially_filled"."""
    for prefix in (
        "ORDER_STATUS_",
        "EXEC_TYPE_",
        "SIDE_",
        "ORDER_TYPE_",
        "TIME_IN_FORCE_",
        "STRATEGY_STATE_",
        "REJECT_REASON_",
    ):
        if value.startswith(prefix):
            return value[len(prefix) :].lower()
    return value


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[str] = ()) -> None:
    right = set(numeric)
    t = Table(title=title, title_justify="left", header_style="bold")
    for column in columns:
        t.add_column(column, justify="right" if column in right else "left", no_wrap=column not in {"error", "message"})
    count = 0
    for row in rows:
        t.add_row(*[str(cell) if cell not in (None, "") else "-" for cell in row])
        count += 1
    if count == 0:
        console.print(f"[dim]{title}: nothing yet[/dim]")
        return
    console.print(t)


def money(value: str) -> str:
    """Two decimals for display only (the wire keeps full precision)."""
    from decimal import Decimal, InvalidOperation

    if not value:
        return "-"
    try:
        return f"{Decimal(value):,.2f}"
    except InvalidOperation:
        return value


def signed_money(value: str) -> str:
    text = money(value)
    if text.startswith("-"):
        return f"[red]{text}[/red]"
    if text not in ("-", "0.00"):
        return f"[green]+{text}[/green]"
    return text
