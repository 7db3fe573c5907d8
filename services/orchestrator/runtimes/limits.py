"""Limits of the ``process`` runtime: CPU, memory and pids per run (cgroups, else rlimits), and a
capped, rotated, rate-limited log file per strategy.

Cgroups: one cgroup per run, ``<controller>/<our own cgroup>/quantdesk/<strategy_id>-<n>``, made
before the run starts, the run placed into it before it execs (so every process it ever forks is
counted and can be killed), removed after it ends.

- cgroup v1 (a hierarchy per controller under ``/sys/fs/cgroup/<controller>``): ``memory.limit_in_bytes``
  and ``memory.memsw.limit_in_bytes`` (no swap), ``pids.max``, ``cpu.cfs_quota_us``/``cpu.cfs_period_us``;
  an OOM kill is read from ``memory.oom_control`` (``oom_kill``) or ``memory.failcnt``, a refused fork
  from ``pids.events`` (``max``).
- cgroup v2 (``/sys/fs/cgroup/cgroup.controllers``): ``memory.max`` + ``memory.swap.max``, ``pids.max``,
  ``cpu.max``; events from ``memory.events`` (``oom_kill``) and ``pids.events``. The controllers must
  be delegated to our cgroup: the "no internal processes" rule means ``quantdesk`` can only enable
  them when our own cgroup lets its children have them (a systemd unit with ``Delegate=yes``).
  Designed for, not exercised by the tests (this host is v1).

When neither is writable the memory limit falls back to ``RLIMIT_AS`` (address space, with headroom:
approximate), and CPU and pids are not limited (``RLIMIT_NPROC`` counts the whole user's processes
and does nothing for root): :attr:`LimitPlan.missing` says so and the runtime logs a warning.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import resource
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import IO

from services.orchestrator.runtimes.docker import parse_memory

CGROUP_ROOT = Path("/sys/fs/cgroup")
GROUP_NAME = "quantdesk"
#: A long period lets a start-up (imports: a few hundred ms of CPU) run at full speed; a strategy over
#: its share is then held back for the rest of the second (up to 0.5 s at cpus 0.5).
CPU_PERIOD_US = 1_000_000
#: Address space allowed above the memory limit under the rlimit fallback (an interpreter maps far
#: more than it touches: thread stacks, arenas, shared libraries).
RLIMIT_HEADROOM = 512 * 1024**2
_counter = itertools.count(1)


@dataclass(frozen=True)
class Limits:
    """The limits of one run: ``memory`` as written ("256m"), ``cpus`` ("0.5"), ``pids``."""

    memory: str
    cpus: str
    pids: int

    @property
    def memory_bytes(self) -> int:
        return parse_memory(self.memory)

    @property
    def cpu_quota_us(self) -> int:
        return max(1000, int(Decimal(self.cpus) * CPU_PERIOD_US))


def _own_cgroup_paths() -> dict[str, str]:
    """Controller (or "" for the v2 hierarchy) -> our cgroup path in it, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def cgroup_version(root: Path = CGROUP_ROOT) -> int:
    """2 on a unified hierarchy, 1 when controllers are mounted one per folder, 0 without cgroups."""
    if (root / "cgroup.controllers").is_file():
        return 2
    if (root / "memory" / "cgroup.procs").is_file() or (root / "pids" / "cgroup.procs").is_file():
        return 1
    return 0


def _write(path: Path, value: str) -> None:
    path.write_text(value)


