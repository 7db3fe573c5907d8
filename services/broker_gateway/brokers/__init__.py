"""The venues a gateway can front, behind :class:`.base.Broker`."""

from .base import Broker

__all__ = ["Broker"]
