"""The kill switch's state, pure (no NATS, no asyncio): which ``DESK_RISK`` keys hold a halt.

The router's own halt/resume writes and the bucket's watch both land here, each with its KV
revision; a change older than the one a key already has is ignored, so a late watch event never
undoes a newer write (:meth:`Halts.apply`).
"""

from __future__ import annotations

from desk.bus import subjects
from desk.core.orders import refusal
from desk.v1 import orders_pb2

GLOBAL_HALT_KEY = subjects.halt_key("")


class Halts:
    """``DESK_RISK`` key (``halt._global``, ``halt.<strategy_id>``) -> the halt in force there."""

    def __init__(self) -> None:
        self.requests: dict[str, orders_pb2.HaltRequest] = {}
        self._revisions: dict[str, int] = {}  # key -> the last revision applied (halt or resume)

    def __contains__(self, key: object) -> bool:
        return key in self.requests

    def apply(self, key: str, revision: int, request: orders_pb2.HaltRequest | None) -> bool:
        """A halt (``request``) or a resume (None) of ``key`` at ``revision``; False when it is not newer
        than what ``key`` has, or is a resume of a key that was not halted (nothing changed)."""
        if revision <= self._revisions.get(key, 0):
            return False
        self._revisions[key] = revision
        if request is None:
            return self.requests.pop(key, None) is not None
        self.requests[key] = request
        return True

    def check(self, strategy_id: str) -> None:
        """Raise the HALTED refusal when the desk or ``strategy_id`` is halted."""
        for key in (GLOBAL_HALT_KEY, subjects.halt_key(strategy_id)):
            halt = self.requests.get(key)
            if halt is not None:
                scope = "the desk" if key == GLOBAL_HALT_KEY else f"strategy {strategy_id}"
                raise refusal("HALTED", f"trading is halted for {scope}: {halt.reason or 'no reason given'}")

    def keys(self) -> list[str]:
        """The halted keys, sorted."""
        return sorted(self.requests)

    def state(self, message: str) -> orders_pb2.HaltAck:
        """The answer of halt, resume and risk_status: the desk's halt and the halted strategies."""
        halted = sorted(key.removeprefix("halt.") for key in self.requests if key != GLOBAL_HALT_KEY)
        return orders_pb2.HaltAck(
            global_halted=GLOBAL_HALT_KEY in self.requests, halted_strategies=halted, message=message
        )
