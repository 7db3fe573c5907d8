"""The dashboard's async shell: a NATS micro service ``dashboard`` that serves the web app with
uvicorn inside the service's own event loop (a ``runtime.spawn`` task), so one lifecycle
(desk.bus.lifecycle) covers both: SIGTERM stops the web server, then the bus connection drains."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path

import uvicorn

import desk
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from services.dashboard.app import create_app
from services.dashboard.auth import OperatorAuth
from services.dashboard.live import LiveFeed
from services.dashboard.members import MemberSessions
from services.dashboard.reader import DeskReader
from services.dashboard.settings import Settings

NAME = "dashboard"
log = get_logger("dashboard")


class EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handlers (the service's lifecycle owns SIGINT/SIGTERM), and
    with an event set once it listens."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            self.listening.set()


class DashboardService:
    """``start`` wires everything onto a :class:`ServiceRuntime`; construction does no I/O."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.live = LiveFeed(settings.dashboard_price_history)
        password = settings.dashboard_operator_password
        key = settings.dashboard_secret_key
        secret = key.get_secret_value().encode() if key else secrets.token_bytes(32)
        self.auth = OperatorAuth(
            password.get_secret_value() if password else None, secret, settings.dashboard_session_hours * 3600
        )
        self.members = MemberSessions(
            settings.servers if settings.dashboard_member_logins else [],
            secret,
            settings.dashboard_session_hours * 3600,
            tls_ca=settings.nats_tls_ca,
            timeout=max(settings.dashboard_request_timeout, settings.nats_connect_timeout),
        )
        self.server: EmbeddedServer | None = None
        self.url = ""

    async def start(self, runtime: ServiceRuntime) -> None:
        settings = self.settings
        await self.live.start(runtime.nc)
        reader = DeskReader(runtime.nc, self.live, settings.dashboard_request_timeout, settings.service_names)
        app = create_app(
            reader,
            self.live,
            self.auth,
            secure_cookie=settings.dashboard_secure_cookie,
            login_throttle=settings.login_throttle(),
            trusted_proxies=settings.trusted_proxies,
            members=self.members,
            reports_dir=Path(settings.dashboard_reports_dir) if settings.dashboard_reports_dir else None,
        )
        config = uvicorn.Config(
            app,
            host=settings.dashboard_host,
            port=settings.dashboard_port,
            log_config=None,  # structlog owns logging
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            proxy_headers=False,
        )
        server = self.server = EmbeddedServer(config)
        task = runtime.spawn(self._serve(server, runtime), "dashboard.http")

        async def stop_http() -> None:
            # Runs before the spawn's cancel (LIFO): end the event streams, then let uvicorn close.
            await self.live.stop()
            await self.members.close_all()  # every member's own connection
            server.should_exit = True
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(asyncio.shield(task), settings.drain_timeout)

        runtime.stack.push_async_callback(stop_http)
        listening = asyncio.ensure_future(server.listening.wait())
        await asyncio.wait({listening, task}, return_when=asyncio.FIRST_COMPLETED)
        if not server.listening.is_set():
            listening.cancel()
            raise RuntimeError(f"web server did not start on {settings.dashboard_host}:{settings.dashboard_port}")
        host, port = self._bound(server)
        self.url = f"http://{host}:{port}/"
        # Registered once listening, so INFO's metadata carries the real address (DASHBOARD_PORT=0 works).
        await add_service(
            runtime,
            NAME,
            desk.__version__,
            "the club's web page: leaderboard, strategy pages, desk health, live updates",
            metadata={"url": self.url, "operator_actions": "enabled" if self.auth.enabled else "disabled"},
        )
        log.info("dashboard.listening", url=self.url, operator_actions=self.auth.enabled)
        print(f"dashboard: {self.url}", flush=True)

    @staticmethod
    def _bound(server: uvicorn.Server) -> tuple[str, int]:
        for s in server.servers:
            for sock in s.sockets:
                host, port = sock.getsockname()[:2]
                return str(host), int(port)
        return "", 0

    async def _serve(self, server: EmbeddedServer, runtime: ServiceRuntime) -> None:
        try:
            await server.serve()
        except SystemExit as exc:  # uvicorn exits the process when it cannot bind: make it a failure
            raise RuntimeError(f"web server failed to start (exit {exc.code}); is the port taken?") from None
        if not runtime.stop.is_set():
            raise RuntimeError("the web server stopped on its own")
