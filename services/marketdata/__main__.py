"""``python -m services.marketdata``: run the marketdata service (``--help`` lists its settings)."""

from __future__ import annotations

import argparse
import sys

from desk.bus.lifecycle import run
from desk.bus.settings import load_settings
from services.marketdata.service import NAME, make_start
from services.marketdata.settings import Settings


def settings_epilog(cls: type[Settings]) -> str:
    lines = ["environment variables:"]
    for field_name, info in cls.model_fields.items():
        default = info.default if info.default is not None else ""
        lines.append(f"  {field_name.upper():<24} {info.description or ''} (default: {default})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m services.marketdata",
        description="Quant Desk market data: the synthetic or replay feed, published on md.* over NATS.",
        epilog=settings_epilog(Settings),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings(Settings)
    run(NAME, settings, make_start(settings))


if __name__ == "__main__":
    main()
