"""Active/standby behind a lease: one key per lease in the KV bucket ``DESK_LEASES``.

* **Acquire** = ``kv.create(key)``: it succeeds only while the key is absent (never written, deleted by
  a holder that stopped cleanly, or expired). A standby asks again every :attr:`Lease.poll` seconds
  (TTL/5, at most 0.5 s); it registers and consumes nothing meanwhile (desk.bus.lifecycle).
  :meth:`Lease.try_acquire` is one such attempt, for a holder of many leases (the router's partitions).
* **TTL** = the bucket's ``max_age``, read from the server (the bucket's config is the truth: a service
  whose ``LEASE_TTL`` differs is told so in its log). A holder that dies (kill -9) stops renewing, and the
  server drops its key ``max_age`` after its last write, on any nats-server version (no per-message TTL).
* **Renew** = ``kv.update(key, value, last=revision)`` every TTL/3. An attempt an election fails (a
  timeout, 503, "no responders": desk.bus.retry.transient) is retried; an update whose earlier attempt
  landed (its PubAck lost) is refused "wrong last sequence" and then read back: the same bytes (the value
  holds a random ``term`` per acquisition) are our own write.
* **Step down at once**: the key written by another holder (CAS lost), gone, or no renewal confirmed for
  two renew intervals (2*TTL/3 after the first attempt of the last successful renewal was *sent*). The
  key cannot expire on the server before TTL after that send, so a standby can take over no sooner than
  one renew interval (TTL/3) after the old holder has stepped down: that interval is what the old holder's
  shutdown may take before two actives overlap. :meth:`Lease.keep` raises :class:`LeaseLost`; the
  lifecycle ends the service with exit code 1 and its supervisor starts it again, as a standby.

The value names the holder (service, instance, host, pid, when): it is for people (logs, ``nats kv get
DESK_LEASES``) and for recognising our own write; no decision trusts what another holder wrote in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import re
import secrets
import socket
import time
from dataclasses import asdict, dataclass, field

import nats.js.errors
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from desk.bus import streams, subjects
from desk.bus.logging import get_logger
from desk.bus.retry import Backoff, retrying, transient

log = get_logger("desk.bus")

#: A lease key: what NATS KV accepts, without wildcards or a leading dot.
KEY_RE = re.compile(r"^[A-Za-z0-9_=-][A-Za-z0-9_=.-]{0,99}$")
#: The most a holder's value may be (it is read back and shown, never trusted): 1 KiB.
MAX_VALUE = 1024


class LeaseLost(Exception):
    """The lease was lost (taken by another holder, gone, or not renewed in time): not active any more."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease: written as JSON into the key's value."""

    service: str
    instance: str
    host: str
    pid: int
    since_ns: int
    term: str = field(default_factory=lambda: secrets.token_hex(8))

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> Holder | None:
        """The holder in ``data``, or None when it is not one (another writer's bytes: untrusted)."""
        if not data or len(data) > MAX_VALUE:
            return None
        try:
            raw = json.loads(data)
            return cls(
                service=str(raw["service"]),
                instance=str(raw["instance"]),
                host=str(raw["host"]),
                pid=int(raw["pid"]),
                since_ns=int(raw["since_ns"]),
                term=str(raw["term"]),
            )
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        return f"{self.service} instance {self.instance} (pid {self.pid} on {self.host})"


def default_instance() -> str:
    """``<host>-<pid>``: unique per process on one host, readable in logs."""
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}"


async def open_bucket(js: JetStreamContext, ttl: float) -> tuple[KeyValue, float]:
    """``DESK_LEASES``, created with ``max_age`` = ``ttl`` when missing; returns it and its real TTL
    (the existing bucket's max_age). Retried through an election for up to 60 s."""
    config = dataclasses.replace(streams.BUCKETS[subjects.KV_LEASES], ttl=ttl)
    bucket = await streams.ensure_bucket(js, subjects.KV_LEASES, config=config, deadline=60.0)
    info = await retrying(lambda: js.stream_info(f"KV_{subjects.KV_LEASES}"), what="lease bucket info", deadline=60.0)
    have = float(info.config.max_age or 0.0)
    if have <= 0:
        raise RuntimeError(
            f"bucket {subjects.KV_LEASES} has no max_age: a dead holder's lease would never expire "
            "(run `desk provision`, or re-create the bucket)"
        )
    if abs(have - ttl) > 1e-3:
        log.warning("lease.ttl_differs", bucket_ttl=have, lease_ttl=ttl, using=have)
    return bucket, have


