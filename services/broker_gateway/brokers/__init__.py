"""The venues a gateway can front, behind :class:`.base.Broker`."""

from .base import Broker, MarketUpdate, Reports

__all__ = ["Broker", "MarketUpdate", "Reports"]
