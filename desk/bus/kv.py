"""KV buckets the desk believes only after checking: labelled writes and one checked follower.

A value in a bucket is believed only when it says what it is and whose it is:

- :func:`put` writes a protobuf value with the ``Desk-Type`` header (and returns the revision);
- :class:`KvFollower` follows every key of a bucket (the current values first, then each change) and
  hands its ``apply`` callback a typed :class:`Change` only when the entry's ``Desk-Type`` is the
  bucket's message type, the value decodes, and the id inside the value equals the key
  (``key_of(value) == key``, e.g. a ``StrategySpec``'s ``strategy_id``). Anything else is ignored,
  counted per reason (``follower.ignored``) and logged: a forged or misplaced value changes nothing.

Values written by an earlier release carry no ``Desk-Type`` header. They are accepted while the
current values are being loaded (they were stored before this process started, so no one can be
forging them now) when they decode and their id matches the key; a value written after that must
be labelled. New writes always are (:func:`put`).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import nats.js.errors
from google.protobuf.message import Message
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from desk.bus import codec, subjects
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.retry import retrying
from desk.v1 import marketdata_pb2, orders_pb2, strategy_pb2

log = get_logger("desk.bus")

M = TypeVar("M", bound=Message)

# Why an entry was ignored (keys of KvFollower.ignored).
WRONG_TYPE = "WRONG_TYPE"
UNLABELLED = "UNLABELLED"
MALFORMED = "MALFORMED"
KEY_MISMATCH = "KEY_MISMATCH"
BAD_KEY = "BAD_KEY"

_MARKER_REASON = "Nats-Marker-Reason"  # nats-server 2.11+: TTL / purge markers
_WRONG_LAST_SEQUENCE = 10071  # JetStream's "wrong last sequence" error code


async def put(
    js: JetStreamContext,
    bucket: str,
    key: str,
    message: Message,
    *,
    deadline: float | None = 0.0,
    stop: asyncio.Event | None = None,
) -> int:
    """Write ``message`` under ``key`` with its ``Desk-Type`` label; returns the new revision.

    ``deadline``: seconds to retry an election's errors for (desk.bus.retry; None: until ``stop``);
    0, the default, tries once. A put is safe to repeat: the last value is the value."""
    data, headers = codec.encode(message)

    async def once() -> int:
        ack = await js.publish(f"$KV.{bucket}.{key}", data, headers=headers)
        return int(ack.seq)

    if deadline == 0.0:
        return await once()
    return await retrying(once, what=f"kv put {bucket}.{key}", deadline=deadline, stop=stop)


@dataclass(frozen=True)
class Change(Generic[M]):
    """One key's new state: ``value`` is None when the key was deleted or purged."""

    key: str
    value: M | None
    revision: int
    created: datetime | None
    initial: bool  # part of the values present when the follower started

    @property
    def deleted(self) -> bool:
        return self.value is None


