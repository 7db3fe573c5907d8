"""The process runtime's sandbox and limits, with real bubblewrap and real cgroups: a hostile
strategy program can hurt only itself.

Each test starts ``hostile.py`` (a plain Python program in a strategy folder placed like the real
ones, beside a fake ``var/`` holding credentials and a ledger) through ``ProcessRuntime.start()``,
and reads what it could and could not do from the JSON line it prints."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.base import ExitInfo, RunHandle
from services.orchestrator.runtimes.limits import cgroup_version
from services.orchestrator.runtimes.process import ProcessRuntime
from services.orchestrator.runtimes.sandbox import Sandbox, clear_probe_cache, sandboxed_main_pid
from services.orchestrator.settings import REPO_ROOT

BWRAP_OK, BWRAP_WHY = Sandbox(repo_root=REPO_ROOT).probe()
needs_bwrap = pytest.mark.skipif(not BWRAP_OK, reason=f"bubblewrap unusable here: {BWRAP_WHY}")


def _cgroups_writable() -> bool:
    if cgroup_version() == 0:
        return False
    from services.orchestrator.runtimes.limits import Limits, make_cgroup

    group, _ = make_cgroup("probe", Limits("64m", "1", 16))
    if group is None:
        return False
    group.remove()
    return {"memory 64m", "pids 16"} <= set(group.applied)


needs_cgroups = pytest.mark.skipif(not _cgroups_writable(), reason="no writable memory+pids cgroups here")

HOSTILE = r"""
import json, os, signal, subprocess, sys, time

mode = os.environ["HOSTILE"]
out = {"pid": os.getpid(), "home": os.environ.get("HOME"), "cwd": os.getcwd()}

def attempt(name, fn):
    try:
        out[name] = ["ok", fn()]
    except Exception as exc:
        out[name] = ["error", type(exc).__name__, getattr(exc, "errno", None)]

def write(path):
    with open(path, "w") as handle:
        handle.write("pwned")
    return path

if mode == "snoop":
    target = os.environ["TARGET_PID"]
    attempt("orch_environ", lambda: open(f"/proc/{target}/environ", "rb").read().decode("latin-1"))
    attempt("proc_pids", lambda: sorted(int(p) for p in os.listdir("/proc") if p.isdigit()))
    for key in ("CLI_JSON", "AUTH_CONF", "LEDGER", "HOME_SECRET", "REAL_VAR"):
        if os.environ.get(key):
            attempt("read_" + key, lambda: open(os.environ[key], "rb").read().decode("latin-1"))
    attempt("list_repo_root", lambda: sorted(os.listdir(os.environ["REPO"])))
    attempt("list_slash_root", lambda: sorted(os.listdir("/root")) if os.path.isdir("/root") else [])
    attempt("write_ledger", lambda: write(os.environ["LEDGER"]))
    attempt("write_own_folder", lambda: write(os.path.join(os.getcwd(), "x.txt")))
    attempt("write_usr", lambda: write("/usr/pwned"))
    attempt("write_slash", lambda: write("/pwned"))
    attempt("write_tmp", lambda: write("/tmp/fine.txt"))
    attempt("kill_orchestrator", lambda: os.kill(int(target), 0))
    attempt("secret_in_env", lambda: "ORCH_TEST_SECRET" in os.environ)
    attempt("import_sdk", lambda: __import__("strategy_sdk").__name__)
    attempt("import_services", lambda: __import__("services.orchestrator").__name__)
    print("RESULT " + json.dumps(out), flush=True)
elif mode == "forkbomb":
    children = 0
    while children < 500:
        try:
            pid = os.fork()
        except OSError as exc:
            out["refused"] = type(exc).__name__
            break
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
    out["children"] = children
    print("RESULT " + json.dumps(out), flush=True)
    sys.exit(3)
elif mode == "hog":
    hoard = []
    for _ in range(96):  # 96 x 16 MiB = 1.5 GiB, every page touched
        hoard.append(bytearray(b"x" * (16 * 1024 * 1024)))
    print("RESULT " + json.dumps({"survived": len(hoard)}), flush=True)
