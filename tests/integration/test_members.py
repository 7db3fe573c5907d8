"""Issue 15 items 1-2: members from their own laptops, on the real embedded desk (`desk up`).

The operator adds alice and bob (`desk member add`); each logs in from a second client (a separate
`desk` process with its own HOME, no admin credentials: tests.support.member_cli) and deploys a
folder by upload. What a member may not do is refused by the server side: bob publishing by hand on
alice's control subject is a permissions violation of nats-server; bob's requests naming alice's
strategy on his own subjects are refused by the orchestrator (NOT_YOURS). Hostile uploads are refused
with a specific error and write nothing outside the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from desk.bus import auth, codec, subjects
from desk.bus.errors import DeskError
from desk.bus.request import request
from desk.v1 import ledger_pb2, strategy_pb2
from tests.support import DESK, ROOT, DeskUp, free_port, member_cli, poll, write_strategy

pytestmark = pytest.mark.e2e
UPLOAD_LIMIT = 256 * 1024

SDK_STRATEGY = """
from strategy_sdk import Strategy

CODE_VERSION = "%s"


class Versioned(Strategy):
    def on_start(self) -> None:
        self.log.info("code version %%s", CODE_VERSION)
"""

LEGACY_STRATEGY = """
# Old-desk form: JSON lines on stdin, desk_client.
import sys
from desk_client import place_order

print("legacy code version L1", flush=True)
for line in sys.stdin:
    pass
"""


@pytest.fixture
async def desk(tmp_path: Path) -> AsyncIterator[DeskUp]:
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    up = DeskUp(tmp_path / "var", strategies, free_port())
    up.extra_env = {"ORCH_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT), "ORCH_HEARTBEAT_INTERVAL": "1"}
    await up.start("--no-strategies")
    try:
        yield up
    finally:
        assert await up.interrupt() == 0, "".join(up.output[-30:])


def cli_json(home: Path, *args: str) -> Any:
    return json.loads(member_cli(home, *args, "--json").stdout)


def refused(home: Path, *args: str) -> str:
    result = member_cli(home, *args, check=False)
    assert result.returncode != 0, (args, result.stdout)
    return result.stderr


def logged_versions(home: Path, strategy: str) -> list[str]:
    lines = cli_json(home, "logs", strategy, "--tail", "500")["lines"]
    return [line.rsplit("code version", 1)[1].strip() for line in lines if "code version" in line]


async def follow_as_member(home: Path, strategy: str) -> asyncio.subprocess.Process:
    """`desk logs -f STRATEGY -n 1` run as the member of ``home`` (as member_cli does), once it has
    printed its first line (the log's last)."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("NATS_URL", "NATS_USER", "NATS_PASSWORD", "DESK_CREDENTIALS")
    }
    env.update(HOME=str(home), PYTHONPATH=str(ROOT), COLUMNS="200")
    proc = await asyncio.create_subprocess_exec(
        *DESK,
        "logs",
        "-f",
        strategy,
        "-n",
        "1",
        cwd=home,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60), "desk logs -f printed nothing"
    return proc


async def lines_until(proc: asyncio.subprocess.Process, text: str) -> list[str]:
    """What a followed log prints until a line holds ``text``; then SIGINT, which must end it with 0."""
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(90):
            while not any(text in line for line in lines):
                line = await proc.stdout.readline()
                assert line, "desk logs -f ended by itself"
                lines.append(line.decode().rstrip("\n"))
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return lines


async def member_connection(credential: dict[str, str], errors: asyncio.Queue[str] | None = None) -> Client:
    async def record(exc: Exception) -> None:
        if errors is not None:
            errors.put_nowait(str(exc))

    member = credential["member"]
    return await nats.connect(
        credential["url"],
        user=credential["user"],
        password=credential["password"],
        inbox_prefix=auth.member_inbox_prefix(member),
        error_cb=record,
    )


