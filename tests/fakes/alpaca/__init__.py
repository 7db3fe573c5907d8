"""A fake Alpaca (REST v2, trade_updates, market-data stream) for tests: see server.py."""

from .server import FakeAlpaca

__all__ = ["FakeAlpaca"]