elif mode in ("setsid", "setsid-exit"):
    child = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"],
        start_new_session=True,  # setsid: out of the strategy's process group; holds our stdout/stderr
    )
    out["child"] = child.pid
    print("RESULT " + json.dumps(out), flush=True)
    if mode == "setsid":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # and the main process ignores SIGTERM too
        time.sleep(3600)
elif mode == "spin":
    began = time.monotonic()
    while time.monotonic() - began < 3.0:
        pass
    print("RESULT " + json.dumps({"cpu": time.process_time()}), flush=True)
elif mode == "flood":
    line = b"y" * 99 + b"\n"
    block = line * 10_000  # 1 MB
    for _ in range(100):
        sys.stdout.buffer.write(block)
    sys.stdout.buffer.flush()
    print("RESULT " + json.dumps({"flooded": 100}), flush=True)
"""


class Fixture:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.repo = root / "repo"  # laid out like the real repository: packages, strategies/, var/
        self.home = root / "home"
        for name in ("strategy_sdk", "desk", "desk_client"):
            (self.repo).mkdir(parents=True, exist_ok=True)
            (self.repo / name).symlink_to(REPO_ROOT / name)
        var = self.repo / "var"
        (var / "credentials").mkdir(parents=True)
        (var / "nats").mkdir()
        self.cli_json = var / "credentials" / "cli.json"
        self.cli_json.write_text('{"user": "admin", "password": "s3cret-admin"}')
        self.auth_conf = var / "nats" / "auth.conf"
        self.auth_conf.write_text("authorization { users = [] }")
        self.ledger = var / "ledger.db"
        self.ledger.write_bytes(b"SQLite format 3\x00")
        (self.repo / "services").symlink_to(REPO_ROOT / "services")
        self.home.mkdir()
        self.home_secret = self.home / ".secret"
        self.home_secret.write_text("home secret")
        self.folder = self.repo / "strategies" / "hostile"
        self.folder.mkdir(parents=True)
        (self.folder / "hostile.py").write_text(HOSTILE)
        self.logs = root / "logs"

    def runtime(self, **options: object) -> ProcessRuntime:
        settings: dict[str, object] = {
            "nats_url": "nats://127.0.0.1:1",
            "log_dir": self.logs,
            "repo_root": self.repo,
            "command": "{python} {path}/hostile.py",
            "sandbox": "bwrap",
            **options,
        }
        return ProcessRuntime(**settings)  # type: ignore[arg-type]

    def spec(self, mode: str, strategy_id: str = "hostile", **resources: object) -> strategy_pb2.StrategySpec:
        env = {
            "HOSTILE": mode,
            "TARGET_PID": str(os.getpid()),
            "CLI_JSON": str(self.cli_json),
            "AUTH_CONF": str(self.auth_conf),
            "LEDGER": str(self.ledger),
            "HOME_SECRET": str(self.home_secret),
            "REPO": str(self.repo),
        }
        real_cli = REPO_ROOT / "var" / "credentials" / "cli.json"
        if real_cli.exists():
            env["REAL_VAR"] = str(real_cli)
        return strategy_pb2.StrategySpec(
            strategy_id=strategy_id,
            member_id="mallory",
            path=str(self.folder),
            env=env,
            resources=strategy_pb2.Resources(**resources),  # type: ignore[arg-type]
        )


@pytest.fixture
def fx(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fixture]:
    monkeypatch.setenv("ORCH_TEST_SECRET", "broker-key-must-not-leak")
    yield Fixture(tmp_path)


async def _result(runtime: ProcessRuntime, strategy_id: str, timeout: float = 20.0) -> dict[str, object]:
    """The JSON line the hostile program printed (waiting on its log, bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in await runtime.logs(strategy_id, 1000):
            if line.startswith("RESULT "):
                result: dict[str, object] = json.loads(line[len("RESULT ") :])
                return result
        await asyncio.sleep(0.02)
    raise AssertionError(f"no RESULT line within {timeout}s: {await runtime.logs(strategy_id, 20)}")


async def _wait(runtime: ProcessRuntime, handle: RunHandle, timeout: float = 30.0) -> ExitInfo:
    return await asyncio.wait_for(runtime.wait(handle), timeout)


def _gone(pid: int, timeout: float = 3.0) -> bool:
    """Whether ``pid`` is gone (or a zombie) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                if handle.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.02)
    return False


def _descendants(pid: int) -> list[int]:
    ppids: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as handle:
                    stat = handle.read()
                ppids[int(entry)] = int(stat.rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in ppids.items() if pp == parent]
        found += children
        frontier += children
    return found


@needs_bwrap
async def test_a_hostile_strategy_sees_nothing_of_the_desk_and_writes_only_tmp(fx: Fixture) -> None:
    runtime = fx.runtime()
    assert runtime.confinement == "bwrap sandbox"
    handle = await runtime.start(fx.spec("snoop"))
    result = await _result(runtime, "hostile")
    info = await _wait(runtime, handle)
    assert info.exit_code == 0, info

    # Its own pid namespace: the orchestrator's /proc entry does not exist, only its own pids do.
    assert result["orch_environ"][:2] == ["error", "FileNotFoundError"]  # type: ignore[index]
    pids = result["proc_pids"][1]  # type: ignore[index]
    assert max(pids) < 10 and os.getpid() not in pids, pids
    assert result["kill_orchestrator"][0] == "error"  # type: ignore[index]
    # No var/ (credentials, NATS users, ledger), no home, not the real repository's var either.
    for key in ("read_CLI_JSON", "read_AUTH_CONF", "read_LEDGER", "read_HOME_SECRET", "read_REAL_VAR"):
        if key in result:
            assert result[key][:2] == ["error", "FileNotFoundError"], (key, result[key])  # type: ignore[index]
    assert result["list_repo_root"] == ["ok", ["desk", "desk_client", "strategies", "strategy_sdk"]]
    slash_root = result["list_slash_root"][1]  # type: ignore[index]
    assert set(slash_root) <= {".pyenv"}, slash_root  # at most the bound Python runtime
    # Read-only everywhere but /tmp.
    for key in ("write_ledger", "write_own_folder", "write_usr", "write_slash"):
        assert result[key][0] == "error" and result[key][2] in (30, 13, 2), (key, result[key])  # type: ignore[index]
    assert result["write_tmp"][0] == "ok"  # type: ignore[index]
    assert not (fx.folder / "x.txt").exists() and fx.ledger.read_bytes() == b"SQLite format 3\x00"
    # A clean environment, HOME=/tmp, its own folder as cwd; desk packages import, services do not.
    assert result["secret_in_env"] == ["ok", False]
    assert result["home"] == "/tmp" and result["cwd"] == str(fx.folder)
    assert result["import_sdk"] == ["ok", "strategy_sdk"]
    assert result["import_services"][:2] == ["error", "ModuleNotFoundError"]  # type: ignore[index]
    # And the strategy's NATS password is not on bwrap's (world-readable) command line.
    assert "s3cret" not in " ".join(runtime.full_argv(fx.spec("snoop")))


@needs_bwrap
@needs_cgroups
async def test_a_fork_bomb_stops_at_the_pids_limit_and_is_reported(fx: Fixture) -> None:
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("forkbomb", pids=16))
    result = await _result(runtime, "hostile")
    info = await _wait(runtime, handle)
    assert result["refused"] == "BlockingIOError" and int(result["children"]) < 16  # type: ignore[call-overload]
    assert info.exit_code == 3
    assert "pids limit 16 reached (fork refused" in info.last_error, info
    assert "pids limit 16 reached" in info.reason
    assert all(_gone(pid) for pid in _descendants(handle.pid))


@needs_bwrap
@needs_cgroups
async def test_a_memory_hog_is_killed_and_reported_as_over_its_memory_limit(fx: Fixture) -> None:
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("hog", memory="64m"))
    cgroup = runtime._runs[handle.pid].cgroup
    assert cgroup is not None and "memory" in cgroup.dirs
    folder = cgroup.dirs["memory"]
    assert (folder / "memory.limit_in_bytes").read_text().strip() == str(64 * 1024**2)
    info = await _wait(runtime, handle)
    assert info.exit_code == -9, info
    assert info.reason.startswith("killed: memory limit 64m exceeded"), info
    assert info.last_error.startswith("killed: memory limit 64m exceeded"), info
    assert "survived" not in "\n".join(await runtime.logs("hostile", 100))
    assert not folder.exists()  # the run's cgroup is removed after it ends


@needs_bwrap
@needs_cgroups
async def test_the_cpu_limit_holds_a_busy_loop_to_its_share(fx: Fixture) -> None:
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("spin", cpus="0.2"))
    result = await _result(runtime, "hostile", timeout=30)
    await _wait(runtime, handle)
    cpu = float(result["cpu"])  # type: ignore[arg-type]
    assert cpu < 1.5, cpu  # 3 s of spinning: ~3 s of CPU unlimited, ~0.6-1 s at 0.2 CPU (1 s periods)


@needs_bwrap
async def test_stop_returns_in_bounds_and_takes_a_setsid_child_along(fx: Fixture) -> None:
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("setsid"))
    await _result(runtime, "hostile")
    main = sandboxed_main_pid(handle.pid)
    tree = _descendants(handle.pid)
    # bwrap (privileged) has no environment (config.json env such as LD_PRELOAD never reaches it),
    # and the strategy's variables are not on its world-readable command line either.
    assert Path(f"/proc/{handle.pid}/environ").read_bytes() == b""
    assert b"HOSTILE" not in Path(f"/proc/{handle.pid}/cmdline").read_bytes()
    assert b"HOSTILE=setsid" in Path(f"/proc/{main}/environ").read_bytes()
    assert main and len(tree) >= 3  # bwrap's init, the strategy, its setsid child
    began = time.monotonic()
    await asyncio.wait_for(runtime.stop(handle, timeout=1.0), 10)
    info = await _wait(runtime, handle, timeout=10)
    elapsed = time.monotonic() - began
    assert elapsed < 1.0 + 2.5, elapsed  # SIGTERM ignored: SIGKILL after 1 s, readers not awaited
    assert info.exit_code == -9 and info.reason == "killed by SIGKILL", info
    assert all(_gone(pid) for pid in tree), [p for p in tree if not _gone(p, 0)]


@needs_bwrap
async def test_a_setsid_child_holding_the_pipes_does_not_outlive_a_main_process_that_exits(fx: Fixture) -> None:
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("setsid-exit"))
    await _result(runtime, "hostile")
    began = time.monotonic()
    info = await _wait(runtime, handle, timeout=10)
    assert time.monotonic() - began < 3.0
    assert info.exit_code == 0, info
    assert not _descendants(handle.pid) or all(_gone(pid) for pid in _descendants(handle.pid))
    # The child's host pid: gone from every process list.
    leftovers = [pid for pid in map(int, filter(str.isdigit, os.listdir("/proc"))) if _is_sleeper(pid)]
    assert all(_gone(pid) for pid in leftovers), leftovers


def _is_sleeper(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return b"time.sleep(3600)" in handle.read()
    except OSError:
        return False


@needs_bwrap
async def test_a_100_mb_log_flood_keeps_the_log_files_under_their_cap(fx: Fixture) -> None:
    max_bytes, backups = 256 * 1024, 2
    runtime = fx.runtime(log_max_bytes=max_bytes, log_backups=backups, log_rate=64 * 1024)
    began = time.monotonic()
    handle = await runtime.start(fx.spec("flood"))
    info = await _wait(runtime, handle, timeout=60)
    elapsed = time.monotonic() - began
    assert info.exit_code == 0, info
    files = sorted(fx.logs.glob("hostile.log*"))
    total = sum(f.stat().st_size for f in files)
    assert total <= max_bytes * (backups + 1), (total, files)
    assert len(files) <= backups + 1
    text = "\n".join(f.read_text(errors="replace") for f in files)
    assert "lines dropped (log rate limit) ---" in text
    dropped = sum(int(line.split()[1]) for line in text.splitlines() if line.endswith("(log rate limit) ---"))
    assert dropped > 900_000  # of the 1,000,000 flood lines, most were dropped, and counted
    assert any("lines dropped (log rate limit)" in line for line in await runtime.logs("hostile", 1000))
    assert elapsed < 30


async def test_bwrap_required_but_missing_refuses_to_start_and_auto_falls_back_loudly(
    fx: Fixture, capsys: pytest.CaptureFixture[str]
) -> None:
    clear_probe_cache()
    try:
        required = fx.runtime(bwrap="/nonexistent/bwrap")
        assert required.confinement.startswith("none: bubblewrap unusable: /nonexistent/bwrap not found")
        with pytest.raises(RuntimeError, match="ORCH_SANDBOX=bwrap but the sandbox cannot run"):
            await required.start(fx.spec("snoop"))
        auto = fx.runtime(bwrap="/nonexistent/bwrap", sandbox="auto", limits="none")
        assert auto.confinement.startswith("none: ")
        assert "sandbox.unavailable" in capsys.readouterr().out
        handle = await auto.start(fx.spec("snoop"))
        result = await _result(auto, "hostile")
        await _wait(auto, handle)
        assert result["read_LEDGER"][0] == "ok"  # type: ignore[index]  # unconfined, as it warned
        assert "UNCONFINED" in (await auto.logs("hostile", 100))[0]
        none = fx.runtime(sandbox="none")
        assert none.confinement == "none: ORCH_SANDBOX=none"
    finally:
        clear_probe_cache()


@needs_bwrap
async def test_start_time_sandboxed_vs_unconfined(fx: Fixture, capsys: pytest.CaptureFixture[str]) -> None:
    """Figures (printed): time from start() to the program's first line, with and without bwrap."""
    (fx.folder / "hello.py").write_text("import strategy_sdk, desk_client\nprint('hello', flush=True)\n")
    timings: dict[str, float] = {}
    for mode in ("bwrap", "none"):
        runtime = fx.runtime(sandbox=mode, command="{python} {path}/hello.py")
        samples = []
        for n in range(3):
            began = time.monotonic()
            handle = await runtime.start(fx.spec("x", strategy_id=f"t-{mode}-{n}"))
            await _wait(runtime, handle)
            samples.append(time.monotonic() - began)
            assert "hello" in await runtime.logs(f"t-{mode}-{n}", 10)
        timings[mode] = min(samples)
    with capsys.disabled():
        print(
            f"\nstart-to-exit of a strategy_sdk import: bwrap {timings['bwrap'] * 1000:.0f} ms, "
            f"unconfined {timings['none'] * 1000:.0f} ms"
        )
    assert timings["bwrap"] < timings["none"] + 1.0


@needs_bwrap
async def test_without_cgroups_memory_falls_back_to_an_address_space_limit_and_says_so(
    fx: Fixture, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import services.orchestrator.runtimes.process as process_module

    monkeypatch.setattr(process_module, "make_cgroup", lambda *a, **k: (None, "cgroups not writable (test)"))
    runtime = fx.runtime()
    handle = await runtime.start(fx.spec("hog", memory="64m"))
    info = await _wait(runtime, handle)
    out = capsys.readouterr().out
    assert "limits.degraded" in out and "cpus 0.5, pids 128" in out  # what could not be applied is said
    assert info.exit_code == 1, info
    assert info.reason.startswith("memory limit 64m reached (address space rlimit)"), info
    assert "MemoryError" in info.last_error
    assert "limits: memory 64m (rlimit)" in (await runtime.logs("hostile", 100))[0]
