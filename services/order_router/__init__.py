"""The order router: validation, pre-trade risk, per-strategy virtual accounts, idempotency, routing.

The rules are the pure engine's (:mod:`desk.core.orders`, :mod:`desk.core.risk`); ``halts`` (the kill
switch's state) and ``acks`` (the order ids seen, the acks) are the router's own pure state; ``service``
is the async shell on the bus.
"""
