"""The docker runtime's code volumes (uploaded versions): names, the tar that fills them, the mount.

The engine itself is exercised by tests/docker/test_compose_desk.py; these are the pure parts."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import tarfile
import threading
from pathlib import Path

import pytest

from desk.bus.errors import DeskError
from desk.v1 import strategy_pb2
from services.orchestrator import uploads
from services.orchestrator.runtimes.base import ExitInfo, RunHandle
from services.orchestrator.runtimes.docker import (
    CODE_MOUNT,
    DockerRuntime,
    archive_files,
    code_archive,
    code_volume_name,
)


def version_folder(code_dir: Path, strategy_id: str = "alpha", version: int = 3) -> Path:
    folder = code_dir / strategy_id / str(version)
    (folder / "lib").mkdir(parents=True)
    (folder / "strategy.py").write_text("from strategy_sdk import Strategy\n")
    (folder / "config.json").write_text(json.dumps({"user_id": "alice"}))
    (folder / "lib" / "helpers.py").write_text("X = 1\n")
    return folder


def runtime(tmp_path: Path, code_dir: Path | None) -> DockerRuntime:
    return DockerRuntime(
        client=None,
        image="quantdesk/strategy:latest",
        host_strategies_dir=tmp_path / "host",
        log_dir=tmp_path,
        code_dir=code_dir,
    )


def test_a_code_volume_is_named_by_strategy_version_and_digest() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    assert code_volume_name("alpha", 2, digest) == f"quantdesk-code-alpha-v2-{digest[:12]}"


def test_the_code_tar_is_the_same_bytes_every_time_readable_by_all_and_passes_the_upload_checks(tmp_path: Path) -> None:
    folder = version_folder(tmp_path / "deployed")
    first = code_archive(folder)
    os.utime(folder / "strategy.py", (1, 1))  # a later mtime does not change the tar
    assert code_archive(folder) == first
    with tarfile.open(fileobj=io.BytesIO(first), mode="r:") as archive:
        members = {m.name: m for m in archive.getmembers()}
    assert set(members) == {"config.json", "lib", "lib/helpers.py", "strategy.py"}
    for member in members.values():
        assert (member.uid, member.gid, member.mtime) == (0, 0, 0)
        assert member.mode == (0o755 if member.isdir() else 0o644)
    files = uploads.read_tar(first, len(first))
    assert (
        files
        == archive_files(first)
        == {
            "config.json": b'{"user_id": "alice"}',
            "lib/helpers.py": b"X = 1\n",
            "strategy.py": b"from strategy_sdk import Strategy\n",
        }
    )


def test_a_link_in_a_version_folder_is_refused(tmp_path: Path) -> None:
    folder = version_folder(tmp_path / "deployed")
    (folder / "secrets").symlink_to("/etc/passwd")
    with pytest.raises(RuntimeError, match="not a regular file"):
        code_archive(folder)


def test_the_upload_checks_refuse_what_they_refuse_in_the_code_tar(tmp_path: Path) -> None:
    folder = version_folder(tmp_path / "deployed")
    (folder / "config.json").unlink()
    archive = code_archive(folder)
    with pytest.raises(DeskError, match=r"no config\.json"):
        uploads.read_tar(archive, len(archive))


def test_only_a_spec_under_the_code_dir_runs_an_uploaded_version(tmp_path: Path) -> None:
    code_dir = tmp_path / "deployed"
    rt = runtime(tmp_path, code_dir)
    spec = strategy_pb2.StrategySpec(strategy_id="alpha", path=str(code_dir / "alpha" / "3"))
    assert rt.uploaded_version(spec) == 3
    for path in (tmp_path / "strategies" / "alpha", code_dir / "beta" / "3", code_dir / "alpha" / "x", "", code_dir):
        assert rt.uploaded_version(strategy_pb2.StrategySpec(strategy_id="alpha", path=str(path))) is None
    assert runtime(tmp_path, None).uploaded_version(spec) is None


def test_an_uploaded_version_mounts_its_volume_read_only_with_every_other_confinement_unchanged(tmp_path: Path) -> None:
    rt = runtime(tmp_path, tmp_path / "deployed")
    spec = strategy_pb2.StrategySpec(strategy_id="alpha", member_id="alice", path=str(tmp_path / "deployed/alpha/3"))
    folder_spec = strategy_pb2.StrategySpec(strategy_id="alpha", member_id="alice", path="/strategies/alpha")
    volume = code_volume_name("alpha", 3, "ab" * 32)
    uploaded = rt.container_options(spec, "quantdesk-s-alpha", {"NATS_PASSWORD": "p"}, volume)
    from_folder = rt.container_options(folder_spec, "quantdesk-s-alpha", {"NATS_PASSWORD": "p"})
    assert uploaded["volumes"] == {volume: {"bind": CODE_MOUNT, "mode": "ro"}}
    assert from_folder["volumes"] == {str(tmp_path / "host" / "alpha"): {"bind": CODE_MOUNT, "mode": "ro"}}
    for options in (uploaded, from_folder):
        del options["volumes"]
    assert uploaded == from_folder
    assert uploaded["user"] == "10001:10001" and uploaded["read_only"] is True and uploaded["cap_drop"] == ["ALL"]
    assert uploaded["labels"]["quantdesk.strategy"] == "alpha" and uploaded["labels"]["quantdesk.member"] == "alice"


async def test_waiting_on_many_containers_leaves_asyncios_thread_pool_free() -> None:
    """One blocked container.wait() per running strategy: in the default pool, 6 of them (2 cpus) left
    no thread for anything else (a deploy's discovery waited forever)."""
    from services.orchestrator.runtimes import docker as runtime_module

    release = threading.Event()

    def blocked(handle: RunHandle) -> ExitInfo:
        release.wait(60)
        return ExitInfo(exit_code=0, reason=f"{handle.strategy_id} exited")

    waits = [
        asyncio.ensure_future(runtime_module._in_own_thread(blocked, RunHandle(strategy_id=f"s{i}"))) for i in range(40)
    ]
    try:
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "free"), timeout=30) == "free"
    finally:
        release.set()
    results = await asyncio.wait_for(asyncio.gather(*waits), timeout=30)
    assert [r.reason for r in results] == [f"s{i} exited" for i in range(40)]


