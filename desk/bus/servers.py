"""One way to reach NATS for everything that connects: services, the CLI, the orchestrator's checks,
strategies (the SDK runner), ``desk_client`` and the health probe.

``NATS_URL`` may list several servers (``nats://a:4222,nats://b:4222``): :func:`server_list` reads
it (each entry checked; ``host:port`` means ``nats://host:port``), and :func:`open_connection` hands
the whole list to nats-py, which connects to the first that answers and fails over to the others.
``forever=True`` (services, strategies) reconnects for as long as the process lives; ``forever=False``
(a command, a probe) tries each server once and gives up, so an unreachable desk is an error, not a
hang. Only the standard library and nats-py: the SDK imports this.

TLS: a desk exposed beyond its machine runs nats-server with a certificate (NATS_TLS_CERT /
NATS_TLS_KEY); its clients check it against a CA: ``tls_ca`` (a file) or ``tls_ca_pem`` (the PEM
text: a member's credential file carries it; sandboxed strategies get it in NATS_TLS_CA_PEM), by
default NATS_TLS_CA / NATS_TLS_CA_PEM from the environment. Without one, ``tls://`` URLs use the
system's CAs.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

import nats
from nats.aio.client import Client

SCHEMES = ("nats", "tls", "ws", "wss")
DEFAULT_URL = "nats://127.0.0.1:4222"
Callback = Callable[[], Awaitable[None]]
ErrorCallback = Callable[[Exception], Awaitable[None]]


def server_list(urls: str | Sequence[str]) -> list[str]:
    """The servers of ``urls`` (a comma-separated string or a list), each ``scheme://host[:port]``;
    ValueError naming the entry that is not a NATS server address."""
    entries = urls.split(",") if isinstance(urls, str) else list(urls)
    servers: list[str] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        url = entry if "://" in entry else f"nats://{entry}"
        try:
            parts = urlsplit(url)
            port = parts.port  # raises on a port that is not a number
        except ValueError:
            raise ValueError(f"NATS server {entry!r} is not an address like nats://host:4222") from None
        if parts.scheme not in SCHEMES or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise ValueError(
                f"NATS server {entry!r} is not an address like nats://host:4222 (schemes: {', '.join(SCHEMES)})"
            )
        del port
        servers.append(url)
    if not servers:
        raise ValueError("no NATS server given (NATS_URL is empty)")
    return servers


def env_auth(env: Mapping[str, str]) -> dict[str, Any]:
    """nats-py's credentials options from NATS_CREDS, else NATS_USER/NATS_PASSWORD, in ``env``."""
    if env.get("NATS_CREDS"):
        return {"user_credentials": env["NATS_CREDS"]}
    if env.get("NATS_USER"):
        return {"user": env["NATS_USER"], "password": env.get("NATS_PASSWORD", "")}
    return {}


def tls_context(ca_file: str | None = None, ca_pem: str | None = None) -> ssl.SSLContext | None:
    """A client TLS context that trusts ``ca_file`` or ``ca_pem`` (default: NATS_TLS_CA, NATS_TLS_CA_PEM
    from the environment); None when neither is given."""
    ca_file = ca_file or os.environ.get("NATS_TLS_CA") or None
    ca_pem = ca_pem or os.environ.get("NATS_TLS_CA_PEM") or None
    if not ca_file and not ca_pem:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file, cadata=ca_pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _quiet(exc: Exception) -> None:
    """nats-py logs every failed attempt through error_cb; a command says one clear line itself."""


async def open_connection(
    servers: str | Sequence[str],
    *,
    forever: bool,
    name: str | None = None,
    connect_timeout: float = 2.0,
    error_cb: ErrorCallback | None = None,
    errors: list[Exception] | None = None,
    tls_ca: str | None = None,
    tls_ca_pem: str | None = None,
    **options: Any,
) -> Client:
    """Connect to ``servers`` (see the module docstring). ``errors``: a list that collects every
    error nats-py reports (a command tells a refused login from an unreachable server with it);
    ``options``: nats-py's (credentials, callbacks, ``inbox_prefix``...)."""
    seen = errors

    async def report(exc: Exception) -> None:
        if seen is not None:
            seen.append(exc)
        await (error_cb or _quiet)(exc)

    reconnect: dict[str, Any] = (
        {"allow_reconnect": True, "max_reconnect_attempts": -1, "reconnect_time_wait": 0.5}
        if forever
        # max_reconnect_attempts must be > 0 for nats-py to give up on an unreachable server
        else {"max_reconnect_attempts": 1, "reconnect_time_wait": 0.2}
    )
    if "tls" not in options:
        context = tls_context(tls_ca, tls_ca_pem)
        if context is not None:
            options["tls"] = context
    return await nats.connect(
        servers=server_list(servers),
        name=name,
        connect_timeout=connect_timeout,
        error_cb=report,
        **reconnect,
        **options,
    )
