"""Typed request/reply for callers (the CLI, the SDK, tests). Depends on nats-py and protobuf only."""

from __future__ import annotations

import contextlib
from typing import TypeVar

import nats.errors
from google.protobuf.message import Message
from nats.aio.client import Client
from nats.aio.msg import Msg

from desk.bus import codec, confine
from desk.bus.errors import DeskError
from desk.v1 import common_pb2

R = TypeVar("R", bound=Message)

ERROR_CODE_HEADER = "Nats-Service-Error-Code"
ERROR_HEADER = "Nats-Service-Error"


async def request(nc: Client, subject: str, message: Message, reply_type: type[R], timeout: float = 5.0) -> R:
    """Send ``message`` to ``subject`` and decode the reply as ``reply_type``.

    A refusal whose body is a ``reply_type`` (an ``OrderAck`` that says rejected) is returned as
    is; any other refusal is raised as :class:`DeskError` with the service's code and message.
    Raises ``nats.errors.NoRespondersError`` when nobody serves the subject, and
    ``nats.errors.TimeoutError`` when nobody answers in time.

    A strategy-scoped subject (``desk.order.submit.<id>``...) is answered only under that strategy's
    inbox (desk.bus.confine): a connection with another inbox prefix (the CLI's, a test's) gets a
    one-off reply subject there.
    """
    data, headers = codec.encode(message)
    msg = await request_raw(nc, subject, data, headers, timeout)
    reply_headers = msg.headers or {}
    sent_type = reply_headers.get(codec.DESK_TYPE)
    if ERROR_CODE_HEADER in reply_headers:
        if sent_type == codec.type_name(reply_type):
            return codec.decode(msg.data, reply_type, reply_headers)
        status = int(reply_headers.get(ERROR_CODE_HEADER, "500") or 500)
        if sent_type == codec.type_name(common_pb2.ErrorReply):
            err = codec.decode(msg.data, common_pb2.ErrorReply, reply_headers)
            raise DeskError(err.code, err.message, status=status)
        raise DeskError("SERVICE_ERROR", reply_headers.get(ERROR_HEADER, "unknown error"), status=status)
    return codec.decode(msg.data, reply_type, reply_headers)


async def request_raw(
    nc: Client, subject: str, data: bytes, headers: dict[str, str] | None = None, timeout: float = 5.0
) -> Msg:
    """``nc.request`` for raw bytes, answered under the asker's inbox as :func:`request` is."""
    prefix = confine.reply_prefix(subject)
    if prefix is None or bytes(nc._inbox_prefix) == prefix.encode():  # nats-py keeps the prefix private
        return await nc.request(subject, data, timeout=timeout, headers=headers)
    inbox = f"{prefix}.{nc._nuid.next().decode()}"  # unique, as nats-py's own inboxes
    sub = await nc.subscribe(inbox, max_msgs=1)
    try:
        await nc.publish(subject, data, reply=inbox, headers=headers)
        msg = await sub.next_msg(timeout=timeout)
    finally:
        with contextlib.suppress(Exception):  # already gone after its one message
            await sub.unsubscribe()
    if msg.headers and msg.headers.get("Status") == "503":
        raise nats.errors.NoRespondersError
    return msg
