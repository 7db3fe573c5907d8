"""Members: logins, and deploying from a member's own laptop.

``desk member add NAME`` (the operator) makes a password, sends the desk only its bcrypt hash
(``desk.ctl.member.add``), and writes the member's credential file
(``<credentials dir>/members/NAME.json``: url, user, password; readable by the operator only) to hand
over. ``desk login FILE`` on the member's laptop stores it where the CLI finds it
(``$XDG_CONFIG_HOME/quant-desk/credentials.json``, default ``~/.config/...``, mode 0600); from then on
``desk ...`` connects with it and talks on the member's own subjects (``desk.ctl.m.<member>.<op>``),
which only that login may publish. ``desk deploy ./folder`` uploads the folder (an uncompressed tar
in chunks, then a commit with its sha256); ``desk rollback NAME`` returns to the previous version.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import secrets
import stat
import tarfile
from pathlib import Path
from typing import Annotated, Any

import typer

from desk.bus import auth, subjects
from desk.bus.errors import DeskError
from desk.v1 import strategy_pb2

member_app = typer.Typer(help="The club's members and their logins (operator).", no_args_is_help=True)

CHUNK = 48 * 1024
#: Skipped when a folder is packed for upload.
SKIPPED = ("__pycache__", ".git", ".venv", ".mypy_cache", ".pytest_cache", ".ruff_cache")


def login_path() -> Path:
    """Where ``desk login`` keeps the member's credential."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "quant-desk" / "credentials.json"


def read_credential(path: Path) -> dict[str, str] | None:
    """A credential file (the operator's cli.json or a member's), or None when there is none."""
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or "user" not in stored or "password" not in stored:
        return None
    return {str(k): str(v) for k, v in stored.items()}


def member_of_user(user: str) -> str | None:
    """The member a NATS user name stands for (``member-alice`` -> ``alice``)."""
    prefix = auth.member_user("")
    member = user[len(prefix) :] if user.startswith(prefix) else ""
    return member if subjects.MEMBER_LOGIN_RE.match(member) else None


def write_private_json(path: Path, value: dict[str, str]) -> None:
    auth.write_private(path, json.dumps(value, indent=2) + "\n")


# ------------------------------------------------------------------------------------ packing


def pack_folder(folder: Path) -> bytes:
    """``folder`` as an uncompressed tar of its regular files (names relative to it, no owners, no
    times), skipping caches and hidden files; a link or a special file is an error."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIPPED and not d.startswith("."))
            for name in sorted(filenames):
                if name.startswith(".") or name.endswith((".pyc", ".pyo")):
                    continue
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                rel = path.relative_to(folder).as_posix()
                if not stat.S_ISREG(mode):
                    raise DeskError("BAD_FILE", f"{rel} is not a regular file (a link?): only files are uploaded")
                data = path.read_bytes()
                info = tarfile.TarInfo(rel)
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                archive.addfile(info, io.BytesIO(data))
            for d in dirnames:
                if (Path(dirpath) / d).is_symlink():
                    raise DeskError(
                        "BAD_FILE", f"{(Path(dirpath) / d).relative_to(folder)} is a link: only files are uploaded"
                    )
    return buffer.getvalue()


def is_folder_argument(name: str) -> bool:
    """``desk deploy ./my_strategy`` uploads a folder; ``desk deploy NAME`` names a strategy."""
    return "/" in name or os.sep in name or name in (".", "..")


async def upload(
    nc: Any, folder: Path, member: str | None, timeout: float, commit_timeout: float
) -> strategy_pb2.StrategyStatusList:
    """Upload ``folder`` on the member's subjects (the operator's when ``member`` is None) and commit it."""
    from desk.bus.request import request

    strategy_id = (await asyncio.to_thread(folder.resolve)).name
    if not subjects.STRATEGY_ID_RE.match(strategy_id):
        raise DeskError(
            "BAD_NAME",
            f"folder name {strategy_id!r} is not a strategy name: 1-32 of a-z 0-9 _ -, starting with a letter or digit",
        )
    data = await asyncio.to_thread(pack_folder, folder)
    upload_id = secrets.token_hex(12)
    chunk_subject = subjects.member_ctl(member, "upload") if member else subjects.CTL_UPLOAD
    commit_subject = subjects.member_ctl(member, "commit") if member else subjects.CTL_COMMIT
    for offset in range(0, max(len(data), 1), CHUNK):
        await request(
            nc,
            chunk_subject,
            strategy_pb2.UploadChunk(
                strategy_id=strategy_id, upload_id=upload_id, offset=offset, data=data[offset : offset + CHUNK]
            ),
            strategy_pb2.UploadAck,
            timeout=timeout,
        )
    return await request(
        nc,
        commit_subject,
        strategy_pb2.UploadCommit(
            strategy_id=strategy_id, upload_id=upload_id, size=len(data), sha256=hashlib.sha256(data).hexdigest()
        ),
        strategy_pb2.StrategyStatusList,
        timeout=commit_timeout,
    )


# ------------------------------------------------------------------------------------ commands


def _print_members(reply: strategy_pb2.MemberList, as_json: bool) -> None:
    from desk.cli.render import console, print_json, table

    if as_json:
        print_json(reply)
        return
    table(
        "members",
        ["member", "NATS user", "strategies"],
        [[m.member_id, m.user, ", ".join(m.strategies)] for m in reply.members],
    )
    if reply.message:
        console.print(reply.message, markup=False, highlight=False)


@member_app.command("add")
def member_add(
    name: Annotated[str, typer.Argument(help="The member's name (config.json user_id of their strategies).")],
    url: Annotated[
        str,
        typer.Option(
            help="The desk's address as the member reaches it (default: --nats-url), e.g. tls://desk.club.example:4222."
        ),
    ] = "",
    ca: Annotated[
        Path | None,
        typer.Option(
            help="CA certificate the member's CLI checks the desk's TLS certificate with (copied into the credential)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Where to write the credential (default: <credentials dir>/members/NAME.json).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Give a member a login (a new password if they had one): writes their credential file, 0600."""
    from desk.cli import main as cli
    from desk.cli.render import console

    if not subjects.MEMBER_LOGIN_RE.match(name):
        cli._fail(f"member name {name!r}: use 1-32 of a-z 0-9 _ -, starting with a letter or digit", 2)
    password = auth.new_password()
    reply = cli._call(
        subjects.CTL_MEMBER_ADD,
        strategy_pb2.MemberRequest(member_id=name, password_hash=auth.hash_password(password)),
        strategy_pb2.MemberList,
        "orchestrator",
    )
    credential = {"url": url or cli.opts.nats_url, "user": auth.member_user(name), "password": password, "member": name}
    if ca is not None:
        credential["ca"] = ca.read_text()
    target = out or cli.opts.credentials.parent / "members" / f"{name}.json"
    write_private_json(target, credential)
    if not as_json:
        console.print(
            f"member {name}: login made; give them {target} (secret: it holds their password). "
            f"On their laptop: desk login {target.name}",
            highlight=False,
            soft_wrap=True,
        )
    _print_members(reply, as_json)