async def test_a_wait_that_fails_raises_in_the_awaiting_task() -> None:
    from services.orchestrator.runtimes import docker as runtime_module

    def broken(handle: RunHandle) -> ExitInfo:
        raise RuntimeError(f"engine gone for {handle.strategy_id}")

    with pytest.raises(RuntimeError, match="engine gone for alpha"):
        await asyncio.wait_for(runtime_module._in_own_thread(broken, RunHandle(strategy_id="alpha")), timeout=30)


def test_what_the_orchestrator_makes_carries_its_desk_and_its_cleanup_takes_only_that_desks(tmp_path: Path) -> None:
    rt = runtime(tmp_path, tmp_path / "deployed")
    spec = strategy_pb2.StrategySpec(strategy_id="alpha", member_id="alice", path="/strategies/alpha")
    assert rt.desk == "" and rt.scoped("quantdesk.strategy") == ["quantdesk.strategy"]  # outside compose
    assert "quantdesk.desk" not in rt.container_options(spec, "n")["labels"]
    rt._desk = "club"  # what a compose orchestrator reads from its own container's labels
    assert rt.container_options(spec, "n")["labels"]["quantdesk.desk"] == "club"
    assert rt.mine({"quantdesk.code-version": "2"}) == {"quantdesk.code-version": "2", "quantdesk.desk": "club"}
    assert rt.scoped("quantdesk.strategy") == ["quantdesk.strategy", "quantdesk.desk=club"]