@dataclass
class RunCgroup:
    """The cgroup(s) of one run: one folder per v1 controller, or one v2 folder."""

    version: int
    limits: Limits
    dirs: dict[str, Path]  # controller ("memory", "pids", "cpu"; "" for v2) -> folder
    applied: list[str] = field(default_factory=list)

    @property
    def procs_files(self) -> list[bytes]:
        """The ``cgroup.procs`` files, as bytes paths (written from ``preexec_fn``: no allocation-heavy work)."""
        return [os.fsencode(d / "cgroup.procs") for d in self.dirs.values()]

    @staticmethod
    def attach_self(procs_files: list[bytes]) -> None:
        """Put the calling process into the cgroups whose ``cgroup.procs`` files are given
        (:attr:`procs_files`, computed before the fork): from ``preexec_fn``, before exec."""
        pid = str(os.getpid()).encode()
        for procs in procs_files:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)

    def pids(self) -> list[int]:
        """Every process in the run's cgroup (of the first controller that has any)."""
        found: set[int] = set()
        for folder in self.dirs.values():
            with contextlib.suppress(OSError, ValueError):
                found.update(int(x) for x in (folder / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill_all(self, timeout: float = 1.0) -> bool:
        """SIGKILL everything in the cgroup until it is empty (True) or ``timeout`` s pass."""
        if self.version == 2 and "" in self.dirs and (self.dirs[""] / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                _write(self.dirs[""] / "cgroup.kill", "1")
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)  # the kernel needs a moment to take killed processes out of cgroup.procs

    def _read_kv(self, controller: str, name: str) -> dict[str, int]:
        folder = self.dirs.get(controller)
        out: dict[str, int] = {}
        if folder is None:
            return out
        with contextlib.suppress(OSError):
            for line in (folder / name).read_text().splitlines():
                key, _, value = line.partition(" ")
                with contextlib.suppress(ValueError):
                    out[key] = int(value)
        return out

    def _read_int(self, controller: str, name: str) -> int:
        folder = self.dirs.get(controller)
        if folder is None:
            return 0
        try:
            return int((folder / name).read_text().strip())
        except (OSError, ValueError):
            return 0

    def memory_exceeded(self) -> bool:
        if self.version == 2:
            events = self._read_kv("", "memory.events")
            return events.get("oom_kill", 0) > 0 or events.get("oom", 0) > 0
        oom = self._read_kv("memory", "memory.oom_control")
        if "oom_kill" in oom:
            return oom["oom_kill"] > 0 or oom.get("under_oom", 0) > 0
        return self._read_int("memory", "memory.failcnt") > 0

    def forks_refused(self) -> int:
        return self._read_kv("" if self.version == 2 else "pids", "pids.events").get("max", 0)

    def verdict(self, killed: bool) -> str:
        """Why the run ended if a limit did it ("" when no limit was hit)."""
        parts: list[str] = []
        if killed and self.memory_exceeded():
            parts.append(f"killed: memory limit {self.limits.memory} exceeded")
        refused = self.forks_refused()
        if refused:
            parts.append(f"pids limit {self.limits.pids} reached (fork refused {refused} times)")
        return "; ".join(parts)

    def remove(self) -> None:
        """Kill what is left and remove the folders (rmdir fails while a process is still leaving)."""
        self.kill_all()
        for folder in self.dirs.values():
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


def _v1_parent(controller: str, own: dict[str, str], root: Path) -> Path:
    base = root / controller
    mine = base / own.get(controller, "/").lstrip("/")
    return (mine if mine.is_dir() else base) / GROUP_NAME


def make_cgroup(
    strategy_id: str, limits: Limits, root: Path = CGROUP_ROOT, extra_pids: int = 0
) -> tuple[RunCgroup | None, str]:
    """The cgroup of a new run with ``limits`` applied (``extra_pids`` more for the sandbox's own
    processes), or (None, why not)."""
    version = cgroup_version(root)
    name = f"{strategy_id}-{os.getpid()}-{next(_counter)}"
    own = _own_cgroup_paths()
    if version == 1:
        return _make_v1(name, limits, own, root, extra_pids)
    if version == 2:
        return _make_v2(name, limits, own, root, extra_pids)
    return None, f"no cgroup hierarchy at {root}"


def _parents(root: Path = CGROUP_ROOT) -> list[Path]:
    own = _own_cgroup_paths()
    version = cgroup_version(root)
    if version == 1:
        return [_v1_parent(c, own, root) for c in ("memory", "pids", "cpu")]
    if version == 2:
        return [root / own.get("", "/").lstrip("/") / GROUP_NAME]
    return []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(root: Path = CGROUP_ROOT) -> int:
    """Remove run cgroups (``<id>-<orchestrator pid>-<n>``) of orchestrators that are gone,
    killing what is left in them; returns how many were removed."""
    removed = 0
    for parent in _parents(root):
        with contextlib.suppress(OSError):
            for folder in parent.iterdir():
                parts = folder.name.rsplit("-", 2)
                if not folder.is_dir() or len(parts) != 3 or not parts[1].isdigit():
                    continue
                owner = int(parts[1])
                if owner == os.getpid() or _pid_alive(owner):
                    continue
                group = RunCgroup(version=cgroup_version(root), limits=Limits("1m", "1", 8), dirs={"x": folder})
                group.remove()
                removed += not folder.exists()
    return removed


def _make_v1(
    name: str, limits: Limits, own: dict[str, str], root: Path, extra_pids: int
) -> tuple[RunCgroup | None, str]:
    group = RunCgroup(version=1, limits=limits, dirs={})
    problems: list[str] = []
    for controller in ("memory", "pids", "cpu"):
        if not (root / controller / "cgroup.procs").is_file():
            problems.append(f"{controller}: not mounted")
            continue
        folder = _v1_parent(controller, own, root) / name
        try:
            folder.mkdir(parents=True)
            group.dirs[controller] = folder
            if controller == "memory":
                _write(folder / "memory.limit_in_bytes", str(limits.memory_bytes))
                if (folder / "memory.memsw.limit_in_bytes").exists():
                    with contextlib.suppress(OSError):  # swap accounting off: the limit above still holds
                        _write(folder / "memory.memsw.limit_in_bytes", str(limits.memory_bytes))
                group.applied.append(f"memory {limits.memory}")
            elif controller == "pids":
                _write(folder / "pids.max", str(limits.pids + extra_pids))
                group.applied.append(f"pids {limits.pids}")
            else:
                _write(folder / "cpu.cfs_period_us", str(CPU_PERIOD_US))
                _write(folder / "cpu.cfs_quota_us", str(limits.cpu_quota_us))
                group.applied.append(f"cpus {limits.cpus}")
        except OSError as exc:
            problems.append(f"{controller}: {exc.strerror or exc}")
    if not group.applied:
        group.remove()
        return None, "cgroup v1 not writable (" + "; ".join(problems) + ")"
    return group, "; ".join(problems)


def _make_v2(
    name: str, limits: Limits, own: dict[str, str], root: Path, extra_pids: int
) -> tuple[RunCgroup | None, str]:
    mine = root / own.get("", "/").lstrip("/")
    parent = mine / GROUP_NAME
    try:
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):  # already enabled, or our cgroup was not delegated to us
            _write(mine / "cgroup.subtree_control", "+memory +pids +cpu")
        _write(parent / "cgroup.subtree_control", "+memory +pids +cpu")
        folder = parent / name
        folder.mkdir()
    except OSError as exc:
        return None, f"cgroup v2 not delegated to us ({parent}: {exc.strerror or exc})"
    group = RunCgroup(version=2, limits=limits, dirs={"": folder})
    problems: list[str] = []
    settings = [
        ("memory.max", str(limits.memory_bytes), f"memory {limits.memory}"),
        ("memory.swap.max", "0", ""),
        ("pids.max", str(limits.pids + extra_pids), f"pids {limits.pids}"),
        ("cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}", f"cpus {limits.cpus}"),
    ]
    for file, value, label in settings:
        try:
            _write(folder / file, value)
            if label:
                group.applied.append(label)
        except OSError as exc:
            if label:
                problems.append(f"{file}: {exc.strerror or exc}")
    if not group.applied:
        group.remove()
        return None, "cgroup v2 controllers not available (" + "; ".join(problems) + ")"
    return group, "; ".join(problems)


def rlimit_preexec(limits: Limits) -> None:
    """``preexec_fn`` part of the fallback: the address space limit (memory + headroom)."""
    size = limits.memory_bytes + RLIMIT_HEADROOM
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_AS, (size, size))


