"""``python -m services.marketdata``: run the marketdata service (``--help`` lists its settings)."""

from __future__ import annotations

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.marketdata.service import NAME, MarketDataService
from services.marketdata.settings import Settings

DESCRIPTION = "Quant Desk market data: the synthetic or replay feed, published on md.* over NATS."


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.marketdata", DESCRIPTION, Settings, argv)
    run(NAME, settings, MarketDataService(settings).start, lease=NAME)  # one active feed (SERVICE_LEASE)


if __name__ == "__main__":
    main()