@member_app.command("list")
def member_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The members with a login, and their strategies."""
    from desk.cli import main as cli

    _print_members(
        cli._call(subjects.CTL_MEMBER_LIST, strategy_pb2.MemberRequest(), strategy_pb2.MemberList, "orchestrator"),
        as_json,
    )


@member_app.command("remove")
def member_remove(
    name: Annotated[str, typer.Argument(help="The member whose login to revoke.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Revoke a member's login (their connections are closed). Their strategies are stopped and kept."""
    from desk.cli import main as cli

    _print_members(
        cli._call(
            subjects.CTL_MEMBER_REMOVE,
            strategy_pb2.MemberRequest(member_id=name),
            strategy_pb2.MemberList,
            "orchestrator",
        ),
        as_json,
    )


def login(file: Annotated[Path, typer.Argument(help="The credential file the operator gave you (NAME.json).")]) -> None:
    """Log in as a member: keep the credential where `desk` finds it (~/.config/quant-desk, 0600);
    later commands use it and reach the desk at its url."""
    from desk.cli import main as cli
    from desk.cli.render import console

    credential = read_credential(file)
    if credential is None or member_of_user(credential.get("user", "")) is None or not credential.get("url"):
        cli._fail(f"{file} is not a member credential (url, user member-NAME, password)", 2)
    assert credential is not None
    target = login_path()
    write_private_json(target, credential)
    console.print(
        f"logged in as {credential.get('member') or member_of_user(credential['user'])} "
        f"({credential['url']}); credential kept in {target}",
        highlight=False,
    )


def rollback(
    name: Annotated[str, typer.Argument(help="The uploaded strategy to return to its previous version.")],
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Run the previous uploaded version of a strategy again (versions are kept)."""
    from desk.cli import main as cli

    member = cli.current_member()
    subject = subjects.member_ctl(member, "rollback") if member else subjects.CTL_ROLLBACK
    timeout = cli.opts.timeout if cli.opts.timeout_given else cli.LIFECYCLE_TIMEOUT
    cli._print_status(
        cli._call(
            subject,
            strategy_pb2.StrategyControl(strategy_id=name),
            strategy_pb2.StrategyStatusList,
            "orchestrator",
            timeout=timeout,
        ),
        as_json,
    )
