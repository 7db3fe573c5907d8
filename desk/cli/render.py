"""Output for the CLI: rich tables for people, JSON (``--json``) for programs.

``--json`` follows one rule for every command (the README's CLI section states it): field names are
the protobuf ones; enums are lower-case words (``buy``, ``running``, ``partially_filled``; ``""`` when
unset); counts, ids' numbers and ``*_ns`` timestamps are JSON numbers (protobuf's own JSON would
write 64-bit integers as strings); money, prices, quantities and percentages are decimal strings,
exactly as the desk holds them (``"0.190481896"``), never floats. Tables round for people: money to
cents, percentages to two decimals.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from rich.console import Console
from rich.table import Table

# Not a terminal (piped, captured): wide enough that tables never truncate ids.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _json_value(field: Any, value: Any) -> Any:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return json_ready(value)
    if field.type == FieldDescriptor.TYPE_ENUM and field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return enum_word(known.name, field.enum_type.name) if known is not None else value
    if field.type == FieldDescriptor.TYPE_BYTES:
        import base64

        return base64.b64encode(value).decode()
    return value  # str, bool, int (64-bit ones too: a JSON number), float


def json_ready(message: Message) -> dict[str, Any]:
    """``message`` as ``--json`` prints it (see the module docstring): every field, defaults included."""
    out: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            out[field.name] = {str(k): _json_value(value_field, v) for k, v in value.items()}
        elif field.is_repeated:
            out[field.name] = [_json_value(field, v) for v in value]
        elif field.type == FieldDescriptor.TYPE_MESSAGE and not message.HasField(field.name):
            out[field.name] = None
        else:
            out[field.name] = _json_value(field, value)
    return out


def print_json(message: Message | dict[str, Any] | list[Any]) -> None:
    data = json_ready(message) if isinstance(message, Message) else message
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


def enum_word(value: str, enum_type: str = "") -> str:
    """An enum value's name as ``--json`` writes it: ``SIDE_BUY`` -> ``buy``, unset -> ``""``;
    ``enum_type`` (``OrderStatus``) gives the prefix (``ORDER_STATUS_``) of enums not listed above."""
    if value.endswith("_UNSPECIFIED"):
        return ""
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum_type).upper() + "_" if enum_type else ""
    if prefix and value.startswith(prefix):
        return value[len(prefix) :].lower()
    return enum_name(value).lower()


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


def percent(value: str) -> str:
    """A percentage (the ledger's ``return_pct``) to two decimals, for display: ``0.02%``."""
    from decimal import Decimal, InvalidOperation

    if not value:
        return "-"
    try:
        number = Decimal(value)
    except InvalidOperation:
        return f"{value}%"
    if not number.is_finite():
        return f"{value}%"
    text = f"{number:,.2f}"
    return f"{'0.00' if text == '-0.00' else text}%"


def signed_money(value: str) -> str:
    text = money(value)
    if text.startswith("-"):
        return f"[red]{text}[/red]"
    if text not in ("-", "0.00"):
        return f"[green]+{text}[/green]"
    return text