def tar_of(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def good_files(member: str) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    return [
        regular("strategy.py", (SDK_STRATEGY % "H").encode()),
        regular("config.json", json.dumps({"user_id": member}).encode()),
    ]


async def send(
    nc: Client, member: str, strategy_id: str, data: bytes, sha256: str | None = None
) -> strategy_pb2.StrategyStatusList:
    """An upload by hand, chunk by chunk, on the member's subjects."""
    upload_id = hashlib.sha256(data).hexdigest()[:16]
    for offset in range(0, max(len(data), 1), 40 * 1024):
        await request(
            nc,
            subjects.member_ctl(member, "upload"),
            strategy_pb2.UploadChunk(
                strategy_id=strategy_id, upload_id=upload_id, offset=offset, data=data[offset : offset + 40 * 1024]
            ),
            strategy_pb2.UploadAck,
        )
    return await request(
        nc,
        subjects.member_ctl(member, "commit"),
        strategy_pb2.UploadCommit(
            strategy_id=strategy_id,
            upload_id=upload_id,
            size=len(data),
            sha256=sha256 or hashlib.sha256(data).hexdigest(),
        ),
        strategy_pb2.StrategyStatusList,
        timeout=60,
    )


async def test_members_deploy_from_their_laptops_and_control_only_their_own(desk: DeskUp, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{desk.port}"
    added = desk.cli("member", "add", "alice", "--url", url)
    assert [m["member_id"] for m in added["members"]] == ["alice"]
    desk.cli("member", "add", "bob", "--url", url)
    members_dir = desk.data_dir / "credentials" / "members"
    assert (members_dir / "alice.json").stat().st_mode & 0o777 == 0o600
    assert {m["member_id"] for m in desk.cli("member", "list")["members"]} == {"alice", "bob"}

    alice, bob = tmp_path / "alice-laptop", tmp_path / "bob-laptop"
    for home, name in ((alice, "alice"), (bob, "bob")):
        home.mkdir()
        (home / f"{name}.json").write_bytes((members_dir / f"{name}.json").read_bytes())
        member_cli(home, "login", f"{name}.json")
        stored = home / ".config" / "quant-desk" / "credentials.json"
        assert stored.stat().st_mode & 0o777 == 0o600

    # alice deploys a folder by upload; status, logs, stop, start
    folder = write_strategy(alice / "alpha", "alice", SDK_STRATEGY % "A")
    deployed = cli_json(alice, "deploy", "./alpha")
    assert [(s["strategy_id"], s["state"], s["code_version"]) for s in deployed["strategies"]] == [
        ("alpha", "running", 1)
    ]
    assert "version 1 deployed" in deployed["message"]
    assert cli_json(alice, "status")["strategies"][0]["state"] == "running"
    await poll(lambda: logged_versions(alice, "alpha") == ["A"], "alpha logs its code version A")
    assert cli_json(alice, "stop", "alpha")["strategies"][0]["state"] == "stopped"
    assert cli_json(alice, "start", "alpha")["strategies"][0]["state"] == "running"

    # a second version, then back to the first
    (folder / "strategy.py").write_text(SDK_STRATEGY % "B")
    again = cli_json(alice, "deploy", "./alpha")
    assert again["strategies"][0]["code_version"] == 2 and again["strategies"][0]["state"] == "running"
    await poll(lambda: logged_versions(alice, "alpha")[-1:] == ["B"], "alpha runs code version B")
    back = cli_json(alice, "rollback", "alpha")
    assert back["strategies"][0]["code_version"] == 1 and back["strategies"][0]["state"] == "running"
    assert "rolled back to version 1" in back["message"]
    await poll(lambda: logged_versions(alice, "alpha")[-1:] == ["A"], "alpha runs code version A again")
    assert "NO_PREVIOUS" in refused(alice, "rollback", "alpha")

    # alice follows her strategy's log live: the lines of a restart come while `desk logs -f` runs
    following = await follow_as_member(alice, "alpha")
    member_cli(alice, "restart", "alpha")
    followed = await lines_until(following, "code version A")
    assert any(line.startswith("--- started pid") for line in followed), followed  # the new run's banner
    assert len(followed) == len(set(followed)), followed  # no line twice

    # an old-style strategy (desk_client, stdin) deploys the same way
    write_strategy(
        bob / "oldie", "bob", LEGACY_STRATEGY, description="old desk", version="0.9.0", env={"SYMBOLS": "AAPL"}
    )
    old = cli_json(bob, "deploy", "./oldie")
    assert old["strategies"][0]["state"] == "running", old
    await poll(
        lambda: any("legacy code version L1" in line for line in cli_json(bob, "logs", "oldie")["lines"]),
        "the legacy strategy runs from its upload",
    )

    # bob sees only his own, and every control of alice's strategy is refused by the orchestrator
    assert [s["strategy_id"] for s in cli_json(bob, "status")["strategies"]] == ["oldie"]
    for args in (
        ("stop", "alpha"),
        ("start", "alpha"),
        ("restart", "alpha"),
        ("halt", "alpha"),
        ("logs", "alpha"),
        ("logs", "-f", "alpha"),
        ("rollback", "alpha"),
        ("deploy", "alpha"),
        ("status", "alpha"),
    ):
        assert "NOT_YOURS" in refused(bob, *args), args
    write_strategy(bob / "takeover" / "alpha", "bob", SDK_STRATEGY % "EVIL")
    result = member_cli(bob, "deploy", "./takeover/alpha", check=False)
    assert result.returncode == 1 and "NOT_YOURS" in result.stderr and "taken by another member" in result.stderr
    # a member halts their own strategy only (the desk-wide switch is the operator's)
    assert "NAME_REQUIRED" in refused(bob, "halt")
    assert "NOT_FOUND" in refused(bob, "halt", "nosuch")
    halted = cli_json(bob, "halt", "oldie")
    assert halted["halted_strategies"] == ["oldie"]
    assert cli_json(bob, "status", "oldie")["strategies"][0]["halted"] is True  # halts show in his status
    assert "HALTED" in member_cli(bob, "status").stdout
    assert cli_json(bob, "resume", "oldie")["halted_strategies"] == []
    assert cli_json(bob, "status", "oldie")["strategies"][0]["halted"] is False

    # bob by hand, on alice's subject: the server refuses the publish itself
    bob_credential = json.loads((members_dir / "bob.json").read_text())
    errors: asyncio.Queue[str] = asyncio.Queue()
    nc = await member_connection(bob_credential, errors)
    try:
        for op in ("stop", "halt", "upload", "commit", "logs"):
            await nc.publish(subjects.member_ctl("alice", op), b"", reply=f"{auth.member_inbox_prefix('bob')}.x")
            error = await asyncio.wait_for(errors.get(), 10)
            assert "permissions violation for publish" in error.lower() and f"desk.ctl.m.alice.{op}" in error.lower()
        for forbidden in (
            subjects.CTL_STOP,
            subjects.CTL_MEMBER_ADD,
            "$JS.API.STREAM.INFO.OBJ_DESK_CODE",
            "$O.DESK_CODE.C.x",
            subjects.LEDGER_POSITIONS,
        ):
            await nc.publish(forbidden, b"")
            assert "permissions violation" in (await asyncio.wait_for(errors.get(), 10)).lower(), forbidden
        # the leaderboard is the club's: readable
        board = await request(
            nc, subjects.LEDGER_LEADERBOARD, ledger_pb2.LedgerQuery(limit=5), ledger_pb2.LeaderboardReply
        )
        assert isinstance(board, ledger_pb2.LeaderboardReply)
    finally:
        await nc.close()
    cli_json(alice, "leaderboard")
    assert cli_json(alice, "status", "alpha")["strategies"][0]["state"] == "running"  # untouched by bob

    # the operator may do everything
    assert {s["strategy_id"] for s in desk.cli("status")["strategies"]} == {"alpha", "oldie"}
    assert desk.cli("stop", "alpha")["strategies"][0]["state"] == "stopped"
    assert desk.cli("start", "alpha")["strategies"][0]["state"] == "running"
    gamma = write_strategy(tmp_path / "operator" / "gamma", "alice", SDK_STRATEGY % "G")
    assert desk.cli("deploy", str(gamma))["strategies"][0]["code_version"] == 1  # an upload, for alice
    assert {s["strategy_id"] for s in cli_json(alice, "status")["strategies"]} == {"alpha", "gamma"}

    # removal revokes the login and stops (keeps) the member's strategies
    removed = desk.cli("member", "remove", "bob")
    assert "oldie" in removed["message"]
    assert desk.cli("status", "oldie")["strategies"][0]["state"] == "stopped"
    await poll(lambda: "NOT_AUTHORIZED" in member_cli(bob, "status", check=False).stderr, "bob's login is revoked")


async def test_hostile_uploads_are_refused_and_write_nothing_outside_the_store(desk: DeskUp, tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{desk.port}"
    desk.cli("member", "add", "alice", "--url", url)
    credential = json.loads((desk.data_dir / "credentials" / "members" / "alice.json").read_text())
    outside = tmp_path / "outside-target"
    symlink = tarfile.TarInfo("config.json")
    symlink.type, symlink.linkname = tarfile.SYMTYPE, "/etc/passwd"
    device = tarfile.TarInfo("dev")
    device.type = tarfile.CHRTYPE
    compressed = io.BytesIO()
    with tarfile.open(fileobj=compressed, mode="w:gz") as archive:
        for info, data in good_files("alice"):
            archive.addfile(info, io.BytesIO(data or b""))
    cases: list[tuple[str, bytes, str]] = [
        ("traversal", tar_of([*good_files("alice"), regular("../../../escaped", b"x")]), "BAD_PATH"),
        ("absolute", tar_of([*good_files("alice"), regular(str(outside), b"x")]), "BAD_PATH"),
        ("symlink", tar_of([good_files("alice")[0], (symlink, None)]), "BAD_FILE_TYPE"),
        ("device", tar_of([*good_files("alice"), (device, None)]), "BAD_FILE_TYPE"),
        ("oversize", tar_of([*good_files("alice"), regular("big.bin", bytes(UPLOAD_LIMIT))]), "TOO_LARGE"),
        ("nostrategy", tar_of([good_files("alice")[1]]), "MISSING_FILE"),
        ("badconfig", tar_of([good_files("alice")[0], regular("config.json", b"{not json")]), "BAD_CONFIG"),
        ("notalice", tar_of(good_files("bob")), "WRONG_MEMBER"),
        ("gzipped", compressed.getvalue(), "BAD_ARCHIVE"),
    ]
    nc = await member_connection(credential)
    try:
        for name, data, code in cases:
            with pytest.raises(DeskError) as caught:
                await send(nc, "alice", name, data)
            assert caught.value.code == code, (name, caught.value)
        with pytest.raises(DeskError) as caught:
            await send(nc, "alice", "digest", tar_of(good_files("alice")), sha256="0" * 64)
        assert caught.value.code == "BAD_DIGEST"
        with pytest.raises(DeskError) as caught:
            await send(nc, "alice", "../up", tar_of(good_files("alice")))
        assert caught.value.code == "BAD_NAME"

        # replies only to alice's own inbox: pointed elsewhere, a request on any of her endpoints is
        # dropped unanswered (before it is decoded: nothing happens), and counted
        for op in subjects.MEMBER_OPS:
            for reply in (
                "$KV.DESK_STRATEGIES.victim",
                "_INBOX_S.victim.x",
                f"{auth.member_inbox_prefix('bob')}.x",
                "$JS.API.STREAM.PURGE.OBJ_DESK_CODE",
            ):
                data, headers = codec.encode(strategy_pb2.StrategyControl(strategy_id="fine"))
                await nc.publish(subjects.member_ctl("alice", op), data, reply=reply, headers=headers)
        await nc.flush()

        admin = await nats.connect(desk.url)
        try:

            async def dropped() -> dict[str, dict[str, int]] | None:
                stats = json.loads((await admin.request("$SRV.STATS.orchestrator", b"", timeout=5)).data)
                found = {
                    e["name"]: (e.get("data") or {}).get("dropped", {})
                    for e in stats["endpoints"]
                    if e["name"].startswith("m_")
                }
                return found if all(sum(d.values()) == 4 for d in found.values()) else None

            assert await poll(dropped, "the misdirected requests counted as dropped") == {
                f"m_{op}": {"REPLY_NOT_INBOX": 2, "REPLY_FOREIGN_INBOX": 2} for op in subjects.MEMBER_OPS
            }
            # nothing stored, nothing deployed
            store = await admin.jetstream().stream_info("OBJ_DESK_CODE")
            assert store.state.messages == 0
        finally:
            await admin.close()
        # a good upload still works afterwards
        ok = await send(nc, "alice", "fine", tar_of(good_files("alice")))
        assert ok.strategies[0].code_version == 1
    finally:
        await nc.close()
    assert not outside.exists()
    assert not [p for p in tmp_path.rglob("escaped")]
    deployed = desk.data_dir / "deployed"
    assert sorted(p.name for p in deployed.iterdir()) == ["fine"]
    assert sorted(p.name for p in (deployed / "fine" / "1").iterdir()) == ["config.json", "strategy.py"]


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and localhost), its own CA, made with the openssl CLI."""
    import subprocess

    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_a_member_reaches_a_desk_with_tls_on_its_client_port(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = self_signed(tmp_path)
    monkeypatch.setenv("NATS_TLS_CA", str(cert))  # the operator's CLI (DeskUp.cli) checks the certificate
    strategies = tmp_path / "strategies"
    strategies.mkdir()
    up = DeskUp(tmp_path / "var", strategies, free_port())
    up.extra_env = {"NATS_TLS_CERT": str(cert), "NATS_TLS_KEY": str(key), "ORCH_HEARTBEAT_INTERVAL": "1"}
    await up.start("--no-strategies")
    try:
        url = f"tls://127.0.0.1:{up.port}"
        up.cli("member", "add", "carol", "--url", url, "--ca", str(cert))
        laptop = tmp_path / "carol-laptop"
        laptop.mkdir()
        credential = up.data_dir / "credentials" / "members" / "carol.json"
        assert "BEGIN CERTIFICATE" in json.loads(credential.read_text())["ca"]
        member_cli(laptop, "login", str(credential))
        write_strategy(laptop / "secure", "carol", SDK_STRATEGY % "T")
        deployed = cli_json(laptop, "deploy", "./secure")  # the strategy itself connects over TLS too
        assert deployed["strategies"][0]["state"] == "running", deployed
        await poll(lambda: logged_versions(laptop, "secure") == ["T"], "the strategy runs over TLS")
        # without the CA, the desk's certificate is not trusted; the server requires TLS of every client
        monkeypatch.delenv("NATS_TLS_CA")
        with pytest.raises(Exception):  # noqa: B017 - nats-py raises the ssl error or gives up
            await nats.connect(
                url,
                user="member-carol",
                password="x",
                max_reconnect_attempts=1,
                connect_timeout=2,
                allow_reconnect=False,
            )
        reader, writer = await asyncio.open_connection("127.0.0.1", up.port)
        try:
            info = json.loads((await asyncio.wait_for(reader.readline(), 10)).decode().removeprefix("INFO "))
        finally:
            writer.close()
        assert info["tls_required"] is True
    finally:
        assert await up.interrupt() == 0, "".join(up.output[-30:])


async def test_members_and_uploaded_versions_outlive_a_desk_restart(tmp_path: Path) -> None:
    import shutil

    strategies = tmp_path / "strategies"
    strategies.mkdir()
    up = DeskUp(tmp_path / "var", strategies, free_port())
    up.extra_env = {"ORCH_HEARTBEAT_INTERVAL": "1"}
    await up.start()  # a data dir from before members existed opens the same way: it has no members file
    try:
        assert not (up.data_dir / "nats" / "members.json").exists()
        assert up.cli("member", "list")["members"] == []
        up.cli("member", "add", "dave", "--url", f"nats://127.0.0.1:{up.port}")
        laptop = tmp_path / "dave-laptop"
        laptop.mkdir()
        member_cli(laptop, "login", str(up.data_dir / "credentials" / "members" / "dave.json"))
        folder = write_strategy(laptop / "keeper", "dave", SDK_STRATEGY % "K1")
        cli_json(laptop, "deploy", "./keeper")
        (folder / "strategy.py").write_text(SDK_STRATEGY % "K2")
        assert cli_json(laptop, "deploy", "./keeper")["strategies"][0]["code_version"] == 2
    finally:
        assert await up.interrupt() == 0, "".join(up.output[-30:])
    shutil.rmtree(up.data_dir / "deployed")  # the store is the truth: unpacked again from it
    await up.start()
    try:

        def keeper() -> tuple[str, int]:  # dave's login still works; autodeploy does not wait for heartbeats
            row = cli_json(laptop, "status", "keeper")["strategies"][0]
            return row["state"], row["code_version"]

        await poll(lambda: keeper() == ("running", 2), "keeper runs again, from version 2")
        await poll(lambda: logged_versions(laptop, "keeper")[-1:] == ["K2"], "keeper runs version 2 again")
        assert cli_json(laptop, "rollback", "keeper")["strategies"][0]["code_version"] == 1
    finally:
        assert await up.interrupt() == 0, "".join(up.output[-30:])
