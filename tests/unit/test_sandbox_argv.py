"""The bwrap command line, the limits and the capped log file of the process runtime (pure parts)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.limits import CPU_PERIOD_US, Limits, LogSink
from services.orchestrator.runtimes.process import ProcessRuntime
from services.orchestrator.runtimes.sandbox import DESK_PACKAGES, Sandbox, env_args, python_dirs
from services.orchestrator.settings import REPO_ROOT, Settings


def _binds(argv: list[str], flag: str = "--ro-bind") -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, part in enumerate(argv) if part == flag]


def _sandbox_argv(tmp_path: Path) -> tuple[list[str], Path]:
    folder = tmp_path / "strategies" / "alpha"
    folder.mkdir(parents=True)
    sandbox = Sandbox(bwrap="/usr/bin/bwrap", repo_root=REPO_ROOT)
    return sandbox.argv([sys.executable, "-m", "strategy_sdk", "run", str(folder)], strategy_dir=str(folder)), folder


def test_the_sandbox_unshares_everything_but_the_network_and_drops_every_privilege(tmp_path: Path) -> None:
    argv, folder = _sandbox_argv(tmp_path)
    assert argv[0] == "/usr/bin/bwrap"
    options = argv[: argv.index("--")]
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--share-net",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
    ):
        assert flag in options, flag
    assert options[options.index("--cap-drop") + 1] == "ALL"
    assert ("--remount-ro", "/") == tuple(options[options.index("--remount-ro") : options.index("--remount-ro") + 2])
    assert options[options.index("--chdir") + 1] == str(folder)
    assert argv[argv.index("--") + 1 :] == [sys.executable, "-m", "strategy_sdk", "run", str(folder)]
    # Private /tmp, /proc, /dev; the environment is not on the command line (it goes through execve).
    assert options[options.index("--tmpfs") + 1] == "/tmp"
    assert options[options.index("--proc") + 1] == "/proc"
    assert "--setenv" not in options and "--clearenv" not in options


def test_the_sandbox_binds_only_the_runtime_the_packages_and_the_strategy_read_only(tmp_path: Path) -> None:
    argv, folder = _sandbox_argv(tmp_path)
    binds = _binds(argv)
    sources = [src for src, _ in binds]
    assert all(src == dst for src, dst in binds)  # every path is where it is outside
    assert not _binds(argv, "--bind")  # nothing writable from the host
    assert "/usr" in sources and str(folder.resolve()) in sources
    for name in DESK_PACKAGES:
        assert str(REPO_ROOT / name) in sources
    for prefix in python_dirs():
        assert prefix in sources
    assert sys.base_prefix in sources or sys.base_prefix.startswith("/usr")
    # Never the repository root (var/: credentials, NATS users, the ledger), nor a parent of a prefix.
    assert str(REPO_ROOT) not in sources and str(REPO_ROOT / "var") not in sources
    assert str(REPO_ROOT / "services") not in sources
    for src in sources:
        for prefix in python_dirs():
            assert not (prefix.startswith(src.rstrip("/") + "/") and src != "/usr"), (src, prefix)
    assert str(Path.home()) not in sources and "/" not in sources
    etc = [src for src, _ in _binds(argv, "--ro-bind-try") if src.startswith("/etc")]
    assert "/etc/passwd" not in etc and "/etc/shadow" not in etc and "/etc" not in etc


def test_a_custom_command_elsewhere_is_bound_too(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "runner"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    argv = Sandbox(repo_root=REPO_ROOT).argv([str(tool), "x"], strategy_dir=str(tmp_path))
    assert (str(tool), str(tool)) in _binds(argv)


def test_limits_parse_memory_and_cpus() -> None:
    limits = Limits(memory="256m", cpus="0.5", pids=64)
    assert limits.memory_bytes == 256 * 1024**2
    assert limits.cpu_quota_us == CPU_PERIOD_US // 2 == 500_000
    assert Limits("1g", "2", 8).memory_bytes == 1024**3 and Limits("1g", "2", 8).cpu_quota_us == 2_000_000
    with pytest.raises(ValueError, match="256m"):
        _ = Limits("lots", "1", 8).memory_bytes


def _runtime(tmp_path: Path, **options: Any) -> ProcessRuntime:
    return ProcessRuntime(
        nats_url="nats://x:1", log_dir=tmp_path, repo_root=REPO_ROOT, base_env={"HOME": "/root"}, **options
    )


def test_spec_resources_override_the_defaults(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, sandbox="none", default_memory="128m", default_cpus="0.25", default_pids=32)
    plain = strategy_pb2.StrategySpec(strategy_id="a")
    assert runtime.limits(plain) == Limits("128m", "0.25", 32)
    sized = strategy_pb2.StrategySpec(strategy_id="a", resources=strategy_pb2.Resources(memory="1g", cpus="2", pids=99))
    assert runtime.limits(sized) == Limits("1g", "2", 99)


def test_an_unconfined_runtime_says_so_and_keeps_home(tmp_path: Path) -> None:
    runtime = _runtime(tmp_path, sandbox="none")
    assert runtime.name == "process" and runtime.confinement == "none: ORCH_SANDBOX=none"
    env = runtime.environment(strategy_pb2.StrategySpec(strategy_id="a"))
    assert env["HOME"] == "/root"
    assert runtime.full_argv(strategy_pb2.StrategySpec(strategy_id="a", path="/s/a"))[0] == sys.executable


def test_settings_carry_the_sandbox_and_log_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_SANDBOX", "bwrap")
    monkeypatch.setenv("ORCH_LOG_MAX_BYTES", "1048576")
    monkeypatch.setenv("ORCH_PROCESS_PIDS", "64")
    settings = Settings()
    assert settings.orch_sandbox == "bwrap" and settings.orch_log_max_bytes == 1048576
    assert settings.orch_process_pids == 64 and settings.orch_process_memory == "256m"
    assert settings.orch_log_backups == 3 and settings.orch_process_cpus == "0.5"
    monkeypatch.setenv("ORCH_SANDBOX", "sometimes")
    with pytest.raises(ValueError, match="orch_sandbox"):
        Settings()


def test_the_log_rotates_at_its_cap_and_keeps_its_backups(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = LogSink(path, max_bytes=1000, backups=2, rate=10**9)
    for n in range(100):
        assert sink.admit(50)
        sink.write_line(f"{n:03d} " + "x" * 45)
    sink.close()
    files = sorted(tmp_path.iterdir())
    assert [f.name for f in files] == ["a.log", "a.log.1", "a.log.2"]
    assert all(f.stat().st_size <= 1000 for f in files)
    assert path.read_text().splitlines()[-1].startswith("099 ")
    assert (tmp_path / "a.log.1").read_text().splitlines()[-1] < path.read_text().splitlines()[0]


def test_the_log_drops_a_flood_and_says_how_many_lines_it_dropped(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    sink = LogSink(path, max_bytes=10**6, backups=1, rate=1024, burst=1024)
    written = 0
    for _ in range(1000):
        if sink.admit(100):
            sink.write_line("y" * 99)
            written += 1
    sink.drop(5000)
    sink.close()
    text = path.read_text()
    assert written == 10  # the burst, then nothing within the same instant
    markers = [line for line in text.splitlines() if line.endswith("lines dropped (log rate limit) ---")]
    assert markers and sum(int(m.split()[1]) for m in markers) == 990 + 5000
    assert sink.dropped_total == 5990


def test_the_environment_goes_to_bwrap_as_nul_separated_setenv_arguments() -> None:
    data = env_args({"NATS_PASSWORD": "p w\nx", "HOME": "/tmp"})
    assert data.split(b"\0") == [
        b"--clearenv",
        b"--setenv",
        b"NATS_PASSWORD",
        b"p w\nx",
        b"--setenv",
        b"HOME",
        b"/tmp",
        b"",
    ]
    argv = Sandbox(bwrap="bwrap", repo_root=REPO_ROOT).argv(["x"], strategy_dir="", args_fd=7)
    assert argv[:3] == ["bwrap", "--args", "7"] and "NATS_PASSWORD" not in " ".join(argv)
