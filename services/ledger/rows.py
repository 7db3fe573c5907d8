"""What the ledger's store hands out (accounts and positions with their keys), and the enum words it stores.

Protobuf enums are stored as their names (TEXT, e.g. ``SIDE_BUY``): :func:`enum_name` on the way
in, :func:`enum_value` on the way out (an unknown name reads as 0, the enum's UNSPECIFIED).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from desk.core.books import Account, Position


@dataclass(frozen=True)
class AccountRow:
    strategy_id: str
    member_id: str
    account: Account


@dataclass(frozen=True)
class PositionRow:
    strategy_id: str
    member_id: str
    position: Position
    updated_ns: int


@functools.cache
def _enum_names(enum_type: Any) -> dict[int, str]:
    """number -> name for a protobuf enum (what ``Name`` answers), built once per enum type."""
    return {number: str(value.name) for number, value in enum_type.DESCRIPTOR.values_by_number.items()}


def enum_name(enum_type: Any, value: int) -> str:
    return _enum_names(enum_type).get(value, "")


def enum_value(enum_type: Any, name: str) -> int:
    try:
        return int(enum_type.Value(name))
    except ValueError:
        return 0
