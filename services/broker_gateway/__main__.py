"""``python -m services.broker_gateway``: the broker gateway (BROKER=sim by default)."""

from __future__ import annotations

import sys

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.broker_gateway.factory import BrokerNotAvailable, build_broker, check_broker
from services.broker_gateway.service import NAME, BrokerGatewayService
from services.broker_gateway.settings import Settings

DESCRIPTION = (
    "Quant Desk broker gateway: consumes routed orders from the ORDERS stream (desk.broker.<venue>.orders), "
    "hands them to the broker (sim: a local matching simulator fed by md.*; alpaca: Alpaca paper trading "
    "through alpaca-py, ALPACA_API_KEY/ALPACA_SECRET_KEY) and publishes every execution "
    "report to EXECUTIONS (desk.exec.<strategy_id>)."
)


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.broker_gateway", DESCRIPTION, Settings, argv)
    try:
        broker = build_broker(settings)
        check_broker(broker)  # Alpaca: a wrong key is one clear line now, not a retry loop later
    except BrokerNotAvailable as exc:
        print(f"{NAME}: {exc.code}", file=sys.stderr)
        raise SystemExit(2) from None
    gateway = BrokerGatewayService(settings, broker)
    run(NAME, settings, gateway.start, lease=gateway.durable)  # one active gateway per venue (SERVICE_LEASE)


if __name__ == "__main__":
    main()
