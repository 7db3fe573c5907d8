"""Fetch from a JetStream pull subscription without waiting to fill a batch.

nats-py's ``fetch(n)`` on an idle consumer sends a lingering pull for ``n`` messages and, once the first
arrives, keeps waiting for the other ``n - 1`` until its timeout: a routed order reaching an idle gateway
that fetches 64 at a time waited up to the whole fetch timeout (measured: up to ~0.5 s of a 1 s timeout;
under 5 ms with a batch of one). :func:`fetch_available` waits for one message only, then takes at once
what the consumer already holds (the message's ``num_pending``), up to ``batch``. An election's error
(desk.bus.retry) on that second fetch keeps the messages already fetched.
"""

from __future__ import annotations

import nats.errors
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

from desk.bus.retry import transient

#: How long the second, immediate fetch may take: its messages are already in the stream.
READY_TIMEOUT = 0.25


async def fetch_available(sub: JetStreamContext.PullSubscription, batch: int, timeout: float) -> list[Msg]:
    """Up to ``batch`` messages: wait up to ``timeout`` for the first, then only for those pending.

    Raises ``nats.errors.TimeoutError`` when none arrived within ``timeout`` (as ``fetch`` does).
    """
    messages = await sub.fetch(1, timeout=timeout)
    if batch <= 1 or not messages:
        return messages
    pending = messages[-1].metadata.num_pending if messages[-1].metadata else 0
    more = min(batch - 1, pending)
    if more > 0:
        try:
            messages += await sub.fetch(more, timeout=READY_TIMEOUT)
        except nats.errors.TimeoutError:
            pass  # taken by another consumer meanwhile: these are enough
        except Exception as exc:
            if not transient(exc):
                raise
            # an election began between the two fetches: hand on the messages in hand (unacked, they
            # would only come back after ack_wait); the next fetch meets the election and retries
    return messages