class KvFollower(Generic[M]):
    """Follow every key of ``bucket`` as checked ``message_type`` values (see the module docstring).

    ``key_of(value)`` says which key a value belongs under (None: any key); ``valid_key(key)``
    rejects keys that cannot be the bucket's. With ``meta_only`` only headers arrive: ``value`` is
    then an empty ``message_type`` (the label is still checked; ids cannot be).
    """

    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        message_type: type[M],
        apply: Callable[[Change[M]], Awaitable[None] | None],
        *,
        key_of: Callable[[M], str] | None = None,
        valid_key: Callable[[str], bool] | None = None,
        meta_only: bool = False,
    ) -> None:
        self.js = js
        self.bucket = bucket
        self.message_type = message_type
        self.type_name = codec.type_name(message_type)
        self.apply = apply
        self.key_of = key_of
        self.valid_key = valid_key
        self.meta_only = meta_only
        self.loaded = asyncio.Event()
        self.initial_entries = 0
        self.ignored: collections.Counter[str] = collections.Counter()
        self._prefix = f"$KV.{bucket}."
        self._sub: Any = None

    async def start(self, runtime: ServiceRuntime, timeout: float = 30.0) -> int:
        """Subscribe, apply the current values, and follow for the life of ``runtime``; returns once
        the current values are applied (how many there were). Creating the consumer is retried
        through an election (desk.bus.retry) for up to ``timeout``; once it follows, nats-py's ordered
        consumer re-creates itself after a leader change (idle heartbeats)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout

        async def subscribe() -> Any:
            await self.stop()  # an attempt that failed half-way
            self._sub = await self.js.subscribe(
                f"{self._prefix}>",
                stream=f"KV_{self.bucket}",
                cb=self._on_msg,
                ordered_consumer=True,
                deliver_policy=api.DeliverPolicy.LAST_PER_SUBJECT,
                headers_only=self.meta_only,
                inactive_threshold=5 * 60.0,
            )
            return await self._sub.consumer_info()

        runtime.stack.push_async_callback(self.stop)
        info = await retrying(subscribe, what=f"kv follow {self.bucket}", deadline=timeout, stop=runtime.stop)
        if info.num_pending == 0 and self._sub.delivered == 0:
            self.loaded.set()
        timeout = max(1.0, end - loop.time())
        await asyncio.wait_for(self.loaded.wait(), timeout)
        log.info("kv.synced", bucket=self.bucket, entries=self.initial_entries, ignored=sum(self.ignored.values()))
        return self.initial_entries

    async def stop(self) -> None:
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception as exc:  # noqa: BLE001 - the connection may be closing already
                log.debug("kv.unsubscribe_failed", bucket=self.bucket, error=repr(exc))
            self._sub = None

    async def _on_msg(self, msg: Msg) -> None:
        initial = not self.loaded.is_set()
        try:
            change = self._change(msg, initial)
            if change is not None:
                result = self.apply(change)
                if inspect.isawaitable(result):
                    await result
                if initial:
                    self.initial_entries += 1
        finally:
            if initial and msg.metadata.num_pending == 0:
                self.loaded.set()

    def _ignore(self, key: str, reason: str, detail: str) -> None:
        self.ignored[reason] += 1
        log.warning(
            "kv.value_ignored", bucket=self.bucket, key=key, reason=reason, detail=detail, ignored=self.ignored[reason]
        )

    def _change(self, msg: Msg, initial: bool) -> Change[M] | None:
        meta = msg.metadata
        key = msg.subject[len(self._prefix) :]
        created = meta.timestamp
        when = created if isinstance(created, datetime) else None
        if when is not None and when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        revision = int(meta.sequence.stream)
        headers = msg.headers or {}
        operation = headers.get(KV_OP)
        marker = headers.get(_MARKER_REASON)
        if operation in (KV_DEL, KV_PURGE) or marker in ("MaxAge", "Purge", "Remove"):
            return Change(key, None, revision, when, initial)
        if marker is not None:
            return None  # a server marker of a kind not known yet: nothing to apply
        if self.valid_key is not None and not self.valid_key(key):
            self._ignore(key, BAD_KEY, "not a key this bucket can hold")
            return None
        label = headers.get(codec.DESK_TYPE)
        if label is None and not initial:
            self._ignore(key, UNLABELLED, f"no {codec.DESK_TYPE} header")
            return None
        if label is not None and label != self.type_name:
            self._ignore(key, WRONG_TYPE, f"{codec.DESK_TYPE} {label[:80]!r}, expected {self.type_name}")
            return None
        if self.meta_only:
            return Change(key, self.message_type(), revision, when, initial)
        try:
            value = codec.decode(msg.data, self.message_type)
        except DeskError as err:
            self._ignore(key, MALFORMED, err.message)
            return None
        if self.key_of is not None and self.key_of(value) != key:
            self._ignore(key, KEY_MISMATCH, f"the value is for {self.key_of(value)[:80]!r}")
            return None
        return Change(key, value, revision, when, initial)


async def create(js: JetStreamContext, bucket: str, key: str, message: Message) -> int:
    """Write ``message`` under ``key`` only if the key holds nothing yet (labelled, as :func:`put`);
    raises ``KeyWrongLastSequenceError`` when it does."""
    data, headers = codec.encode(message)
    headers[api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = "0"
    try:
        ack = await js.publish(f"$KV.{bucket}.{key}", data, headers=headers)
    except nats.js.errors.APIError as err:
        if err.err_code == _WRONG_LAST_SEQUENCE:
            raise nats.js.errors.KeyWrongLastSequenceError(description=err.description) from None
        raise
    return int(ack.seq)


# What each bucket holds and whose each value is ------------------------------------------------------


def _order_id_key(key: str) -> bool:
    """``<strategy_id>.<client_order_id>``, each as subjects' patterns say."""
    strategy_id, _, client_order_id = key.partition(".")
    return bool(subjects.STRATEGY_ID_RE.match(strategy_id) and subjects.CLIENT_ORDER_ID_RE.match(client_order_id))


#: bucket -> (value type, the key a value belongs under (None: not checkable), key check)
BUCKET_VALUES: dict[str, tuple[type[Message], Callable[[Any], str] | None, Callable[[str], bool]]] = {
    subjects.KV_PRICES: (marketdata_pb2.Trade, lambda t: t.symbol, lambda k: bool(subjects.SYMBOL_RE.match(k))),
    subjects.KV_STRATEGIES: (
        strategy_pb2.StrategySpec,
        lambda s: s.strategy_id,
        lambda k: bool(subjects.STRATEGY_ID_RE.match(k)),
    ),
    subjects.KV_RISK: (
        orders_pb2.HaltRequest,
        lambda h: subjects.halt_key(h.strategy_id),
        lambda k: k == subjects.halt_key("") or bool(subjects.STRATEGY_ID_RE.match(k.removeprefix("halt."))),
    ),
    subjects.KV_ORDER_IDS: (
        orders_pb2.OrderAck,
        lambda a: subjects.order_id_key(a.strategy_id, a.client_order_id),
        _order_id_key,
    ),
}


def follower(
    js: JetStreamContext,
    bucket: str,
    apply: Callable[[Change[Any]], Awaitable[None] | None],
    *,
    meta_only: bool = False,
) -> KvFollower[Any]:
    """A :class:`KvFollower` of one of the desk's buckets, with its type and checks."""
    message_type, key_of, valid_key = BUCKET_VALUES[bucket]
    return KvFollower(js, bucket, message_type, apply, key_of=key_of, valid_key=valid_key, meta_only=meta_only)
