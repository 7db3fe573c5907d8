"""The ``docker`` runtime: each strategy in its own hardened container (Docker SDK for Python).

Every container:
- runs the strategy image (``strategy_sdk`` + ``desk_client``, nats-py and protobuf only) as a
  non-root user, with a read-only root filesystem and a small tmpfs ``/tmp``, all capabilities
  dropped, ``no-new-privileges``, and CPU, memory (no swap) and pids limits from the strategy's
  ``config.json`` ``resources`` or the orchestrator's defaults;
- mounts only the strategy's own code, read-only, at ``/strategy``: its folder under the strategies
  folder (a bind mount), or, for a version uploaded with ``desk deploy ./folder``, a named volume of
  that version (:meth:`DockerRuntime.code_volume`);
- gets the strategy's ``config.json`` env plus the desk's variables, never the orchestrator's
  environment (so never broker keys);
- sits on a network of its own, ``quantdesk-s-<id>``: internal (no route out) and without a gateway
  address on the host (``inhibit_ipv4``), which only NATS also joins (as ``nats``; on a cluster every
  node, each under its own name: the ``quantdesk.nats`` label). So a strategy reaches NATS and nothing
  else: not the host's ports, not another strategy, not the internet;
- carries labels ``quantdesk.strategy`` / ``quantdesk.member`` so ``desk status`` and ``docker ps``
  agree (``docker ps --filter label=quantdesk.strategy``), and ``quantdesk.desk``: the orchestrator's
  compose project (as its networks and code volumes do). The cleanup of what a previous orchestrator
  left behind takes only its own desk's (every desk's outside compose).

**Uploaded versions.** The orchestrator keeps each uploaded version unpacked under ORCH_CODE_DIR
(``<id>/<n>/``, written from the checked upload by :mod:`services.orchestrator.uploads`). A spec whose
``path`` is such a folder runs from the volume ``quantdesk-code-<id>-v<n>-<digest>``: the folder packed
again as a tar of regular files only (owned by root, files 0644 and folders 0755: readable by the
strategy's user, writable by nobody), checked once more by ``uploads.read_tar`` (the only way member
code reaches a volume), and put into the volume by a container created (never started) from the
strategy image, with no network, then removed. The digest (of that tar) is in the name, so a volume
never holds another content than its name says; one found with other files (a fill that failed half
way) is made again. Volumes carry ``quantdesk.strategy``, ``quantdesk.code-version`` and
``quantdesk.code-sha256``; those of versions the orchestrator no longer keeps are removed when the
strategy next starts (``make clean-docker`` removes them all).

The Docker SDK is synchronous: every call runs in a worker thread so the event loop never waits.
A container is kept after it exits (for its logs and exit state) and replaced by the next start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import io
import os
import re
import socket
import tarfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from desk.bus.errors import DeskError
from desk.bus.logging import get_logger
from desk.v1 import strategy_pb2
from services.orchestrator import uploads
from services.orchestrator.runtimes.base import ExitInfo, LogSlice, RunHandle, last_error_line

log = get_logger("orchestrator")

LABEL_STRATEGY = "quantdesk.strategy"
LABEL_MEMBER = "quantdesk.member"
LABEL_MANAGED = "quantdesk.managed-by"
# On a NATS container: it is a node of the desk's NATS, and the value is the name strategy networks
# give it (compose.cluster.yaml: nats1, nats2, nats3). Without any, the compose service ``nats``.
LABEL_NATS = "quantdesk.nats"
# On a code volume (an uploaded version): which version, and the sha256 of the tar it was filled from.
LABEL_CODE_VERSION = "quantdesk.code-version"
LABEL_CODE_SHA = "quantdesk.code-sha256"
# On every container, network and volume the orchestrator makes: its compose project (its desk), so its
# cleanup leaves those of another desk on the same engine alone. Absent outside compose.
LABEL_DESK = "quantdesk.desk"
CODE_VOLUME_PREFIX = "quantdesk-code-"
CODE_MOUNT = "/strategy"
CONTAINER_PREFIX = "quantdesk-strategy-"
NETWORK_PREFIX = "quantdesk-s-"
NATS_ALIAS = "nats"
RING_LINES = 1000
_SIZE_RE = re.compile(r"^(\d+)([kmg]?)$")


def code_volume_name(strategy_id: str, version: int, sha256: str) -> str:
    """The volume of version ``version`` of an uploaded strategy whose code tar has ``sha256``."""
    return f"{CODE_VOLUME_PREFIX}{strategy_id}-v{version}-{sha256[:12]}"


def code_archive(folder: Path) -> bytes:
    """``folder`` (an unpacked uploaded version) as an uncompressed tar the same bytes every time:
    regular files and folders only, sorted, owned by root, files 0644, folders 0755, time 0. Anything
    else in it (a link, a device) is refused: the orchestrator never wrote one there."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for root, dirs, files in os.walk(folder, followlinks=False):
            dirs.sort()
            here = Path(root)
            for name in [*sorted(dirs), *sorted(files)]:
                path = here / name
                relative = path.relative_to(folder).as_posix()
                info = tarfile.TarInfo(relative)
                info.uid = info.gid = 0
                info.mtime = 0
                if path.is_symlink() or not (path.is_dir() or path.is_file()):
                    raise RuntimeError(f"{relative!r} in {folder} is not a regular file or folder")
                if path.is_dir():
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    archive.addfile(info)
                    continue
                content = path.read_bytes()
                info.size, info.mode = len(content), 0o644
                archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def archive_files(data: bytes, prefix: str = "") -> dict[str, bytes]:
    """The regular files of a tar (path -> content), ``prefix/`` taken off their names."""
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
        for member in archive.getmembers():
            if not member.isreg():
                continue
            name = member.name.removeprefix(prefix + "/") if prefix else member.name
            handle = archive.extractfile(member)
            files[name] = handle.read() if handle is not None else b""
    return files


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
        code_dir: Path | None = None,
        desk: str | None = None,
        site: str = "",
        leaf_auth_file: str = "",
    ) -> None:
        """``site``: this runtime runs the strategies of that site (services.orchestrator.sites) on its
        engine (``client``), on networks its leaf node (``nats_container``) joins; it runs uploaded
        versions only (a strategies folder is a folder of the desk's machine) and labels what it makes
        ``desk`` (the desk's label and the site). ``leaf_auth_file``: the leaf node's users file."""
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
        #: where the orchestrator unpacks uploaded versions (ORCH_CODE_DIR): <id>/<n>/
        self.code_dir = code_dir.resolve() if code_dir is not None else None
        self._desk: str | None = desk
        self.site = site
        self.leaf_auth_file = leaf_auth_file
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

    @property
    def desk(self) -> str:
        """The compose project of this orchestrator's container ("" outside one, or when the engine
        cannot say): the ``quantdesk.desk`` label of what it makes, and the scope of its cleanup."""
        if self._desk is None:
            try:
                me = self.client.containers.get(socket.gethostname())
                self._desk = str(me.labels.get("com.docker.compose.project") or "")
            except Exception:  # noqa: BLE001 - not in a container (or no engine yet): no scope
                self._desk = ""
        return self._desk

    def mine(self, labels: dict[str, str]) -> dict[str, str]:
        """``labels`` and this desk's label."""
        return {**labels, LABEL_DESK: self.desk} if self.desk else labels

    def scoped(self, *labels: str) -> list[str]:
        """A label filter matching ``labels`` on this desk's objects only (all, outside compose)."""
        return [*labels, f"{LABEL_DESK}={self.desk}"] if self.desk else list(labels)

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
        self,
        spec: strategy_pb2.StrategySpec,
        network: str,
        secrets: dict[str, str] | None = None,
        code_volume: str = "",
    ) -> dict[str, Any]:
        """Everything ``containers.run`` gets for ``spec`` (pure: unit-tested). ``code_volume``: the
        volume of an uploaded version, mounted at /strategy instead of the strategy's folder."""
        memory = spec.resources.memory or self.default_memory
        cpus = Decimal(spec.resources.cpus or self.default_cpus)
        pids = spec.resources.pids or self.default_pids
        source = code_volume or str(self.host_strategies_dir / (Path(spec.path).name or spec.strategy_id))
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
            "volumes": {source: {"bind": CODE_MOUNT, "mode": "ro"}},
            "labels": self.mine(
                {LABEL_STRATEGY: spec.strategy_id, LABEL_MEMBER: spec.member_id, LABEL_MANAGED: "orchestrator"}
            ),
        }

    # -- uploaded versions: code volumes -------------------------------------------------------

    def uploaded_version(self, spec: strategy_pb2.StrategySpec) -> int | None:
        """The version when ``spec`` runs an uploaded version (its path is ``<code dir>/<id>/<n>``)."""
        if self.code_dir is None or not spec.path:
            return None
        path = Path(spec.path).resolve()
        if path.parent.parent != self.code_dir or path.parent.name != spec.strategy_id or not path.name.isdigit():
            return None
        return int(path.name)

    def _code_volume(self, spec: strategy_pb2.StrategySpec) -> str:
        """The volume ``spec``'s uploaded version runs from, made when missing ("" for a folder)."""
        version = self.uploaded_version(spec)
        if version is None:
            return ""
        archive = code_archive(Path(spec.path))
        files = uploads.read_tar(archive, len(archive))  # what goes into a volume passes the upload checks
        sha256 = hashlib.sha256(archive).hexdigest()
        name = code_volume_name(spec.strategy_id, version, sha256)
        if any(v.name == name for v in self.client.volumes.list(filters={"name": name})):
            if self._through_volume(name) == files:
                self._prune_code_volumes(spec.strategy_id)
                return name
            log.warning("code.volume_mismatch", volume=name, reason="its files are not the version's: made again")
            self.client.volumes.get(name).remove(force=True)
        labels = self.mine(
            {
                LABEL_STRATEGY: spec.strategy_id,
                LABEL_CODE_VERSION: str(version),
                LABEL_CODE_SHA: sha256,
                LABEL_MANAGED: "orchestrator",
            }
        )
        self.client.volumes.create(name=name, driver="local", labels=labels)
        try:
            held = self._through_volume(name, archive)
            if held != files:
                raise RuntimeError(f"volume {name} holds {sorted(held)} after filling, not {sorted(files)}")
        except BaseException:
            with contextlib.suppress(Exception):
                self.client.volumes.get(name).remove(force=True)
            raise
        log.info("code.volume_made", volume=name, strategy_id=spec.strategy_id, version=version, files=len(files))
        self._prune_code_volumes(spec.strategy_id)
        return name

    def _through_volume(self, name: str, archive: bytes | None = None) -> dict[str, bytes]:
        """Through a container created (never started) with volume ``name`` at /strategy: put
        ``archive`` in it (when given), then read back the files it holds."""
        container = self.client.containers.create(
            self.image,
            volumes={name: {"bind": CODE_MOUNT, "mode": "rw"}},
            network_mode="none",
            labels=self.mine({LABEL_CODE_VERSION: name, LABEL_MANAGED: "orchestrator"}),
        )
        try:
            if archive is not None and not container.put_archive(CODE_MOUNT, archive):
                raise RuntimeError(f"the Docker engine did not put the code into volume {name}")
            stream, _ = container.get_archive(CODE_MOUNT)
            return archive_files(b"".join(stream), prefix=CODE_MOUNT.strip("/"))
        finally:
            with contextlib.suppress(Exception):
                container.remove(force=True)

    def _prune_code_volumes(self, strategy_id: str) -> None:
        """Remove ``strategy_id``'s code volumes of versions the orchestrator no longer keeps (one in use
        stays, for the next start to remove)."""
        if self.code_dir is None:
            return
        for volume in self.client.volumes.list(
            filters={"label": self.scoped(f"{LABEL_STRATEGY}={strategy_id}", LABEL_CODE_VERSION)}
        ):
            version = str((volume.attrs.get("Labels") or {}).get(LABEL_CODE_VERSION, ""))
            if version.isdigit() and (self.code_dir / strategy_id / version).is_dir():
                continue
            try:
                volume.remove()
            except Exception as exc:  # noqa: BLE001 - in use (a kept container): removed on a later start
                log.info("code.volume_kept", volume=volume.name, reason=repr(exc))
                continue
            log.info("code.volume_removed", volume=volume.name, reason="version no longer kept")

    # -- networks ------------------------------------------------------------------------------

    def _nats_containers(self, *, running: bool = True) -> list[tuple[Any, str]]:
        """The NATS containers and the name each has on a strategy's network: those named by
        ``ORCH_DOCKER_NATS_CONTAINER`` (comma-separated), else those of this orchestrator's compose
        project labelled ``quantdesk.nats`` (a cluster: every node), else its compose service ``nats``.
        ``running=False`` includes stopped ones (a node down is still joined to a new network)."""
        if self.nats_container:
            found = [
                self.client.containers.get(name.strip()) for name in self.nats_container.split(",") if name.strip()
            ]
            if running:
                found = [c for c in found if c.status == "running"]
            return [(c, c.labels.get(LABEL_NATS) or NATS_ALIAS) for c in found]
        me = self.client.containers.get(socket.gethostname())
        project = me.labels.get("com.docker.compose.project")
        if not project:
            raise RuntimeError(
                "ORCH_DOCKER_NATS_CONTAINER is not set and this orchestrator is not in a compose project"
            )
        in_project = f"com.docker.compose.project={project}"
        found = self.client.containers.list(all=not running, filters={"label": [in_project, LABEL_NATS]})
        if found:
            return sorted(((c, str(c.labels[LABEL_NATS])) for c in found), key=lambda pair: pair[1])
        found = self.client.containers.list(
            all=not running, filters={"label": [in_project, "com.docker.compose.service=nats"]}
        )
        if not found:
            raise RuntimeError(f"no running nats container in compose project {project!r}")
        return [(found[0], NATS_ALIAS)]

    def reload_nats(self) -> None:
        """Make every NATS container re-read its users (SIGHUP through the engine). A node that is not
        running is skipped (it reads the shared users file when it starts); a signal the engine refuses
        is logged and skipped; RuntimeError when no node could be signalled."""
        reloaded: list[str] = []
        for container, alias in self._nats_containers():
            try:
                container.kill(signal="SIGHUP")
            except Exception as exc:  # noqa: BLE001 - e.g. the node stopped since it was listed
                log.warning("nats.reload_skipped", container=container.name, alias=alias, error=repr(exc))
                continue
            reloaded.append(str(container.name))
        if not reloaded:
            raise RuntimeError("no running NATS container to reload")
        log.info("nats.reloaded", containers=reloaded)

    # -- a site's leaf node: its users --------------------------------------------------------

    def write_users(self, text: str, timeout: float = 15.0) -> None:
        """Put ``text`` as the leaf node's users file (``leaf_auth_file``, root-only) into its container
        through this site's engine, make it re-read it (SIGHUP) and wait, bounded, for its "Reloaded
        server configuration" line: the new users are then applied. RuntimeError when the leaf node
        is not running, reports a failed reload, or says nothing within ``timeout``."""
        try:
            found = self._nats_containers(running=False)
        except Exception as exc:  # noqa: BLE001 - no such container on that engine, or no engine
            raise RuntimeError(f"the leaf node of site {self.site} ({self.nats_container}): {exc}") from None
        leaf = found[0][0] if found else None
        if leaf is None or leaf.status != "running":
            raise RuntimeError(f"the leaf node of site {self.site} ({self.nats_container}) is not running")
        folder, _, filename = self.leaf_auth_file.rpartition("/")
        data = text.encode()
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            info = tarfile.TarInfo(filename)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o600, 0, 0, int(time.time())
            archive.addfile(info, io.BytesIO(data))
        if not leaf.put_archive(folder or "/", buffer.getvalue()):
            raise RuntimeError(f"the engine of site {self.site} did not write {self.leaf_auth_file}")
        since = int(time.time()) - 1
        before = reload_counts(leaf.logs(since=since))
        leaf.kill(signal="SIGHUP")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done, failed = reload_counts(leaf.logs(since=since))
            if failed > before[1]:
                raise RuntimeError(f"the leaf node of site {self.site} refused its new users file (see its log)")
            if done > before[0]:
                log.info("site.users_applied", site=self.site, leaf=leaf.name)
                return
            time.sleep(0.1)
        raise RuntimeError(f"the leaf node of site {self.site} did not reload its users within {timeout:g} s")

    def _ensure_network(self, strategy_id: str) -> str:
        name = NETWORK_PREFIX + strategy_id
        networks = self.client.networks.list(names=[name])
        network = next((n for n in networks if n.name == name), None)
        if network is None:
            network = self.client.networks.create(
                name,
                driver="bridge",
                internal=True,
                labels=self.mine({LABEL_STRATEGY: strategy_id, LABEL_MANAGED: "orchestrator"}),
                options={"com.docker.network.bridge.inhibit_ipv4": "true"},
            )
        network.reload()
        attached = set(network.attrs.get("Containers") or {})  # ids of the running ones
        for nats, alias in self._nats_containers(running=False):
            joined = nats.attrs.get("NetworkSettings", {}).get("Networks") or {}
            if nats.id not in attached and name not in joined:  # a stopped node keeps its networks
                network.connect(nats, aliases=[alias])
        return str(name)

    def _remove_network(self, strategy_id: str) -> None:
        name = NETWORK_PREFIX + strategy_id
        for network in self.client.networks.list(names=[name]):
            if network.name != name:
                continue
            network.reload()
            # by id: an endpoint can outlive its container (``network.containers`` then raises NotFound)
            for container_id in network.attrs.get("Containers") or {}:
                with contextlib.suppress(Exception):
                    network.disconnect(container_id, force=True)
            with contextlib.suppress(Exception):
                network.remove()

    # -- lifecycle -----------------------------------------------------------------------------

    def _start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None) -> RunHandle:
        name = CONTAINER_PREFIX + spec.strategy_id
        if self.site and self.uploaded_version(spec) is None:
            raise RuntimeError(
                f"site {self.site} runs uploaded versions only (desk deploy ./folder): the strategies "
                "folder is on the desk's own machine"
            )
        with contextlib.suppress(Exception):  # the previous run's container, kept for its logs
            self.client.containers.get(name).remove(force=True)
        network = self._ensure_network(spec.strategy_id)
        options = self.container_options(spec, network, secrets, self._code_volume(spec))
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
        # A thread of its own: container.wait() blocks for the whole run, and one per running strategy
        # in asyncio's default pool (min(32, cpus + 4) threads) would leave none for anything else.
        return await _in_own_thread(self._wait, handle)

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

    def _remove(self, strategy_id: str) -> None:
        with contextlib.suppress(Exception):
            self.client.containers.get(CONTAINER_PREFIX + strategy_id).remove(force=True)
        self._remove_network(strategy_id)

    async def remove(self, strategy_id: str) -> None:
        """``strategy_id``'s container and network on this engine (it moved to another site)."""
        await asyncio.to_thread(self._remove, strategy_id)

    def _cleanup(self) -> None:
        """Containers and networks a previous orchestrator left behind (it crashed, say)."""
        for container in self.client.containers.list(all=True, filters={"label": self.scoped(LABEL_STRATEGY)}):
            log.info("strategy.container_removed", container=container.name, reason="left over from a previous run")
            with contextlib.suppress(Exception):
                container.remove(force=True)
        for container in self.client.containers.list(all=True, filters={"label": self.scoped(LABEL_CODE_VERSION)}):
            with contextlib.suppress(Exception):  # a code volume's filler, left by a crash
                container.remove(force=True)
        for network in self.client.networks.list(filters={"label": self.scoped(LABEL_STRATEGY)}):
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


async def _in_own_thread(function: Callable[[RunHandle], ExitInfo], handle: RunHandle) -> ExitInfo:
    """``function(handle)`` in a new daemon thread (not the default executor's), awaited."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[ExitInfo] = loop.create_future()

    def settle(result: ExitInfo | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert result is not None
            future.set_result(result)

    def run() -> None:
        try:
            result = function(handle)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(settle, None, exc)
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name=f"docker-wait-{handle.strategy_id}", daemon=True).start()
    return await future


def reload_counts(raw: bytes) -> tuple[int, int]:
    """How many reloads a nats-server's log reports done, and failed."""
    text = raw.decode("utf-8", "replace")
    return text.count("Reloaded server configuration"), text.count("Failed to reload")


def _lines(raw: bytes) -> list[str]:
    return raw.decode("utf-8", "replace").splitlines()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
