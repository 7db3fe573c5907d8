"""Is the router's venue served? A routed order for a venue no gateway takes would wait for ever.

The gateway of venue ``V`` takes routed orders through the durable pull consumer ``gateway-V`` on
the ``ORDERS`` work queue (``services/broker_gateway/service.py``); while that consumer exists the
orders routed to ``desk.broker.V.orders`` are the gateway's - also while it restarts (they queue
and are taken when it is back, as after a crash). No such consumer: no gateway of ``V`` ever ran
on this NATS, and the router refuses the order (``VENUE_UNAVAILABLE``) instead of accepting it.

* A consumer found is believed for :data:`SERVED_TTL` seconds (one JetStream request per TTL at
  most, whatever the order rate); a miss is checked again on the next order (never cached), so the
  first order after a gateway created its consumer is routed.
* Start-up order: ``desk up`` starts the gateway before the router and waits for it to answer; the
  gateway creates its consumer before it registers its micro service, so once it answers the
  consumer is there. A miss is still re-checked every :data:`POLL` s for up to ``ROUTER_VENUE_WAIT``
  seconds (default 2; below the SDK's 5 s order timeout) before the order is refused: a router
  started beside its gateway (compose starts both at once) does not refuse the first orders spuriously.

**What "served" means across an election.** Once this router has found the consumer, the venue
stays *served* until the consumer has been seen missing (404) at every check for
:data:`MISSING_GRACE` seconds in a row - not until the next failed request:

* each lookup waits :data:`LOOKUP_TIMEOUT` at the most (not nats-py's 5 s), and once the TTL has
  passed the venue is looked up again *in the background*: the order that finds the TTL passed is
  routed at once and never waits for the JetStream API (the meta leader) to answer;
* a transient error (:func:`desk.bus.retry.transient`: a timeout, no responders, an election) says
  nothing about the gateway: a venue that was served is believed through it (and looked up again
  after :data:`RECHECK` s);
* a 404 just after a fail-over is not the gateway gone either: a consumer lost with a node is
  created again by its gateway (``desk.bus.pull.DurablePull``) only once the cluster answers it
  (and a new meta leader that has not caught up could say 404 too: not seen in the fault suite,
  guarded against all the same). Orders routed meanwhile
  queue in ``ORDERS`` (a work queue keeps what no consumer has taken) and the re-created consumer
  (deliver all) takes them. Only a consumer missing for :data:`MISSING_GRACE` s (a gateway removed
  for good) makes the venue unserved again; from then on a miss refuses orders (after the
  ``ROUTER_VENUE_WAIT`` re-checks) until the consumer is found again - never for good.

A venue never found by this router process is not believed through errors: the order waits up to
``ROUTER_VENUE_WAIT`` for a lookup that answers, and is refused if none does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats.js.errors
from nats.js import JetStreamContext

from desk.bus import subjects
from desk.bus.logging import get_logger
from desk.bus.retry import transient

SERVED_TTL = 10.0
POLL = 0.25
#: seconds one consumer-info request may take (an election answers nothing: nats-py would wait 5 s)
LOOKUP_TIMEOUT = 0.5
#: seconds until a venue believed through a transient error or a 404 is looked up again
RECHECK = 1.0
#: seconds a served venue's consumer must be missing at every check before the venue is unserved
MISSING_GRACE = 30.0

log = get_logger("order_router")


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
        self.found = False  # found by this process, and not missing for MISSING_GRACE since
        self._missing_since: float | None = None  # first 404 of the current run of 404s
        self._failing = False  # the last lookup failed (transient): logged once per run of failures

    def reason(self) -> str:
        return (
            f"no broker gateway serves venue {self.venue!r} (no consumer {self.durable} on "
            f"{subjects.STREAM_ORDERS}): start the gateway with BROKER={self.venue}, or set ROUTER_VENUE "
            "to the venue of the running gateway"
        )

    async def served(self) -> bool:
        if self._clock() < self._served_until:
            return True
        if self.found:
            self._refresh()  # served before: looked up again behind the order, which does not wait
            return True
        deadline = self._clock() + self.wait
        while True:
            if await self._check_once():
                return True
            if self._clock() + POLL > deadline:
                return False
            await asyncio.sleep(POLL)

    def _refresh(self) -> None:
        if self._checking is None:
            self._start_check().add_done_callback(_consume)

    def _start_check(self) -> asyncio.Future[bool]:
        checking = self._checking = asyncio.ensure_future(self._lookup())
        checking.add_done_callback(lambda _: setattr(self, "_checking", None))
        return checking

    async def _check_once(self) -> bool:
        """One consumer-info request, shared by the orders that miss at the same moment."""
        checking = self._checking if self._checking is not None else self._start_check()
        return await asyncio.shield(checking)

    async def _lookup(self) -> bool:
        self.checks += 1
        now = self._clock()
        try:
            await self.js.consumer_info(subjects.STREAM_ORDERS, self.durable, timeout=LOOKUP_TIMEOUT)
        except nats.js.errors.NotFoundError:
            return self._missing(now)
        except Exception as exc:
            if not transient(exc):
                raise
            if not self._failing:
                log.warning("venue.check_failed", venue=self.venue, believed=self.found, error=repr(exc))
            self._failing = True
            if self.found:
                self._served_until = now + RECHECK
            return self.found
        if self._failing or self._missing_since is not None:
            log.info("venue.check_ok", venue=self.venue)
        self._failing, self._missing_since, self.found = False, None, True
        self._served_until = now + SERVED_TTL
        return True

    def _missing(self, now: float) -> bool:
        """A 404: believed at once for a venue never found, after MISSING_GRACE for a served one."""
        self._failing = False
        if not self.found:
            return False
        if self._missing_since is None:
            self._missing_since = now
            log.warning("venue.consumer_missing", venue=self.venue, durable=self.durable, grace=MISSING_GRACE)
        if now - self._missing_since < MISSING_GRACE:
            self._served_until = now + RECHECK
            return True
        log.error("venue.unserved", venue=self.venue, durable=self.durable, missing_s=round(now - self._missing_since))
        self.found, self._missing_since = False, None
        return False


def _consume(done: asyncio.Future[bool]) -> None:
    """A background lookup's error (a permanent one: a refused permission, the connection closed)
    is logged; the next order's lookup meets it again."""
    if not done.cancelled() and (exc := done.exception()) is not None:
        log.warning("venue.check_error", error=repr(exc))
