"""The ``docker`` runtime: each strategy in its own hardened container (Docker SDK for Python).

Every container:
- runs the strategy image (``strategy_sdk`` + ``desk_client``, nats-py and protobuf only) as a
  non-root user, with a read-only root filesystem and a small tmpfs ``/tmp``, all capabilities
  dropped, ``no-new-privileges``, and CPU, memory (no swap) and pids limits from the strategy's
  ``config.json`` ``resources`` or the orchestrator's defaults;
- mounts only the strategy's own folder, read-only, at ``/strategy``;
- gets the strategy's ``config.json`` env plus the desk's variables, never the orchestrator's
  environment (so never broker keys);
- sits on a network of its own, ``quantdesk-s-<id>``: internal (no route out) and without a gateway
  address on the host (``inhibit_ipv4``), which only NATS also joins (as ``nats``). So a strategy
  reaches NATS and nothing else: not the host's ports, not another strategy, not the internet;
- carries labels ``quantdesk.strategy`` / ``quantdesk.member`` so ``desk status`` and ``docker ps``
  agree (``docker ps --filter label=quantdesk.strategy``).

The Docker SDK is synchronous: every call runs in a worker thread so the event loop never waits.
A container is kept after it exits (for its logs and exit state) and replaced by the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import socket
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from desk.bus.errors import DeskError
from desk.bus.logging import get_logger
from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.base import ExitInfo, LogSlice, RunHandle, last_error_line

log = get_logger("orchestrator")

LABEL_STRATEGY = "quantdesk.strategy"
LABEL_MEMBER = "quantdesk.member"
LABEL_MANAGED = "quantdesk.managed-by"
CONTAINER_PREFIX = "quantdesk-strategy-"
NETWORK_PREFIX = "quantdesk-s-"
NATS_ALIAS = "nats"
RING_LINES = 1000
_SIZE_RE = re.compile(r"^(\d+)([kmg]?)$")


def parse_memory(value: str) -> int:
    """ "256m" -> bytes."""
    match = _SIZE_RE.match(value.strip().lower())
    if not match:
        raise ValueError(f"memory {value!r} must look like 256m or 1g")
    number, unit = int(match.group(1)), match.group(2)
    return number * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit]


class DockerRuntime:
    """Runs strategies as containers through a ``docker.DockerClient``."""

    def __init__(
        self,
        *,
        client: Any,
        image: str,
        host_strategies_dir: Path | None,
        log_dir: Path,
        strategies_dir: Path = Path("/strategies"),
        nats_url: str = f"nats://{NATS_ALIAS}:4222",
        nats_container: str = "",
        default_memory: str = "256m",
        default_cpus: str = "0.5",
        default_pids: int = 128,
        tmpfs_size: str = "16m",
        user: str = "10001:10001",
    ) -> None:
        self.client = client
        self.image = image
        self._host_strategies_dir = host_strategies_dir
        self.strategies_dir = strategies_dir
        self.log_dir = log_dir
        self.nats_url = nats_url
        self.nats_container = nats_container
        self.default_memory = default_memory
        self.default_cpus = default_cpus
        self.default_pids = default_pids
        self.tmpfs_size = tmpfs_size
        self.user = user
        self._rings: dict[str, collections.deque[str]] = {}
        self._limits: dict[str, str] = {}

    @property
    def name(self) -> str:
        return "docker"

    @property
    def confinement(self) -> str:
        return "docker container (non-root, read-only root, no capabilities, own network)"

    # -- configuration -------------------------------------------------------------------------

    @property
    def host_strategies_dir(self) -> Path:
        """The strategies folder as the Docker host sees it (bind mounts are made by the engine).

        Configured, or read from this orchestrator's own container: the source of its mount of
        ``strategies_dir``; outside a container, ``strategies_dir`` itself."""
        if self._host_strategies_dir is None:
            self._host_strategies_dir = self._find_host_strategies_dir()
        return self._host_strategies_dir

    def _find_host_strategies_dir(self) -> Path:
        try:
            me = self.client.containers.get(socket.gethostname())
        except Exception:  # noqa: BLE001 - not in a container: the path is the host's own
            return self.strategies_dir.resolve()
        target = str(self.strategies_dir.resolve())
        for mount in me.attrs.get("Mounts", []):
            if mount.get("Destination") == target:
                return Path(mount["Source"])
        raise RuntimeError(f"{target} is not a mount of this container: set ORCH_DOCKER_HOST_STRATEGIES_DIR")

    def environment(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(spec.env)
        env.update(
            NATS_URL=self.nats_url,
            DESK_STRATEGY_ID=spec.strategy_id,
            DESK_MEMBER_ID=spec.member_id,
            DESK_SYMBOLS=",".join(spec.symbols),
            PYTHONUNBUFFERED="1",
            PYTHONDONTWRITEBYTECODE="1",
            HOME="/tmp",
        )
        env.update(secrets or {})
        return env

    def container_options(
        self, spec: strategy_pb2.StrategySpec, network: str, secrets: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Everything ``containers.run`` gets for ``spec`` (pure: unit-tested)."""
        memory = spec.resources.memory or self.default_memory
        cpus = Decimal(spec.resources.cpus or self.default_cpus)
        pids = spec.resources.pids or self.default_pids
        folder = Path(spec.path).name or spec.strategy_id
        return {
            "image": self.image,
            "name": CONTAINER_PREFIX + spec.strategy_id,
            "detach": True,
            "user": self.user,
            "read_only": True,
            "tmpfs": {"/tmp": f"rw,noexec,nosuid,size={self.tmpfs_size},mode=1777"},
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges:true"],
            "mem_limit": parse_memory(memory),
            "memswap_limit": parse_memory(memory),  # the same: no swap beyond the limit
            "nano_cpus": int(cpus * 1_000_000_000),
            "pids_limit": pids,
            "network": network,
            "environment": self.environment(spec, secrets),
            "volumes": {str(self.host_strategies_dir / folder): {"bind": "/strategy", "mode": "ro"}},
            "labels": {LABEL_STRATEGY: spec.strategy_id, LABEL_MEMBER: spec.member_id, LABEL_MANAGED: "orchestrator"},
        }

    # -- networks ------------------------------------------------------------------------------

    def _nats_container(self) -> Any:
        """The NATS container: by name when configured, else the compose service ``nats`` of the
        compose project this orchestrator runs in (found from its own container's labels)."""
        if self.nats_container:
            return self.client.containers.get(self.nats_container)
        me = self.client.containers.get(socket.gethostname())
        project = me.labels.get("com.docker.compose.project")
        if not project:
            raise RuntimeError(
                "ORCH_DOCKER_NATS_CONTAINER is not set and this orchestrator is not in a compose project"
            )
        found = self.client.containers.list(
            filters={"label": [f"com.docker.compose.project={project}", "com.docker.compose.service=nats"]}
        )
        if not found:
            raise RuntimeError(f"no running nats container in compose project {project!r}")
        return found[0]

    def reload_nats(self) -> None:
        """Make the NATS container re-read its users (SIGHUP through the engine)."""
        self._nats_container().kill(signal="SIGHUP")

    def _ensure_network(self, strategy_id: str) -> str:
        name = NETWORK_PREFIX + strategy_id
        networks = self.client.networks.list(names=[name])
        network = next((n for n in networks if n.name == name), None)
        if network is None:
            network = self.client.networks.create(
                name,
                driver="bridge",
                internal=True,
                labels={LABEL_STRATEGY: strategy_id, LABEL_MANAGED: "orchestrator"},
                options={"com.docker.network.bridge.inhibit_ipv4": "true"},
            )
        nats = self._nats_container()
        network.reload()
        attached = {c.id for c in network.containers}
        if nats.id not in attached:
            network.connect(nats, aliases=[NATS_ALIAS])
        return str(name)

    def _remove_network(self, strategy_id: str) -> None:
        name = NETWORK_PREFIX + strategy_id
        for network in self.client.networks.list(names=[name]):
            if network.name != name:
                continue
            network.reload()
            for container in network.containers:
                with contextlib.suppress(Exception):
                    network.disconnect(container, force=True)
            with contextlib.suppress(Exception):
                network.remove()

    # -- lifecycle -----------------------------------------------------------------------------

    def _start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None) -> RunHandle:
        name = CONTAINER_PREFIX + spec.strategy_id
        with contextlib.suppress(Exception):  # the previous run's container, kept for its logs
            self.client.containers.get(name).remove(force=True)
        network = self._ensure_network(spec.strategy_id)
        options = self.container_options(spec, network, secrets)
        container = self.client.containers.run(**options)
        self._limits[container.id] = spec.resources.memory or self.default_memory
        return RunHandle(strategy_id=spec.strategy_id, container_id=container.id, started_ns=time.time_ns())

    async def start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> RunHandle:
        handle = await asyncio.to_thread(self._start, spec, secrets)
        banner = f"--- started container {handle.container_id[:12]} at {_now()} ---"
        self._append(spec.strategy_id, [banner])
        return handle

    def _wait(self, handle: RunHandle) -> ExitInfo:
        container = self.client.containers.get(handle.container_id)
        result = container.wait()
        container.reload()
        state = container.attrs.get("State", {})
        code = int(result.get("StatusCode", state.get("ExitCode", -1)))
        lines = _lines(container.logs(stdout=True, stderr=True, tail=RING_LINES))
        stderr = _lines(container.logs(stdout=False, stderr=True, tail=200))
        if state.get("OOMKilled"):
            limit = self._limits.get(handle.container_id, "?")
            reason = f"OOM-killed: the container went past its memory limit of {limit}"
            last_error = reason
        else:
            reason = f"exited with code {code}"
            last_error = "" if code == 0 else last_error_line(stderr)
        footer = f"--- container {handle.container_id[:12]} {reason} at {_now()} ---"
        self._append(handle.strategy_id, [*lines, footer], ring_too=False)
        self._ring(handle.strategy_id).extend([*lines, footer])
        return ExitInfo(exit_code=code, reason=reason, last_error=last_error)

    async def wait(self, handle: RunHandle) -> ExitInfo:
        return await asyncio.to_thread(self._wait, handle)

    def _stop(self, handle: RunHandle, timeout: float) -> None:
        with contextlib.suppress(Exception):
            self.client.containers.get(handle.container_id).stop(timeout=max(1, int(timeout)))

    async def stop(self, handle: RunHandle, timeout: float) -> None:
        await asyncio.to_thread(self._stop, handle, timeout)

    def _logs(self, strategy_id: str, tail: int) -> list[str]:
        try:
            container = self.client.containers.get(CONTAINER_PREFIX + strategy_id)
        except Exception:  # noqa: BLE001 - no container: the log file has what was kept
            path = self.log_dir / f"{strategy_id}.log"
            if not path.is_file():
                return list(self._ring(strategy_id))[-tail:]
            with path.open(encoding="utf-8", errors="replace") as handle:
                return [line.rstrip("\n") for line in collections.deque(handle, maxlen=tail)]
        return _lines(container.logs(stdout=True, stderr=True, tail=tail))

    async def logs(self, strategy_id: str, tail: int) -> list[str]:
        return await asyncio.to_thread(self._logs, strategy_id, tail)

    @property
    def log_epoch(self) -> str:
        return ""

    async def follow_logs(self, strategy_id: str, after: int | None, tail: int) -> LogSlice:
        """A container's output reaches the desk's ring only when it ends: no cursor to follow here."""
        if after is None:
            return LogSlice(lines=await self.logs(strategy_id, tail), next=0)
        raise DeskError(
            "NOT_SUPPORTED",
            f"desk logs -f follows strategies of the process runtime (desk up); under compose: "
            f"docker logs -f {CONTAINER_PREFIX}{strategy_id}",
            status=501,
        )

    def _cleanup(self) -> None:
        """Containers and networks a previous orchestrator left behind (it crashed, say)."""
        for container in self.client.containers.list(all=True, filters={"label": LABEL_STRATEGY}):
            log.info("strategy.container_removed", container=container.name, reason="left over from a previous run")
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": LABEL_STRATEGY}):
            self._remove_network(network.name[len(NETWORK_PREFIX) :])

    async def cleanup(self) -> None:
        await asyncio.to_thread(self._cleanup)

    # -- logs kept on disk ---------------------------------------------------------------------

    def _ring(self, strategy_id: str) -> collections.deque[str]:
        return self._rings.setdefault(strategy_id, collections.deque(maxlen=RING_LINES))

    def _append(self, strategy_id: str, lines: list[str], ring_too: bool = True) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{strategy_id}.log").open("a", encoding="utf-8") as handle:
            handle.writelines(line + "\n" for line in lines)
        if ring_too:
            self._ring(strategy_id).extend(lines)


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "replace").splitlines()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
