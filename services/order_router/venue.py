"""Is the router's venue served? A routed order for a venue no gateway takes would wait for ever.

The gateway of venue ``V`` takes routed orders through the durable pull consumer ``gateway-V`` on
the ``ORDERS`` work queue (``services/broker_gateway/service.py``); while that consumer exists the
orders routed to ``desk.broker.V.orders`` are the gateway's - also while it restarts (they queue
and are taken when it is back, as after a crash). No such consumer: no gateway of ``V`` ever ran
on this NATS, and the router refuses the order (``VENUE_UNAVAILABLE``) instead of accepting it.

* A consumer found is believed for :data:`SERVED_TTL` seconds (one JetStream request per TTL at
  most, whatever the order rate); a miss is checked again on the next order (never cached), so the
  first order after a gateway created its consumer is routed.
* Start-up order: ``desk up`` starts the gateway before the router, but the gateway creates its
  consumer only once its broker is connected (Alpaca: the stream and the first reconcile), a few
  seconds later. So a miss is re-checked every :data:`POLL` s for up to ``ROUTER_VENUE_WAIT``
  seconds (default 2; below the SDK's 5 s order timeout) before the order is refused: the first
  orders of a desk that is just starting are not refused spuriously.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.js.errors
from nats.js import JetStreamContext

from desk.bus import subjects

SERVED_TTL = 10.0
POLL = 0.25


def gateway_durable(venue: str) -> str:
    """The durable consumer name the gateway of ``venue`` takes its routed orders with."""
    return f"gateway-{venue}"


class VenueCheck:
    """Whether a gateway serves ``venue`` (its durable consumer exists on ``ORDERS``), cached."""

    def __init__(
        self, js: JetStreamContext, venue: str, wait: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.js, self.venue, self.wait = js, venue, wait
        self.durable = gateway_durable(venue)
        self._clock = clock
        self._served_until = float("-inf")
        self._checking: asyncio.Future[bool] | None = None
        self.checks = 0

    def reason(self) -> str:
        return (
            f"no broker gateway serves venue {self.venue!r} (no consumer {self.durable} on "
            f"{subjects.STREAM_ORDERS}): start the gateway with BROKER={self.venue}, or set ROUTER_VENUE "
            "to the venue of the running gateway"
        )

    async def served(self) -> bool:
        if self._clock() < self._served_until:
            return True
        deadline = self._clock() + self.wait
        while True:
            if await self._check_once():
                return True
            if self._clock() + POLL > deadline:
                return False
            await asyncio.sleep(POLL)

    async def _check_once(self) -> bool:
        """One consumer-info request, shared by the orders that miss at the same moment."""
        if self._checking is None:
            self._checking = asyncio.ensure_future(self._lookup())
            self._checking.add_done_callback(lambda _: setattr(self, "_checking", None))
        return await asyncio.shield(self._checking)

    async def _lookup(self) -> bool:
        self.checks += 1
        try:
            await self.js.consumer_info(subjects.STREAM_ORDERS, self.durable)
        except nats.js.errors.NotFoundError:
            return False
        self._served_until = self._clock() + SERVED_TTL
        return True
