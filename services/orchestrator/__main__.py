"""``python -m services.orchestrator``: run the orchestrator (``--help`` lists its settings)."""

from __future__ import annotations

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.orchestrator.service import NAME, OrchestratorService
from services.orchestrator.settings import Settings

DESCRIPTION = "Quant Desk orchestrator: deploys, runs, restarts and stops strategies (desk.ctl.strategy.*)."


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.orchestrator", DESCRIPTION, Settings, argv)
    run(NAME, settings, OrchestratorService(settings).start, lease=NAME)  # one active orchestrator (SERVICE_LEASE)


if __name__ == "__main__":
    main()