# -- the log file ------------------------------------------------------------------------------


class LogSink:
    """One strategy's log file: rotated at ``max_bytes`` (``<id>.log`` -> ``.log.1`` ... ``.log.<backups>``)
    and rate-limited (a token bucket of ``rate`` bytes/s, bursts up to ``burst`` bytes).

    Lines over the rate are dropped and counted; a ``--- N lines dropped (log rate limit) ---``
    marker is written when lines flow again, at most once a second while dropping goes on, and at
    :meth:`close`. Markers and banners bypass the bucket but are counted in the file size, so the
    files together never exceed ``max_bytes * (backups + 1)``."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int,
        backups: int,
        rate: int,
        burst: int | None = None,
        on_marker: Callable[[str], None] | None = None,
    ) -> None:
        self.on_marker = on_marker
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 64 * 1024)
        self._tokens = float(self.burst)
        self._refilled = time.monotonic()
        self.dropped = 0
        self.dropped_total = 0
        self._last_marker = 0.0
        self._file: IO[bytes] = path.open("ab")
        self._size = self._file.tell()

    def _rotate(self) -> None:
        self._file.close()
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{n}")
                if older.exists():
                    older.replace(self.path.with_name(f"{self.path.name}.{n + 1}"))
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
            self._file = self.path.open("wb")
        else:
            self._file = self.path.open("wb")  # no backups: start the file over
        self._size = 0

    def _put(self, data: bytes) -> None:
        data = data[: self.max_bytes]
        if self._size + len(data) > self.max_bytes:
            self._rotate()
        self._file.write(data)
        self._size += len(data)

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._refilled) * self.rate)
        self._refilled = now

    def _marker(self, now: float) -> None:
        if self.dropped:
            marker = f"--- {self.dropped} lines dropped (log rate limit) ---"
            self._put((marker + "\n").encode())
            if self.on_marker is not None:
                self.on_marker(marker)
            self.dropped = 0
            self._last_marker = now

    def admit(self, size: int) -> bool:
        """Whether a line of ``size`` bytes may be written now (False: count it as dropped)."""
        now = time.monotonic()
        self._refill(now)
        if self._tokens >= size:
            self._tokens -= size
            return True
        self.dropped += 1
        self.dropped_total += 1
        if now - self._last_marker >= 1.0:
            self._marker(now)
        return False

    def drop(self, count: int) -> None:
        """Count ``count`` lines dropped without looking at them (a flood being skipped)."""
        self.dropped += count
        self.dropped_total += count
        now = time.monotonic()
        if now - self._last_marker >= 1.0:
            self._marker(now)

    def tokens(self) -> float:
        self._refill(time.monotonic())
        return self._tokens

    def write_line(self, line: str) -> None:
        """A line that passed :meth:`admit`: the drop marker first if lines were dropped."""
        self._marker(time.monotonic())
        self._put((line + "\n").encode("utf-8", "replace"))

    def write_banner(self, line: str) -> None:
        """The runtime's own line (start/exit): always written."""
        self.write_line(line)

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._marker(time.monotonic())
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed
