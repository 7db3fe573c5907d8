"""``python -m strategy_sdk run PATH``: run one strategy against the desk until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from strategy_sdk.client import SDK_VERSION
from strategy_sdk.runner import configure_logging, run_strategy

EPILOG = """\
environment:
  NATS_URL                 NATS server(s), comma-separated (default nats://127.0.0.1:4222)
  NATS_USER, NATS_PASSWORD NATS user credentials, or NATS_CREDS: a .creds file
  NATS_INBOX_PREFIX        reply inbox prefix, when the strategy's NATS user is restricted to one
  DESK_STRATEGY_ID         the strategy's id (default: the folder name)
  DESK_MEMBER_ID           the member who owns it (default: config.json user_id)
  DESK_SYMBOLS             comma-separated symbols to receive (default: config.json symbols, else all)
  DESK_HEARTBEAT_INTERVAL  seconds between heartbeats on desk.hb.<id> (default 5)
  DESK_INITIAL_CASH        starting cash when the ledger has no books (default: config.json
                           initial_cash, else 100000)
  LOG_LEVEL                debug, info (default), warning, error

A folder with strategy.py + config.json, or a strategy.py file. strategy.py either defines one
subclass of strategy_sdk.Strategy, or is an old-desk strategy (reads JSON bars on stdin and calls
desk_client.place_order), which runs unchanged as a child process.

exit codes: 0 stopped on request, 1 cannot reach NATS, 2 strategy cannot be loaded or on_start
failed; an old-desk strategy's own exit code when it ends by itself.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m strategy_sdk",
        description="Run a Quant Desk strategy: market data in, orders out, heartbeats on the bus.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"strategy_sdk {SDK_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run", help="run one strategy until SIGTERM/SIGINT", description="Run one strategy until SIGTERM/SIGINT.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("path", metavar="PATH", help="strategy folder (strategy.py + config.json) or a strategy.py")
    args = parser.parse_args(argv)
    configure_logging()
    return asyncio.run(_run(args.path))


async def _run(path: str) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await run_strategy(path, stop_event=stop)


if __name__ == "__main__":
    sys.exit(main())
