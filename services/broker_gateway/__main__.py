"""``python -m services.broker_gateway``: the broker gateway (BROKER=sim by default)."""

from __future__ import annotations

import argparse
import sys

from desk.bus.lifecycle import run
from desk.bus.settings import load_settings

from .service import NAME, BrokerNotAvailable, make_start
from .settings import Settings


def _epilog() -> str:
    lines = ["environment variables:"]
    for name, field in Settings.model_fields.items():
        default = "" if field.default is None else f" (default {field.default})"
        lines.append(f"  {name.upper():<26} {field.description or ''}{default}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        prog="python -m services.broker_gateway",
        description="Consume routed orders from the ORDERS stream (desk.broker.<venue>.orders), hand them to "
        "the broker (sim: a local matching simulator fed by md.*) and publish every execution report "
        "to EXECUTIONS (desk.exec.<strategy_id>).",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    ).parse_args(argv)
    settings = load_settings(Settings)
    try:
        start = make_start(settings)
    except BrokerNotAvailable as exc:
        print(f"broker_gateway: {exc.code}", file=sys.stderr)
        raise SystemExit(2) from None
    run(NAME, settings, start)


if __name__ == "__main__":
    main()
