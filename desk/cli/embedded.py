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

``desk up --cluster 3`` runs three nats-servers clustered on loopback instead of one (docs/cluster.md):
servers ``n1``..``n3`` on client ports ``--port``, ``--port``+1, ``--port``+2 (routes on free ports of
127.0.0.1, cluster name ``desk``), each with its JetStream store in ``<data dir>/nats/n<i>/``, all
including the same users file; every stream and bucket is provisioned R3 once the JetStream meta leader
is elected, and every service and strategy is given the three servers as NATS_URL. The orchestrator
reloads every node when it adds a user (the pid file lists one pid per node).
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
from desk.bus.testing import NatsServer, free_ports

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


def validate_cluster(size: int) -> str | None:
    """Why ``desk up --cluster size`` cannot run (None when it can): 1 (one server), 3 or 5 (JetStream
    needs a majority of its nodes, so an even count adds no fault tolerance; a stream has at most 5
    replicas, and every stream gets one per node)."""
    if size == 1 or size in (3, 5):  # a stream has at most 5 replicas: one per node
        return None
    return f"--cluster {size}: give 1 (one nats-server), 3 or 5 (an odd number of nodes, at most 5 replicas)"


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


def cli_command(port: int | str, credentials_file: Path, env: Mapping[str, str], cwd: Path) -> str:
    """The ``desk`` invocation that reaches this desk from ``cwd`` with ``env`` (what ``desk up``'s
    banner suggests): ``--nats-url`` when the CLI would not find port ``port`` (or the server list
    ``port``, a cluster's comma-separated URLs) by itself (NATS_URL, else nats://127.0.0.1:4222),
    ``--credentials`` when it would not find ``credentials_file`` (DESK_CREDENTIALS, else
    var/credentials/cli.json under the current directory)."""
    import shlex

    parts = ["desk"]
    url = port if isinstance(port, str) else f"nats://127.0.0.1:{port}"
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
    cluster: int = 1  # nats-servers: 1, or an odd number >= 3 clustered on loopback (validate_cluster)
    extra_env: dict[str, str] = field(default_factory=dict)
    deploy_strategies: bool = True
    max_restarts: int = 5
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    server: NatsServer | None = None  # the first (or only) nats-server
    nodes: list[NatsServer] = field(default_factory=list)  # every nats-server (one without --cluster)
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
    def client_ports(self) -> list[int]:
        """The nats-servers' client ports: ``port`` and, with a cluster, the next ones."""
        return [self.port + i for i in range(self.cluster)]

    @property
    def local_url(self) -> str:
        """How this machine's services reach nats-server (loopback, whatever it listens on): every
        node, comma-separated, with a cluster."""
        if self.server and self.cluster == 1:
            return f"nats://127.0.0.1:{self.server.port}"
        return ",".join(f"nats://127.0.0.1:{port}" for port in self.client_ports)

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
        if self.cluster == 1:  # a cluster's node configs are written with their routes (_make_nodes)
            auth.write_private(
                self.nats_dir / "nats.conf",
                f'pid_file: "{self.nats_dir / "nats.pid"}"\ninclude "auth.conf"\n' + self._tls_block(),
            )
        auth.write_private(
            self.credentials_file, json.dumps({"user": auth.ADMIN_USER, "password": passwords[auth.ADMIN_USER]})
        )
        return passwords

    @property
    def node_names(self) -> list[str]:
        return [f"n{i + 1}" for i in range(self.cluster)]

    def _tls_block(self) -> str:
        import json

        if self.tls is None:
            return ""
        cert, key, _ = self.tls
        return f"tls {{\n  cert_file: {json.dumps(cert)}\n  key_file: {json.dumps(key)}\n  timeout: 5\n}}\n"

    def _node_config(self, name: str, route_port: int, routes: list[str]) -> Path:
        """Node ``name``'s config: its name, cluster block and the shared users file (the JetStream store
        is NatsServer's ``-sd`` flag). In the file, not as flags: a reload (a new user) re-reads the
        file, and nats-server refuses a reload that loses the cluster's ``server_name``. ``no_advertise``:
        clients are given every node already; a client told of the others (nats-py adds them to its pool
        anew on every INFO) never gives up on a login that every node refuses."""
        import json

        config = self.nats_dir / f"{name}.conf"
        auth.write_private(
            config,
            f"server_name: {name}\n"
            f'pid_file: "{self.nats_dir / f"{name}.pid"}"\n'
            f'cluster {{\n  name: desk\n  listen: "127.0.0.1:{route_port}"\n  routes: {json.dumps(routes)}\n'
            "  no_advertise: true\n}\n"
            'include "auth.conf"\n' + self._tls_block(),
        )
        return config

    def _make_nodes(self) -> list[NatsServer]:
        """The nats-server(s) of this desk, not started: one on ``port`` with its store in the nats
        folder, or a cluster's nodes n1..nN on ``port``, ``port``+1... (routes on free loopback ports,
        chosen anew each run: the nodes know each other by name), each its own store n<i>/."""
        if self.cluster == 1:
            config = self.nats_dir / "nats.conf"
            log_file = self.log_dir / "nats-server.log"
            return [NatsServer(self.nats_dir, self.port, self.listen_host, config, log_file=log_file)]
        route_ports = free_ports(self.cluster)
        routes = [f"nats://127.0.0.1:{p}" for p in route_ports]
        return [
            NatsServer(
                store_dir=self.nats_dir / name,
                port=port,
                host=self.listen_host,
                config_file=self._node_config(name, route, routes),
                log_file=self.log_dir / f"nats-server-{name}.log",
            )
            for name, port, route in zip(self.node_names, self.client_ports, route_ports, strict=True)
        ]

    async def _start_nats(self) -> bool:
        """Start the nats-server(s); with a cluster, write every node's pid into the pid file the
        orchestrator signals (one per line: it reloads every node)."""
        self.nodes = self._make_nodes()
        self.server = self.nodes[0]
        try:
            for node in self.nodes:  # from one thread: a server's parent-death signal is tied to it
                await asyncio.to_thread(node.start)
        except RuntimeError as exc:
            log.error("desk.nats_failed", error=str(exc), hint=f"is port {node.requested_port} taken? try --port")
            return False
        if self.cluster > 1:
            pids = [str(node.process.pid) for node in self.nodes if node.process is not None]
            auth.write_private(self.nats_dir / "nats.pid", "\n".join(pids) + "\n")
        return True

    async def _provision(self, nc: Client) -> None:
        """Every stream and bucket with one copy per server (R1 alone, R3 on three nodes), once the
        cluster has elected its JetStream meta leader (bounded: elections and R3 creation retried)."""
        from desk.bus.retry import retrying

        js = nc.jetstream()
        if self.cluster > 1:
            await retrying(js.account_info, what="the JetStream meta leader", deadline=120, stop=self.stop)
        provisioned = await retrying(
            lambda: streams.provision(js, replicas=self.cluster), what="provision", deadline=120, stop=self.stop
        )
        for done in provisioned:
            if done.action != "unchanged":
                log.info("desk.provisioned", kind=done.kind, name=done.name, action=done.action, replicas=done.replicas)

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
        if not await self._start_nats():
            await self._shutdown()
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
                await self._provision(nc)
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
                log.info("desk.up", nats=self.local_url, tls=self.tls is not None, data_dir=str(self.data_dir))
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
        for node in reversed(self.nodes):
            await asyncio.to_thread(node.stop)
        log.info("desk.down")

    @staticmethod
    def _print_tail(path: Path, lines: int = 15) -> None:
        with contextlib.suppress(OSError):
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            for line in tail:
                print(f"  | {line}", file=sys.stderr)
