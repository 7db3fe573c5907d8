"""Decimal strings on the wire: parsing with specific errors, formatting without exponent noise.

Depends on nothing but the standard library, so the SDK can use it too.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from desk.bus.errors import DeskError

#: Larger than any quantity or price a paper account can mean; anything above is a typo or an attack.
ABSURD = Decimal("1e12")
ZERO = Decimal(0)
#: Distinct values :func:`fmt` and :func:`dec` keep (Decimals and strings are immutable: one object serves all).
DEC_TABLE_SIZE = 4096


def parse_decimal(
    field: str, value: str, *, positive: bool = True, required: bool = True, maximum: Decimal = ABSURD
) -> Decimal | None:
    """Parse ``value`` (a decimal string) for ``field``; ``None`` when empty and not required.

    Refuses (DeskError INVALID_FIELD) what is not a number, NaN, infinities, zero or negative
    values where ``positive``, and anything above ``maximum``.
    """
    if value == "":
        if required:
            raise DeskError("INVALID_FIELD", f"{field} is required")
        return None
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError):
        raise DeskError("INVALID_FIELD", f"{field} {value!r} is not a decimal number") from None
    if not number.is_finite():
        raise DeskError("INVALID_FIELD", f"{field} must be a finite number, got {value!r}")
    if positive and number <= 0:
        raise DeskError("INVALID_FIELD", f"{field} must be positive, got {value}")
    if number.copy_abs() > maximum:  # quiet: abs() rounds in the context and overflows near Emax
        raise DeskError("INVALID_FIELD", f"{field} {value} is larger than the limit {fmt(maximum)}")
    return number


_fmt_table: dict[Decimal | int, str] = {}


def fmt(value: Decimal | int | None, places: int | None = None) -> str:
    """Format for the wire: plain notation, no exponent, trailing zeros trimmed ("" for None).

    Equal numbers format alike (1.50 and 1.5 are both "1.5"), so recent results are shared from a
    bounded table keyed by value."""
    if value is None:
        return ""
    if places is None:
        try:
            text = _fmt_table.get(value)
        except TypeError:  # a signalling NaN cannot be hashed
            return _format(Decimal(value))
        if text is None:
            if len(_fmt_table) >= DEC_TABLE_SIZE:
                _fmt_table.clear()
            text = _fmt_table[value] = _format(Decimal(value))
        return text
    return _format(Decimal(value).quantize(Decimal(1).scaleb(-places)))


def _format(number: Decimal) -> str:
    if number == 0:
        return "0"
    text = format(number, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


_dec_table: dict[str, Decimal] = {}


def dec(value: str, default: Decimal = ZERO) -> Decimal:
    """Wire string to Decimal for values the desk itself wrote ("" -> ``default``).

    Quantities and prices repeat; the Decimal of a recent text is shared from a bounded table (faster
    than parsing, and one object instead of thousands when a backtest keeps every fill)."""
    if not value:
        return default
    number = _dec_table.get(value)
    if number is None:
        if len(_dec_table) >= DEC_TABLE_SIZE:
            _dec_table.clear()
        number = _dec_table[value] = Decimal(value)
    return number
