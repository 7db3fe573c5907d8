"""``python -m services.ledger``: the books, from the EXECUTIONS stream into SQLite."""

from __future__ import annotations

import argparse

from desk.bus.lifecycle import run
from desk.bus.settings import BusSettings, load_settings
from services.ledger.service import NAME, LedgerService
from services.ledger.settings import Settings


def _env_help() -> str:
    lines = ["environment:"]
    for name, info in Settings.model_fields.items():
        default = info.default
        own = name not in BusSettings.model_fields
        lines.append(f"  {name.upper():<28} {info.description or ''} (default: {default})" + ("" if own else " [bus]"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.ledger",
        description="Quant Desk ledger: books executions from the EXECUTIONS stream into SQLite (single writer) "
        "and answers desk.ledger.* queries.",
        epilog=_env_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(argv)
    settings = load_settings(Settings)
    run(NAME, settings, LedgerService(settings).start)


if __name__ == "__main__":
    main()
