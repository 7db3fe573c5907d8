"""The embedded desk (``desk up``): nats-server, every service and the strategies on one machine.

NATS runs with authorization: every service has its own user, the CLI an admin user (its password in
``<data dir>/credentials/cli.json``, readable by this user only), and each strategy a user of its own
that the orchestrator adds when it deploys it (see desk.bus.auth). Passwords are new on every run.

Services run as child processes in their own session, so Ctrl-C reaches only ``desk up``, which then
stops them in reverse start order (orchestrator first, so strategies stop before the router; nats-server
last) and leaves nothing behind. Each child also gets SIGTERM if ``desk up`` itself dies.

Members reach the desk from their laptops: ``NATS_TLS_CERT`` and ``NATS_TLS_KEY`` turn TLS on for
the client port (every client then checks the certificate: ``NATS_TLS_CA``, by default the
certificate itself, for a self-signed one), and ``DESK_NATS_HOST`` (default 127.0.0.1) is the address
nats-server listens on, e.g. ``0.0.0.0``; listening beyond this machine without TLS is refused.
The services still connect through 127.0.0.1, so the certificate must name it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.client import Client

from desk.bus import auth, streams
from desk.bus.logging import get_logger
from desk.bus.process import die_with_parent, terminate, wait_until_serving
from desk.bus.servers import open_connection
from desk.bus.testing import NatsServer

log = get_logger("desk.up")

#: Start order; shutdown runs in reverse.
SERVICES = ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator", "dashboard")


#: What every child process gets from ``desk up``'s environment besides its own settings.
PASS_THROUGH = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TZ",
    "TMPDIR",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "VIRTUAL_ENV",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "COLUMNS",
)


def service_environment(name: str, env: dict[str, str]) -> dict[str, str]:
    """Only what service ``name`` reads: its settings (the fields of ``services.<name>.settings``, the
    bus's included) and :data:`PASS_THROUGH`. Broker keys reach only the gateway and the market-data
    feed, the operator password only the dashboard; nothing else of ``desk up``'s environment."""
    import importlib

    settings = importlib.import_module(f"services.{name}.settings").Settings
    wanted = {field.upper() for field in settings.model_fields} | set(PASS_THROUGH)
    return {key: value for key, value in env.items() if key in wanted}


def venue_environment(env: Mapping[str, str], feed: str | None = None) -> tuple[dict[str, str], list[str]]:
    """One switch: ``BROKER=alpaca`` implies ``MD_FEED=alpaca`` and ``ROUTER_VENUE=alpaca``.

    ``BROKER`` (default sim) names the venue; the market-data feed is ``feed`` (``desk up --feed``),
    else ``MD_FEED``, else the broker's own (alpaca for alpaca, synthetic for sim); the router's venue
    is ``ROUTER_VENUE``, else the broker. Returns those three settings and one warning per mismatch
    the user set on purpose (allowed, but said loudly): an Alpaca account trading on another feed's
    prices, or orders routed to a venue no gateway of this desk serves."""
    broker = env.get("BROKER") or "sim"
    chosen_feed = feed or env.get("MD_FEED") or ("alpaca" if broker == "alpaca" else "synthetic")
    venue = env.get("ROUTER_VENUE") or broker
    warnings = []
    if broker == "alpaca" and chosen_feed != "alpaca":
        how = "--feed" if feed else "MD_FEED"
        warnings.append(
            f"BROKER=alpaca with {how}={chosen_feed}: strategies see {chosen_feed} prices while Alpaca fills at real "
            "ones, and no orders are crossed inside the desk (crosses are priced only from the Alpaca feed). "
            "Unset MD_FEED (BROKER=alpaca implies MD_FEED=alpaca) unless this is what you want."
        )
    if venue != broker:
        warnings.append(
            f"ROUTER_VENUE={venue} with BROKER={broker}: the router sends orders to desk.broker.{venue}.orders, "
            f"which this desk's {broker} gateway does not serve; they wait there. Unset ROUTER_VENUE "
            "(it follows BROKER) unless this is what you want."
        )
    return {"BROKER": broker, "MD_FEED": chosen_feed, "ROUTER_VENUE": venue}, warnings


def cli_command(port: int, credentials_file: Path, env: Mapping[str, str], cwd: Path) -> str:
    """The ``desk`` invocation that reaches this desk from ``cwd`` with ``env`` (what ``desk up``'s
    banner suggests): ``--nats-url`` when the CLI would not find port ``port`` by itself (NATS_URL, else
    nats://127.0.0.1:4222), ``--credentials`` when it would not find ``credentials_file`` (DESK_CREDENTIALS,
    else var/credentials/cli.json under the current directory)."""
    import shlex

    parts = ["desk"]
    url = f"nats://127.0.0.1:{port}"
    if (env.get("NATS_URL") or "nats://127.0.0.1:4222").rstrip("/") != url:
        parts += ["--nats-url", url]
    default = Path(env.get("DESK_CREDENTIALS") or "var/credentials/cli.json")
    found = default if default.is_absolute() else cwd / default
    if found.resolve() != credentials_file.resolve():
        shown = credentials_file.resolve()
        with contextlib.suppress(ValueError):
            shown = shown.relative_to(cwd.resolve())
        parts += ["--credentials", str(shown)]
    return " ".join(shlex.quote(part) for part in parts)


@dataclass
class ServiceProcess:
    name: str
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    started_at: float = 0.0


@dataclass
class EmbeddedDesk:
    """Runs the whole desk until ``stop`` is set."""

    data_dir: Path
    strategies_dir: Path
    port: int = 4222
    extra_env: dict[str, str] = field(default_factory=dict)
    deploy_strategies: bool = True
    max_restarts: int = 5
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    server: NatsServer | None = None
    dashboard_url: str = ""
    confinement: str = ""  # what confines strategies (the orchestrator says, once it is up)
    services: dict[str, ServiceProcess] = field(default_factory=dict)

    def _setting(self, name: str) -> str:
        return self.extra_env.get(name) or os.environ.get(name) or ""

    @property
    def listen_host(self) -> str:
        return self._setting("DESK_NATS_HOST") or "127.0.0.1"

    @property
    def tls(self) -> tuple[str, str, str] | None:
        """(certificate, key, CA) files when TLS is on (NATS_TLS_CERT and NATS_TLS_KEY set)."""
        cert, key = self._setting("NATS_TLS_CERT"), self._setting("NATS_TLS_KEY")
        if not cert or not key:
            return None
        return (
            str(Path(cert).resolve()),
            str(Path(key).resolve()),
            str(Path(self._setting("NATS_TLS_CA") or cert).resolve()),
        )

    @property
    def local_url(self) -> str:
        """How this machine's services reach nats-server (loopback, whatever it listens on)."""
        return f"nats://127.0.0.1:{self.server.port if self.server else self.port}"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    def _env(self, url: str) -> dict[str, str]:
        root = Path(__file__).resolve().parents[2]
        env = dict(os.environ)
        env.update(
            NATS_URL=url,
            PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")])),
            PYTHONUNBUFFERED="1",
            LOG_FORMAT="json",
            LEDGER_DB_PATH=str(self.data_dir / "ledger.db"),
            ORCH_STRATEGIES_DIR=str(self.strategies_dir),
            ORCH_LOG_DIR=str(self.log_dir / "strategies"),
            ORCH_RUNTIME="process",
            ORCH_AUTODEPLOY="true" if self.deploy_strategies else "false",
            ORCH_NATS_AUTH_FILE=str(self.nats_dir / "auth.conf"),
            ORCH_NATS_BASE_USERS=str(self.nats_dir / "base-users.json"),
            ORCH_NATS_PID_FILE=str(self.nats_dir / "nats.pid"),
            ORCH_NATS_MEMBERS_FILE=str(self.members_file),
            ORCH_CODE_DIR=str(self.data_dir / "deployed"),
        )
        env.update(venue_environment(env)[0])  # BROKER=alpaca implies MD_FEED and ROUTER_VENUE alpaca
        env.setdefault("DASHBOARD_HOST", "127.0.0.1")
        env.setdefault("DASHBOARD_PORT", "8080")
        env.update(self.extra_env)
        if self.tls is not None:
            env["NATS_TLS_CA"] = self.tls[2]
        return env

    @property
    def nats_dir(self) -> Path:
        return self.data_dir / "nats"

    @property
    def members_file(self) -> Path:
        """Members' logins (bcrypt hashes; ``desk member add``): kept across runs, unlike the others."""
        return self.nats_dir / "members.json"

    @property
    def credentials_file(self) -> Path:
        """The CLI's NATS credentials for this desk (``desk`` finds it at var/credentials/cli.json)."""
        return self.data_dir / "credentials" / "cli.json"

    def _make_identities(self) -> dict[str, str]:
        """Fresh NATS users for this run: one per service and one admin (for the CLI), stored hashed in
        the users file the server includes; strategies' users are added by the orchestrator.
        Returns the plain passwords by user."""
        import json

        passwords = {auth.service_user(name): auth.new_password() for name in SERVICES}
        passwords[auth.ADMIN_USER] = auth.new_password()
        base = [auth.service_entry(name, auth.hash_password(passwords[auth.service_user(name)])) for name in SERVICES]
        base.append(auth.user_entry(auth.ADMIN_USER, auth.hash_password(passwords[auth.ADMIN_USER])))
        auth.write_private(self.nats_dir / "base-users.json", json.dumps(base))
        members = [auth.member_entry(m, h) for m, h in sorted(auth.read_members(self.members_file).items())]
        auth.write_private(self.nats_dir / "auth.conf", auth.render_users(base + members))
        tls = ""
        if self.tls is not None:
            cert, key, _ = self.tls
            tls = f"tls {{\n  cert_file: {json.dumps(cert)}\n  key_file: {json.dumps(key)}\n  timeout: 5\n}}\n"
        auth.write_private(
            self.nats_dir / "nats.conf", f'pid_file: "{self.nats_dir / "nats.pid"}"\ninclude "auth.conf"\n' + tls
        )
        auth.write_private(
            self.credentials_file, json.dumps({"user": auth.ADMIN_USER, "password": passwords[auth.ADMIN_USER]})
        )
        return passwords

    async def run(self) -> int:
        """Start everything, supervise until ``stop``, shut down cleanly. Returns an exit code."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.listen_host not in ("127.0.0.1", "localhost", "::1") and self.tls is None:
            log.error(
                "desk.exposed_without_tls",
                host=self.listen_host,
                hint="set NATS_TLS_CERT and NATS_TLS_KEY to expose the desk (README: Members)",
            )
            return 2
        passwords = await asyncio.to_thread(self._make_identities)
        self.server = NatsServer(
            store_dir=self.nats_dir,
            port=self.port,
            log_file=self.log_dir / "nats-server.log",
            config_file=self.nats_dir / "nats.conf",
            host=self.listen_host,
        )
        try:
            await asyncio.to_thread(self.server.start)
        except RuntimeError as exc:
            log.error("desk.nats_failed", error=str(exc), hint=f"is port {self.port} taken? try --port")
            return 1
        code = 0
        try:
            nc = await open_connection(
                self.local_url,
                forever=True,
                tls_ca=self.tls[2] if self.tls else None,
                user=auth.ADMIN_USER,
                password=passwords[auth.ADMIN_USER],
            )
            try:
                for done in await streams.provision(nc.jetstream(), replicas=1):  # one server: one copy
                    if done.action != "unchanged":
                        log.info("desk.provisioned", kind=done.kind, name=done.name, action=done.action)
                env = self._env(self.local_url)
                for name in SERVICES:
                    user = auth.service_user(name)
                    service_env = dict(service_environment(name, env), NATS_USER=user, NATS_PASSWORD=passwords[user])
                    self.services[name] = ServiceProcess(name, service_env, self.log_dir / f"{name}.log")
                    await self._spawn(self.services[name])
                    if not await self._wait_ready(nc, name, timeout=30):
                        if self.stop.is_set():  # Ctrl-C during start-up: a clean stop, not a failure
                            log.info("desk.start_interrupted", waiting_for=name)
                            return 0
                        log.error("desk.service_not_ready", service=name, log=str(self.services[name].log_path))
                        self._print_tail(self.services[name].log_path)
                        return 1
                    log.info("desk.service_ready", service=name, pid=self.services[name].process.pid)  # type: ignore[union-attr]
                self.dashboard_url = await self._metadata(nc, "dashboard", "url", "")
                self.confinement = await self._metadata(nc, "orchestrator", "confinement", "unknown")
                if self.confinement.startswith("none"):
                    log.error(
                        "desk.strategies_unconfined",
                        confinement=self.confinement,
                        hint="install bubblewrap (apt-get install bubblewrap); README: Security",
                    )
                self.ready.set()
                log.info("desk.up", nats=self.server.url, tls=self.tls is not None, data_dir=str(self.data_dir))
                code = await self._supervise()
            finally:
                await nc.close()
        finally:
            await self._shutdown()
        return code

    @staticmethod
    async def _metadata(nc: Client, service: str, key: str, default: str) -> str:
        """One value of a service's micro INFO metadata: the dashboard's real address (it may have
        picked its port), what confines the orchestrator's strategies."""
        import json

        try:
            info = json.loads((await nc.request(f"$SRV.INFO.{service}", b"", timeout=5)).data)
            return str(info.get("metadata", {}).get(key, default))
        except (nats.errors.Error, ValueError):
            return default

    async def _spawn(self, svc: ServiceProcess) -> None:
        handle = svc.log_path.open("ab")
        try:
            svc.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                f"services.{svc.name}",
                env=svc.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=handle,
                stderr=handle,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            handle.close()
        svc.started_at = time.monotonic()

    async def _wait_ready(self, nc: Client, name: str, timeout: float) -> bool:
        """Ready when the service answers its NATS micro PING (false if it exits, a stop is asked, or
        it times out)."""
        svc = self.services[name]

        def give_up() -> bool:
            return self.stop.is_set() or (svc.process is not None and svc.process.returncode is not None)

        return await wait_until_serving(nc, name, timeout, give_up)

    async def _supervise(self) -> int:
        """Wait for ``stop`` or a service exit; restart a crashed service with backoff."""
        stop_wait = asyncio.create_task(self.stop.wait())
        try:
            while not self.stop.is_set():
                waits = {
                    asyncio.create_task(s.process.wait(), name=s.name): s  # type: ignore[union-attr]
                    for s in self.services.values()
                }
                done, _ = await asyncio.wait({stop_wait, *waits}, return_when=asyncio.FIRST_COMPLETED)
                for task in waits:
                    task.cancel()
                if stop_wait in done:
                    return 0
                for task in done:
                    svc = waits[task]
                    code = svc.process.returncode if svc.process else None
                    log.error("desk.service_exited", service=svc.name, exit_code=code, log=str(svc.log_path))
                    self._print_tail(svc.log_path)
                    if svc.restarts >= self.max_restarts:
                        log.error("desk.giving_up", service=svc.name, restarts=svc.restarts)
                        return 1
                    delay = min(2**svc.restarts, 30)
                    svc.restarts += 1
                    log.warning("desk.service_restarting", service=svc.name, delay_s=delay, attempt=svc.restarts)
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(asyncio.shield(stop_wait), delay)
                    if self.stop.is_set():
                        return 0
                    await self._spawn(svc)
            return 0
        finally:
            stop_wait.cancel()

    async def _shutdown(self) -> None:
        for name in reversed(SERVICES):
            svc = self.services.get(name)
            if svc is None or svc.process is None or svc.process.returncode is not None:
                continue
            if await terminate(svc.process, 20):
                log.warning("desk.service_killed", service=name, reason="did not stop within 20 s")
            log.info("desk.service_stopped", service=name, exit_code=svc.process.returncode)
        if self.server is not None:
            await asyncio.to_thread(self.server.stop)
        log.info("desk.down")

    @staticmethod
    def _print_tail(path: Path, lines: int = 15) -> None:
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            for line in tail:
                print(f"  | {line}", file=sys.stderr)
