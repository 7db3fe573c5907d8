"""Connect to NATS from settings, with callbacks that log what the connection goes through."""

from __future__ import annotations

from typing import Any

from nats.aio.client import Client

from desk.bus.logging import get_logger
from desk.bus.servers import open_connection
from desk.bus.settings import BusSettings

log = get_logger("desk.bus")


async def connect(settings: BusSettings, name: str, **options: Any) -> Client:
    """Connect to every server of ``NATS_URL`` with reconnects forever, logging errors, disconnects and
    reconnects (:func:`desk.bus.servers.open_connection`)."""

    async def error_cb(exc: Exception) -> None:
        log.warning("nats.error", error=repr(exc))

    async def disconnected_cb() -> None:
        log.warning("nats.disconnected")

    async def reconnected_cb() -> None:
        log.info("nats.reconnected", url=str(nc.connected_url.netloc if nc.connected_url else ""))

    async def closed_cb() -> None:
        log.info("nats.closed")

    auth: dict[str, Any] = {}
    if settings.nats_creds:
        auth["user_credentials"] = settings.nats_creds
    elif settings.nats_user:
        auth["user"] = settings.nats_user
        auth["password"] = settings.password
    nc = await open_connection(
        settings.servers,
        forever=True,
        name=name,
        connect_timeout=settings.nats_connect_timeout,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        closed_cb=closed_cb,
        **auth,
        **options,
    )
    log.info("nats.connected", url=str(nc.connected_url.netloc if nc.connected_url else ""), name=name)
    return nc
