"""The ``process`` runtime's sandbox: bubblewrap (``bwrap``), namespaces and read-only binds.

A sandboxed strategy runs in new user (no capabilities, no nested user namespaces), mount, pid,
ipc, uts and cgroup namespaces. Its filesystem is a read-only, empty root holding only:

- ``/usr`` (and the ``/bin``, ``/lib``... links or folders beside it), read-only;
- the Python runtime, read-only: ``sys.base_prefix`` and the venv ``sys.prefix`` (exactly those
  folders, never their parents: the user's home and the repository hold secrets and ``var/``);
- the desk packages a strategy imports (``strategy_sdk``, ``desk``, ``desk_client``), bound one by
  one at their own paths under the repository root, so ``PYTHONPATH=<repo root>`` and the
  editable install's finder still find them; nothing else of the repository (no ``var/``, no
  ``services/``, no credentials, no ledger);
- the strategy's own folder, read-only, at its own path (``spec.path`` and the cwd work unchanged);
- a few name-resolution and certificate files of ``/etc`` (hosts, resolv.conf, nsswitch.conf,
  localtime, ssl/certs), never ``/etc/passwd``-like files;
- a private writable ``/tmp`` (tmpfs: counted in the run's memory cgroup), its own ``/proc`` (its
  pid namespace: it sees only its own processes, never the orchestrator's environment), a minimal
  ``/dev``.

``--new-session`` (no terminal injection), ``--die-with-parent``: bwrap's pid-namespace init is
the reaper of the whole process tree; when the strategy's main process exits the outer bwrap exits
with its code and the init, then the whole namespace, is SIGKILLed by the kernel. So a child that
called ``setsid`` cannot outlive its strategy.

Limitation: the network namespace is shared with the host (``--share-net``) so that the strategy
reaches NATS on 127.0.0.1: it can open connections to any host port and to the internet, and to
abstract Unix sockets of the host's network namespace (NATS authorization still limits what it may
do on the bus). The Docker runtime has a network of its own.

The environment is set inside by ``--clearenv`` and one ``--setenv`` per variable, read by bwrap
from a memfd (``--args FD``): not on bwrap's command line, which anyone on the host can read in
``/proc/<pid>/cmdline`` (the strategy's NATS password is among the variables), and not in bwrap's
own environment either: bwrap starts as root with every capability, so a config.json ``env`` of
``LD_PRELOAD=<a library in the strategy's folder>`` would run code outside the sandbox. bwrap itself
gets an empty environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: Packages of the repository a strategy imports (bound read-only at their own paths).
DESK_PACKAGES = ("strategy_sdk", "desk", "desk_client")
#: /etc files a Python process may need to resolve names, know the time zone, check TLS certificates.
ETC_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/ssl/certs",
)
ROOT_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

_probes: dict[str, tuple[bool, str, bool]] = {}


def _under(path: str, roots: list[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def python_dirs(python: str = sys.executable) -> list[str]:
    """The folders the interpreter needs: its prefixes (venv and base), deduplicated, outside /usr."""
    dirs: list[str] = []
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        real = os.path.realpath(prefix)
        for candidate in (prefix, real):
            if candidate not in dirs and not _under(candidate, ["/usr"]):
                dirs.append(candidate)
    return dirs


@dataclass
class Sandbox:
    """How to wrap a strategy's command in bwrap (pure but for :meth:`probe`: unit-tested)."""

    bwrap: str = "bwrap"
    repo_root: Path = Path(".")
    python: str = sys.executable
    extra_ro: list[str] = field(default_factory=list)
    #: ``--disable-userns`` (bwrap >= 0.8): no nested user namespace; dropped if this bwrap lacks it.
    disable_userns: bool = True

    def base_args(self) -> list[str]:
        args = [
            self.bwrap,
            "--unshare-all",
            "--unshare-user",
            "--share-net",
            *(["--disable-userns"] if self.disable_userns else []),
            "--cap-drop",
            "ALL",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for link in ROOT_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        for file in ETC_FILES:
            args += ["--ro-bind-try", file, file]
        return args

    def ro_paths(self, strategy_dir: str, command: list[str]) -> list[str]:
        """Every host path bound read-only (besides /usr and /etc files), in mount order."""
        paths: list[str] = []

        def add(path: str) -> None:
            if path and os.path.exists(path) and not _under(path, ["/usr", *paths]):
                paths.append(path)

        for folder in python_dirs(self.python):
            add(folder)
        for name in DESK_PACKAGES:
            add(str(self.repo_root.resolve() / name))
        for extra in self.extra_ro:
            add(extra)
        # The command's program, when it lives elsewhere (a custom ORCH_PROCESS_COMMAND).
        if command:
            program = command[0] if os.path.isabs(command[0]) else shutil.which(command[0]) or ""
            add(program)
            add(os.path.realpath(program) if program else "")
        if strategy_dir:
            add(os.path.realpath(strategy_dir))
            if os.path.realpath(strategy_dir) != os.path.abspath(strategy_dir):
                add(os.path.abspath(strategy_dir))
        return paths

    def argv(
        self, command: list[str], *, strategy_dir: str, cwd: str | None = None, args_fd: int | None = None
    ) -> list[str]:
        """``command`` run inside the sandbox (with ``cwd``, default the strategy's folder); with
        ``args_fd``, bwrap first reads more arguments (the environment: :func:`env_args`) from it."""
        args = self.base_args()
        if args_fd is not None:
            args[1:1] = ["--args", str(args_fd)]
        for path in self.ro_paths(strategy_dir, command):
            args += ["--ro-bind", path, path]
        args += ["--remount-ro", "/"]
        chdir = cwd or strategy_dir
        if chdir:
            args += ["--chdir", chdir]
        return [*args, "--", *command]

    def probe(self) -> tuple[bool, str]:
        """Whether bwrap runs here (cached per bwrap path): (True, version) or (False, why not)."""
        key = self.bwrap
        if key not in _probes:
            ok, detail = self._probe()
            if not ok and "disable-userns" in detail:  # bwrap < 0.8: without that option
                self.disable_userns = False
                ok, detail = self._probe()
            _probes[key] = (ok, detail, self.disable_userns)
        ok, detail, self.disable_userns = _probes[key]
        return ok, detail

    def _probe(self) -> tuple[bool, str]:
        path = shutil.which(self.bwrap)
        if not path:
            return False, f"{self.bwrap} not found (apt-get install bubblewrap)"
        try:
            result = subprocess.run(
                [*self.base_args(), "--remount-ro", "/", "--", "/usr/bin/true"],
                capture_output=True,
                timeout=10,
                env={},
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"{path} did not run: {exc}"
        if result.returncode != 0:
            error = result.stderr.decode("utf-8", "replace").strip().splitlines()
            return False, f"{path} failed (exit {result.returncode}): {error[-1] if error else 'no message'}"
        return True, path


def env_args(env: dict[str, str]) -> bytes:
    """``--clearenv --setenv K V ...`` as bwrap's ``--args`` reads them (NUL-separated)."""
    parts = ["--clearenv"]
    for key, value in env.items():
        parts += ["--setenv", key, value]
    return b"".join(part.encode("utf-8", "surrogateescape") + b"\0" for part in parts)


def env_fd(env: dict[str, str]) -> int:
    """A memfd holding :func:`env_args` of ``env``, positioned at its start (inheritable: for
    ``pass_fds``); the caller closes it once the child started."""
    fd = os.memfd_create("bwrap-env", 0)
    try:
        os.write(fd, env_args(env))
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def clear_probe_cache() -> None:
    _probes.clear()


def _ppids() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc/<pid>/stat)."""
    out: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{entry.name}/stat", "rb") as handle:
                stat = handle.read()
            out[int(entry.name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return out


def sandboxed_main_pid(bwrap_pid: int) -> int:
    """The host pid of the strategy's main process under bwrap (0 while it is not there yet).

    Outer bwrap (``bwrap_pid``) -> the pid namespace's init (bwrap) -> the command."""
    ppids = _ppids()
    inits = [pid for pid, parent in ppids.items() if parent == bwrap_pid]
    for init in inits:
        children = sorted(pid for pid, parent in ppids.items() if parent == init)
        if children:
            return children[0]
    return 0
