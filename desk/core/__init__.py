"""The desk's pure engine: no NATS, no asyncio, no I/O.

``ids`` (the order id), ``orders`` (order words, rules and validation), ``risk`` (pre-trade risk on
virtual accounts), ``matching`` (the simulated venue's matching engine) and ``books`` (positions,
cash and P&L). The services, the SDK and the backtester import the same code, so a backtest, a
replay and the live sim cannot disagree.

These modules may import only the standard library, ``desk.v1`` (protobuf types) and the pure
``desk.bus`` modules ``decimals``, ``errors`` and ``subjects`` (tests/unit/core/test_core_is_pure.py).
"""
