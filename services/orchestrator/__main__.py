"""``python -m services.orchestrator``: run the orchestrator (``--help`` lists its settings)."""

from __future__ import annotations

import argparse
import sys

from desk.bus.lifecycle import run
from desk.bus.settings import load_settings
from services.orchestrator.service import NAME, make_start
from services.orchestrator.settings import Settings


def settings_epilog(cls: type[Settings]) -> str:
    lines = ["environment variables:"]
    for field_name, info in cls.model_fields.items():
        default = info.default if info.default is not None else ""
        lines.append(f"  {field_name.upper():<24} {info.description or ''} (default: {default})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.orchestrator",
        description="Quant Desk orchestrator: deploys, runs, restarts and stops strategies (desk.ctl.strategy.*).",
        epilog=settings_epilog(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings(Settings)
    run(NAME, settings, make_start(settings))


if __name__ == "__main__":
    main()
