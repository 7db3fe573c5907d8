"""The order router: validation, pre-trade risk, per-strategy virtual accounts, idempotency, routing.

The rules are the pure engine's (:mod:`desk.core.orders`, :mod:`desk.core.risk`); ``service`` is the
async shell on the bus.
"""

NAME = "order_router"
