"""``python -m services.order_router``: run the order router (``--help`` lists its settings)."""

from __future__ import annotations

import argparse

from desk.bus.lifecycle import run
from desk.bus.settings import load_settings
from services.order_router import NAME
from services.order_router.service import Router
from services.order_router.settings import Settings


def _epilog() -> str:
    lines = ["environment variables:"]
    for name, info in Settings.model_fields.items():
        default = "" if info.default is None else f" (default {info.default})"
        lines.append(f"  {name.upper():40} {info.description or ''}{default}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.order_router",
        description="Quant Desk order router: validates orders, checks pre-trade risk, routes to the broker gateway.",
        epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args()
    settings = load_settings(Settings)
    run(NAME, settings, Router(settings).start)


if __name__ == "__main__":
    main()
