"""``python -m services.order_router``: run the order router (``--help`` lists its settings)."""

from __future__ import annotations

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.order_router.service import NAME, OrderRouterService
from services.order_router.settings import Settings

DESCRIPTION = "Quant Desk order router: validates orders, checks pre-trade risk, routes to the broker gateway."


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.order_router", DESCRIPTION, Settings, argv)
    run(NAME, settings, OrderRouterService(settings).start)


if __name__ == "__main__":
    main()
