"""``python -m services.dashboard``: the club's web page, served on DASHBOARD_HOST:DASHBOARD_PORT."""

from __future__ import annotations

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.dashboard.service import NAME, DashboardService
from services.dashboard.settings import Settings

DESCRIPTION = (
    "Quant Desk dashboard: leaderboard, strategy pages and desk health on the web, read from the "
    "ledger and orchestrator over NATS, with live updates (server-sent events)."
)


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.dashboard", DESCRIPTION, Settings, argv)
    run(NAME, settings, DashboardService(settings).start)


if __name__ == "__main__":
    main()
