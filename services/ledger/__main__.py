"""``python -m services.ledger``: the books, from the EXECUTIONS stream into SQLite."""

from __future__ import annotations

from desk.bus.lifecycle import run
from desk.bus.settings import service_settings
from services.ledger.service import NAME, LedgerService
from services.ledger.settings import Settings

DESCRIPTION = (
    "Quant Desk ledger: books executions from the EXECUTIONS stream into SQLite (single writer) "
    "and answers desk.ledger.* queries."
)


def main(argv: list[str] | None = None) -> None:
    settings = service_settings("python -m services.ledger", DESCRIPTION, Settings, argv)
    run(NAME, settings, LedgerService(settings).start)


if __name__ == "__main__":
    main()
