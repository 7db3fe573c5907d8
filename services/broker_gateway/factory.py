"""The broker the settings name (``BROKER=sim|alpaca``), built before the service connects.

Construction does no I/O; :func:`check_broker` is the one start-up call to the venue (Alpaca: the
keys are accepted), so a wrong key is one clear line at start, not a retry loop later.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from desk.core.matching import SimConfig, SimEngine

from .brokers.base import Broker
from .brokers.sim import MarketClock, SimBroker
from .settings import Settings


class BrokerNotAvailable(SystemExit):
    """The configured broker is not part of this build; start-up is refused with a message."""


def build_broker(settings: Settings, clock: Callable[[], int] = time.time_ns) -> Broker:
    """The broker ``settings.broker`` names (no I/O yet; missing Alpaca keys refuse start-up)."""
    if settings.broker == "sim":
        return build_sim_broker(settings, clock)
    if settings.broker == "alpaca":
        from .brokers.alpaca import AlpacaBroker, AlpacaCredentialsError, alpaca_config

        try:
            return AlpacaBroker(alpaca_config(settings), clock=clock)
        except AlpacaCredentialsError as exc:
            raise BrokerNotAvailable(exc.code) from None
    raise BrokerNotAvailable(f"BROKER={settings.broker} is not supported; use BROKER=sim or BROKER=alpaca")


def build_sim_broker(settings: Settings, clock: Callable[[], int] = time.time_ns) -> SimBroker:
    """The sim venue with the SIM_* slippage and fee models, on its market's clock."""
    config = SimConfig(
        slippage_bps=settings.sim_slippage_bps,
        fee_bps=settings.sim_fee_bps,
        fee_per_share=settings.sim_fee_per_share,
        fee_min=settings.sim_fee_min,
        participation=settings.sim_participation,
    )
    market = MarketClock(fallback=clock)  # the venue's time is its market data's (see brokers/sim.py)
    return SimBroker(SimEngine(config, clock=market), market)


def check_broker(broker: Broker) -> None:
    """Start-up check before the service runs (Alpaca: the keys are accepted), else BrokerNotAvailable."""
    try:
        broker.check()
    except SystemExit as exc:
        raise BrokerNotAvailable(exc.code) from None
