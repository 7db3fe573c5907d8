"""Protobuf on the wire, with the ``Desk-Type`` header naming the message type.

Every message the desk publishes carries ``Desk-Type: desk.v1.<MessageName>`` and
``Content-Type: application/protobuf``. Because the NATS CLI's ``--translate`` sees only the body
and the subject, each subject pattern maps to exactly one message type (:func:`type_for_subject`).
"""

from __future__ import annotations

import fnmatch
import functools
from typing import Any, TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from desk.bus.errors import DeskError
from desk.v1 import common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2

M = TypeVar("M", bound=Message)

DESK_TYPE = "Desk-Type"
CONTENT_TYPE = "Content-Type"
PROTOBUF = "application/protobuf"
# Our own bound on one message, well under the server's 1 MB default: anything near it is a bug
# or an attack, and is refused with PAYLOAD_TOO_LARGE before it is parsed.
MAX_MESSAGE_BYTES = 64 * 1024

_MODULES = (common_pb2, executions_pb2, ledger_pb2, marketdata_pb2, orders_pb2, strategy_pb2)

#: Every message type of the wire, by full name ("desk.v1.OrderRequest").
MESSAGE_TYPES: dict[str, type[Message]] = {
    desc.full_name: getattr(module, name)
    for module in _MODULES
    for name, desc in module.DESCRIPTOR.message_types_by_name.items()
}

# Subject pattern (fnmatch over the whole subject) -> message type. First match wins.
_SUBJECT_TYPES: list[tuple[str, type[Message]]] = [
    ("md.bar.*", marketdata_pb2.Bar),
    ("md.trade.*", marketdata_pb2.Trade),
    ("md.quote.*", marketdata_pb2.Quote),
    ("desk.order.submit.*", orders_pb2.OrderRequest),
    ("desk.order.cancel.*", orders_pb2.CancelRequest),
    ("desk.broker.*.orders", orders_pb2.RoutedOrder),
    ("desk.broker.*.book", ledger_pb2.LedgerQuery),
    ("desk.broker.*.positions", ledger_pb2.LedgerQuery),
    ("desk.exec.*", executions_pb2.ExecutionReport),
    ("desk.hb.*", strategy_pb2.Heartbeat),
    ("desk.risk.halt", orders_pb2.HaltRequest),
    ("desk.risk.resume", orders_pb2.HaltRequest),
    ("desk.risk.status", orders_pb2.HaltRequest),
    ("desk.ledger.*", ledger_pb2.LedgerQuery),
    ("desk.ctl.strategy.logs", strategy_pb2.LogsRequest),
    ("desk.ctl.strategy.*", strategy_pb2.StrategyControl),
    ("$KV.DESK_PRICES.*", marketdata_pb2.Trade),
    ("$KV.DESK_STRATEGIES.*", strategy_pb2.StrategySpec),
    ("$KV.DESK_RISK.*", orders_pb2.HaltRequest),
    ("$KV.DESK_ORDER_IDS.*", orders_pb2.OrderAck),
]


def type_name(message_type: type[Message] | Message) -> str:
    return message_type.DESCRIPTOR.full_name


def headers_for(message: Message) -> dict[str, str]:
    return {DESK_TYPE: type_name(message), CONTENT_TYPE: PROTOBUF}


def encode(message: Message) -> tuple[bytes, dict[str, str]]:
    """Serialize ``message``; returns the body and the headers to send with it."""
    return message.SerializeToString(), headers_for(message)


def decode(data: bytes, message_type: type[M], headers: dict[str, str] | None = None) -> M:
    """Parse ``data`` as ``message_type`` or raise a :class:`DeskError` saying what is wrong.

    A ``Desk-Type`` header naming another type is refused (WRONG_TYPE) even when the bytes would
    happen to parse: protobuf is lenient, so the header is the only way to catch a message sent to
    the wrong subject.
    """
    if len(data) > MAX_MESSAGE_BYTES:
        raise DeskError(
            "PAYLOAD_TOO_LARGE",
            f"message of {len(data)} bytes exceeds the limit of {MAX_MESSAGE_BYTES} bytes",
            status=413,
        )
    expected = type_name(message_type)
    sent = (headers or {}).get(DESK_TYPE)
    if sent and sent != expected:
        raise DeskError("WRONG_TYPE", f"expected {expected}, got a message of type {sent}")
    message = message_type()
    try:
        message.ParseFromString(data)
    except DecodeError as exc:
        raise DeskError("MALFORMED", f"body is not a valid {expected}: {exc}") from exc
    return message


def type_for_subject(subject: str) -> type[Message] | None:
    for pattern, message_type in _SUBJECT_TYPES:
        if fnmatch.fnmatchcase(subject, pattern) and subject.count(".") == pattern.count("."):
            return message_type
    return None


def enum_word(enum_type: Any, value: int) -> str:
    """A wire enum's value as a word: ``SIDE_BUY`` -> ``"buy"``, ``ORDER_STATUS_PARTIALLY_FILLED`` ->
    ``"partially_filled"`` (its name less the enum's prefix, in lower case); a number the enum does
    not know, as that number (a newer peer's value is shown, not a crash)."""
    return _enum_words(enum_type).get(value, str(value))


@functools.cache
def _enum_words(enum_type: Any) -> dict[int, str]:
    """number -> word for a protobuf enum, once per enum; the prefix is its zero value's name less
    ``UNSPECIFIED`` (every wire enum has a ``*_UNSPECIFIED = 0``)."""
    values = enum_type.DESCRIPTOR.values_by_number
    prefix = str(values[0].name).removesuffix("UNSPECIFIED") if 0 in values else ""
    return {number: str(v.name).removeprefix(prefix).lower() for number, v in values.items()}


def to_dict(message: Message) -> dict[str, object]:
    """JSON-ready dict with the proto field names, defaults included, enums by name."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def to_json(message: Message, indent: int | None = None) -> str:
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True, indent=indent
    )
