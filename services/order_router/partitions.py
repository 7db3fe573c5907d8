"""The router's partitions: which strategies this replica answers for, held through leases.

Strategies are split into ``ROUTER_PARTITIONS`` partitions (:func:`desk.core.partition.partition_of`).
Each partition is one lease in ``DESK_LEASES`` (:mod:`desk.bus.lease`), key ``router-p<i>``; a replica
answers a strategy's submits and cancels only while it holds the lease of the strategy's partition, so
one replica at a time enforces that strategy's limits, and they are exact across replicas.

* **Presence.** Every replica also holds a lease of its own, ``router-live-<term>``, renewed like the
  others: the number of those keys is the number of live replicas (a dead replica's expires with the TTL).
* **Share.** Every :attr:`Partitions.poll` seconds a replica lists the bucket's keys once (one ordered
  consumer) and aims at ``ceil(P / live replicas)`` partitions: under that it takes free ones (keys
  absent: never held, released, or expired), over it releases its highest ones. One replica alone
  takes them all at its start, before it answers anything.
* **Renew** and **step down** are the lease's (TTL/3; a renewal not confirmed within 2*TTL/3, or the
  key another's, drops the partition: :meth:`Partitions.owns` is then False). A partition also stops
  being answered at its lease's step-down time even while a renewal is still being retried.
* **Hand-over.** A replica that releases a partition first stops answering it, then waits (bounded)
  for its requests in flight of that partition (``drain``), then deletes the key. A replica that takes
  one rebuilds what it must know before answering (``on_take``: the rate-limit windows) and only then
  answers. Requests that arrive while a partition has no holder get no answer: the client's request
  times out and it sends it again with the same client order id.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import nats.js.errors
from nats.js.kv import KeyValue

from desk.bus import lease as leases
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.retry import retrying, transient
from desk.core.partition import partition_of

log = get_logger("order_router")

PARTITION_PREFIX = "router-p"
PRESENCE_PREFIX = "router-live-"
#: Listing the bucket's keys, per tick.
LIST_TIMEOUT = 2.0
#: A replica below the least share (P // live) asks this often, not every poll: a partition being
#: given away to it is answered by nobody until it takes it.
EAGER_POLL = 0.1
#: The most a hand-over waits for the requests in flight of the partition it gives away.
DRAIN_TIMEOUT = 3.0


def partition_key(partition: int) -> str:
    return f"{PARTITION_PREFIX}{partition}"


@dataclass
class _Held:
    lease: leases.Lease
    task: asyncio.Task[None]


class Partitions:
    """The partitions one router replica holds. Construct, then ``await start(runtime, ttl)``."""

    def __init__(
        self,
        count: int,
        instance: str,
        on_take: Callable[[int], None],
        drain: Callable[[int], Awaitable[None]],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.count = count
        self.on_take, self.drain, self.on_change = on_take, drain, on_change
        self.holder = leases.Holder(
            service="order_router",
            instance=instance or leases.default_instance(),
            host=socket.gethostname(),
            pid=os.getpid(),
            since_ns=time.time_ns(),
        )
        self.held: dict[int, _Held] = {}
        #: partitions this replica lost (a renewal not confirmed: the server away): its key may still be
        #: there with its own value, which a create recognises as its own (desk.bus.lease), so they are
        #: asked for again at once instead of after their expiry
        self._lost: set[int] = set()
        self.live = 1  # replicas seen at the last tick (this one included)
        self.short = False  # holding fewer than the least share (P // live) at the last tick
        self.takeovers = 0  # partitions taken after start-up
        self._kv: KeyValue | None = None
        self._presence: leases.Lease | None = None
        self._presence_task: asyncio.Task[None] | None = None
        self.ttl = 0.0
        self.poll = 0.5
        self._stop = asyncio.Event()
        self._started = False
        # where this replica starts looking for a free partition: replicas starting together spread out
        self._offset = int(self.holder.term, 16) % count

    # -- what is ours -----------------------------------------------------------------------------
    def partition(self, strategy_id: str) -> int:
        return partition_of(strategy_id, self.count)

    def owns(self, strategy_id: str) -> bool:
        """Whether this replica answers ``strategy_id`` now: it holds the partition's lease and its
        step-down time has not come (a renewal still being retried does not extend it)."""
        held = self.held.get(self.partition(strategy_id))
        return held is not None and time.monotonic() < held.lease.step_down_at

    def holds(self) -> list[int]:
        return sorted(self.held)

    # -- life -------------------------------------------------------------------------------------
    async def start(self, runtime: ServiceRuntime, ttl: float) -> None:
        """Join: announce this replica, take its share (all, when alone), then keep it balanced."""
        self._stop = runtime.stop
        self._kv, self.ttl = await leases.open_bucket(runtime.js, ttl)
        self.poll = min(self.ttl / 5, 0.5)
        runtime.stack.push_async_callback(self.release_all)  # unwound after the endpoints and the loop
        self._presence = leases.Lease(self._kv, f"{PRESENCE_PREFIX}{self.holder.term}", self.ttl, self.holder)
        await retrying(self._announce, what="router presence", deadline=60.0, stop=runtime.stop)
        began = time.monotonic()
        await retrying(self.tick, what="router partitions", deadline=30.0, stop=runtime.stop)
        self._started = True
        log.info(
            "partitions.joined",
            held=self.holds(),
            partitions=self.count,
            live=self.live,
            took_s=round(time.monotonic() - began, 3),
        )
        runtime.spawn(self._run(), "order_router.partitions")

    async def _announce(self) -> None:
        assert self._presence is not None
        if not await self._presence.try_acquire():
            raise RuntimeError(f"presence key {self._presence.key} is taken")  # a random term: never
        self._presence_task = asyncio.create_task(self._keep_presence(self._presence), name="router-presence")

    async def _keep_presence(self, presence: leases.Lease) -> None:
        while not self._stop.is_set():
            try:
                await presence.keep(self._stop)
                return
            except leases.LeaseLost as exc:  # counted out by the others until it is back
                log.warning("partitions.presence_lost", error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.poll)
            with contextlib.suppress(Exception):
                await presence.try_acquire()

    async def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), min(self.poll, EAGER_POLL) if self.short else self.poll)
            if self._stop.is_set():
                return
            try:
                await self.tick()
            except Exception as exc:  # an election: the next tick tries again; never ends the router
                if not transient(exc) and not isinstance(exc, nats.js.errors.Error):
                    raise
                log.info("partitions.tick_failed", error=repr(exc))

    async def tick(self) -> None:
        """Count the live replicas and take or give away partitions towards ``ceil(P / live)``."""
        assert self._kv is not None and self._presence is not None
        try:
            keys = set(await asyncio.wait_for(self._kv.keys(), LIST_TIMEOUT))
        except nats.js.errors.NoKeysError:
            keys = set()
        live = {key for key in keys if key.startswith(PRESENCE_PREFIX)} | {self._presence.key}
        self.live = len(live)
        target = -(-self.count // self.live)
        if len(self.held) > target:
            await self._give_away(len(self.held) - target)
        elif len(self.held) < target:
            free = [
                p for p in self._in_order() if p not in self.held and (partition_key(p) not in keys or p in self._lost)
            ]
            await self._take(free[: target - len(self.held)])
        self.short = len(self.held) < self.count // self.live  # below the least share: one is on its way

    def _in_order(self) -> list[int]:
        return [(self._offset + n) % self.count for n in range(self.count)]

    async def _take(self, free: list[int]) -> None:
        assert self._kv is not None
        for partition in free:
            lease = leases.Lease(self._kv, partition_key(partition), self.ttl, self.holder)
            if not await lease.try_acquire():
                self._lost.discard(partition)  # another's now (or still ours, expiring: then free soon)
                continue  # another replica was quicker
            self._lost.discard(partition)
            self.on_take(partition)  # before it is answered: the state its new owner must know
            task = asyncio.create_task(self._keep(partition, lease), name=f"router-partition-{partition}")
            self.held[partition] = _Held(lease, task)
            if self._started:
                self.takeovers += 1
            log.info("partition.taken", partition=partition, live=self.live, held=self.holds())
            self.on_change()

    async def _keep(self, partition: int, lease: leases.Lease) -> None:
        try:
            await lease.keep(self._stop)
        except leases.LeaseLost as exc:
            held = self.held.get(partition)
            if held is not None and held.lease is lease:
                del self.held[partition]
                self._lost.add(partition)
            log.warning("partition.lost", partition=partition, error=str(exc), held=self.holds())
            self.on_change()

    async def _give_away(self, how_many: int) -> None:
        for partition in sorted(self.held, reverse=True)[:how_many]:
            held = self.held.pop(partition)  # answered no more from here on
            self.on_change()
            try:
                await asyncio.wait_for(self.drain(partition), DRAIN_TIMEOUT)
            except TimeoutError:
                log.warning("partition.drain_timeout", partition=partition, timeout_s=DRAIN_TIMEOUT)
            await self._end(held)
            log.info("partition.released", partition=partition, live=self.live, held=self.holds())

    @staticmethod
    async def _end(held: _Held) -> None:
        held.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await held.task
        await held.lease.release()

    async def release_all(self) -> None:
        """Clean stop: hand every partition (and the presence) back at once, for the others to take."""
        held, self.held = list(self.held.values()), {}
        self.on_change()
        await asyncio.gather(*(self._end(h) for h in held), return_exceptions=True)
        if self._presence_task is not None:
            self._presence_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._presence_task
        if self._presence is not None:
            await self._presence.release()