class Lease:
    """One lease ``key`` for one holder; see the module docstring for the protocol and its bound."""

    def __init__(self, kv: KeyValue, key: str, ttl: float, holder: Holder) -> None:
        if not KEY_RE.match(key):
            raise ValueError(f"lease key {key!r} is not a valid KV key")
        if ttl <= 0:
            raise ValueError("a lease needs a positive TTL")
        self.kv, self.key, self.ttl, self.holder = kv, key, ttl, holder
        self.value = holder.encode()
        self.renew_interval = ttl / 3
        self.poll = min(ttl / 5, 0.5)  # a standby's create, asked again: cheap (refused before any write)
        self.request_timeout = min(2.0, self.renew_interval)  # one create or read of the key
        self.revision = 0
        self.acquired_at = 0.0  # monotonic
        self.valid_until = 0.0  # monotonic: the key cannot expire before this
        self.renewals = 0

    @property
    def step_down_at(self) -> float:
        """Monotonic time by which a renewal must be confirmed, else the holder steps down."""
        return self.valid_until - self.renew_interval

    # -- acquire --------------------------------------------------------------------------------

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait until this holder has the lease (True), or ``stop`` is set first (False)."""
        announced = ""
        while not stop.is_set():
            sent = time.monotonic()
            try:
                self.revision = await self._create_once()
                self.acquired_at = sent
                self.valid_until = sent + self.ttl
                log.info("lease.acquired", key=self.key, holder=self.holder.describe(), revision=self.revision)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                current = await self._holder_now()
                if current != announced:
                    log.info("lease.standby", key=self.key, held_by=current or "unknown", poll_s=round(self.poll, 3))
                    announced = current
            except Exception as exc:
                if not transient(exc):
                    raise
                log.warning("lease.retry", key=self.key, op="create", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)  # the next ask; a standby's pace
        return False

    async def try_acquire(self) -> bool:
        """One attempt to take the lease (no waiting): True when this holder has it now, False when
        another holds it. A transient error (an election) is raised for the caller to retry."""
        sent = time.monotonic()
        try:
            self.revision = await self._create_once()
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        self.acquired_at = sent
        self.valid_until = sent + self.ttl
        self.renewals = 0
        log.info("lease.acquired", key=self.key, holder=self.holder.describe(), revision=self.revision)
        return True

    async def _create_once(self) -> int:
        try:
            return await asyncio.wait_for(self.kv.create(self.key, self.value), self.request_timeout)
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._entry()  # our own create that landed, its PubAck lost?
            if entry is not None and entry.value == self.value and entry.revision is not None:
                return int(entry.revision)
            raise

    async def _entry(self) -> KeyValue.Entry | None:
        try:
            return await asyncio.wait_for(self.kv.get(self.key), self.request_timeout)
        except nats.js.errors.KeyNotFoundError:
            return None

    async def _holder_now(self) -> str:
        with contextlib.suppress(Exception):
            entry = await self._entry()
            holder = Holder.decode(entry.value if entry else None)
            return holder.describe() if holder else ""
        return ""

    # -- keep -----------------------------------------------------------------------------------

    async def keep(self, stop: asyncio.Event) -> None:
        """Renew every TTL/3 until ``stop``; raises :class:`LeaseLost` the moment the lease is not ours."""
        while True:
            wait = max(0.0, self.acquired_at + (self.renewals + 1) * self.renew_interval - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)  # the renew pace
            if stop.is_set():
                return
            try:
                await self.renew(stop)
            except LeaseLost:
                if stop.is_set():
                    return  # a renewal cut short by the service's own stop: not a lost lease
                raise

    async def renew(self, stop: asyncio.Event | None = None) -> None:
        """One renewal, retried through an election until :attr:`step_down_at`; :class:`LeaseLost` else."""
        started = time.monotonic()
        remaining = self.step_down_at - started
        if remaining <= 0:
            raise LeaseLost(f"lease {self.key}: not renewed within {self.ttl - self.renew_interval:.1f} s")

        async def once() -> int:
            budget = self.step_down_at - time.monotonic()
            if budget <= 0:
                raise TimeoutError("the step-down time has come")
            return await asyncio.wait_for(self._update_once(), min(self.renew_interval, budget))

        try:
            revision = await retrying(
                once,
                what=f"renew lease {self.key}",
                deadline=remaining,
                backoff=Backoff(initial=min(0.1, self.renew_interval / 10), maximum=self.renew_interval / 3),
                stop=stop,
            )
        except LeaseLost:
            raise
        except Exception as exc:
            raise LeaseLost(f"lease {self.key}: renewal failed ({exc!r})") from exc
        self.revision = revision
        self.valid_until = started + self.ttl  # the key was rewritten no earlier than ``started``
        self.renewals += 1

    async def _update_once(self) -> int:
        try:
            return await self.kv.update(self.key, self.value, last=self.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._entry()
            if entry is not None and entry.value == self.value and (entry.revision or 0) > self.revision:
                return int(entry.revision or 0)  # our earlier attempt landed, its PubAck was lost
            holder = Holder.decode(entry.value if entry else None)
            raise LeaseLost(
                f"lease {self.key} is held by {holder.describe() if holder else 'someone else'}"
                if entry is not None
                else f"lease {self.key} expired"
            ) from None

    # -- release --------------------------------------------------------------------------------

    async def release(self, timeout: float = 2.0) -> bool:
        """Delete the key if it is still ours (a clean stop hands over at once); True when deleted."""
        if not self.revision:
            return False
        try:
            await asyncio.wait_for(self.kv.delete(self.key, last=self.revision), timeout)
        except Exception as exc:  # noqa: BLE001 - not ours any more, or no answer: it expires on its own
            log.info("lease.release_skipped", key=self.key, error=repr(exc))
            return False
        log.info("lease.released", key=self.key, holder=self.holder.describe())
        self.revision = 0
        return True


async def holder_of(kv: KeyValue, key: str) -> tuple[Holder | None, int]:
    """The current holder of ``key`` (None when free or not a holder's value) and the key's revision."""
    try:
        entry = await kv.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None, 0
    return Holder.decode(entry.value), int(entry.revision or 0)
