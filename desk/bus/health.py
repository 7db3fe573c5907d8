"""``python -m desk.bus.health NAME``: exit 0 when service NAME answers its NATS micro PING.

Used by compose healthchecks and scripts; NATS_URL (and NATS_USER/NATS_PASSWORD/NATS_CREDS) as for
the services.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from desk.bus.servers import open_connection
from desk.bus.settings import BusSettings


async def ping(settings: BusSettings, name: str, timeout: float) -> dict[str, object]:
    async def quiet(exc: Exception) -> None:  # one clear line is printed by main()
        pass

    auth: dict[str, Any] = {}
    if settings.nats_creds:
        auth["user_credentials"] = settings.nats_creds
    elif settings.nats_user:
        auth.update(user=settings.nats_user, password=settings.password)
    nc = await open_connection(settings.servers, forever=False, connect_timeout=timeout, error_cb=quiet, **auth)
    try:
        msg = await nc.request(f"$SRV.PING.{name}", b"", timeout=timeout)
        reply: dict[str, object] = json.loads(msg.data)
        return reply
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m desk.bus.health", description=__doc__)
    parser.add_argument("name", help="micro service name, e.g. order_router")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait (default 2)")
    args = parser.parse_args(argv)
    try:
        reply = asyncio.run(ping(BusSettings(), args.name, args.timeout))
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy", said in one line
        print(f"{args.name}: not healthy: {exc!r}", file=sys.stderr)
        return 1
    print(f"{args.name}: healthy (id {reply.get('id')}, version {reply.get('version')})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
