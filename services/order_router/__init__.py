"""The order router: validation, pre-trade risk, per-strategy virtual accounts, idempotency, routing.

``validation`` and ``risk`` are pure (no I/O); ``service`` is the async shell on the bus.
"""

NAME = "order_router"
