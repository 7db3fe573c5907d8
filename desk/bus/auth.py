"""NATS identities of the desk: a user per service, an admin user for the CLI, and a user per strategy
with permissions that confine it to its own subjects.

Why server config users reloaded on change (and not JWT users or auth callout): the embedded desk
and compose each run one nats-server the desk itself configures, so the simplest mechanism with no
extra tooling (no nsc, no operator/account keys) is enough: the orchestrator rewrites the users file
and sends the server a reload (SIGHUP), which applies new users without restarting NATS or dropping
anyone's connection. Passwords are stored only as bcrypt hashes in that file; a plain password
exists only in the environment of the process that uses it.

A strategy may publish only its own order/cancel subjects and heartbeats (and three ledger queries
the SDK uses to recover its books), and subscribe only to market data, its own executions and its
own reply inbox (``_INBOX_S.<strategy_id>``), so it cannot place orders as another strategy nor read
another's fills or replies.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from desk.bus import confine, subjects
from desk.bus.logging import get_logger

_log = get_logger("desk.bus")

STRATEGY_INBOX_ROOT = confine.STRATEGY_INBOX_ROOT
ADMIN_USER = "desk-admin"
#: The user a site's NATS leaf node connects to the desk's NATS as (services.orchestrator.sites).
LEAF_USER = "desk-leaf"


def new_password() -> str:
    return secrets.token_urlsafe(24)


def hash_password(password: str) -> str:
    """bcrypt, as nats-server accepts in place of a plain password (cost 11: fast enough to reload)."""
    import bcrypt

    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=11)).decode()


def service_user(service: str) -> str:
    return f"svc-{service}"


def strategy_user(strategy_id: str) -> str:
    return f"strategy-{strategy_id}"


def member_user(member: str) -> str:
    return f"member-{member}"


#: A member's reply inbox: under ``_INBOX_S.`` (where every endpoint may answer) but in a token no
#: strategy id can take (ids start with a letter or digit), so no strategy's user can read it.
MEMBER_INBOX_ROOT = f"{STRATEGY_INBOX_ROOT}._m"


def member_inbox_prefix(member: str) -> str:
    return f"{MEMBER_INBOX_ROOT}.{member}"


strategy_inbox_prefix = confine.strategy_inbox_prefix


# What each service may publish (defence in depth beside desk.bus.confine: a service tricked into
# publishing somewhere still cannot write another's bucket, purge or delete a stream, or publish
# executions). Subscriptions stay open to services: they read, the permissions guard writes.


def _stream_rights(stream: str) -> list[str]:
    """Use one stream: create/update/inspect it, read it, run consumers on it, ack and flow-control."""
    api = "$JS.API"
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.CREATE.{stream}",
        f"{api}.STREAM.UPDATE.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.*.{stream}",
        f"{api}.CONSUMER.*.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _bucket_rights(bucket: str, *, write: bool) -> list[str]:
    return _stream_rights(f"KV_{bucket}") + ([f"$KV.{bucket}.>"] if write else [])


#: Every service: answer requests (replies go to inboxes only), JetStream account info.
_COMMON_PUBLISH = [f"{confine.ADMIN_INBOX_ROOT}.>", f"{confine.STRATEGY_INBOX_ROOT}.>", "$JS.API.INFO"]

#: Active/standby (SERVICE_LEASE, desk.bus.lease): the lease bucket, read and written.
_LEASE = _bucket_rights(subjects.KV_LEASES, write=True)

SERVICE_PUBLISH: dict[str, list[str]] = {
    "marketdata": [subjects.MD_ALL, *_bucket_rights(subjects.KV_PRICES, write=True), *_LEASE],
    "ledger": [
        *_stream_rights(subjects.STREAM_EXECUTIONS),
        *_bucket_rights(subjects.KV_STRATEGIES, write=False),
        *_bucket_rights(subjects.KV_PRICES, write=False),
    ],
    "broker_gateway": [
        subjects.EXEC_ALL,
        *_stream_rights(subjects.STREAM_EXECUTIONS),
        *_stream_rights(subjects.STREAM_ORDERS),
        *_bucket_rights(subjects.KV_PRICES, write=False),
        *_LEASE,
    ],
    "order_router": [
        subjects.BROKER_ORDERS.format(venue="*"),
        *_stream_rights(subjects.STREAM_ORDERS),
        *_stream_rights(subjects.STREAM_EXECUTIONS),
        *_bucket_rights(subjects.KV_PRICES, write=False),
        *_bucket_rights(subjects.KV_STRATEGIES, write=False),
        *_bucket_rights(subjects.KV_RISK, write=True),
        *_bucket_rights(subjects.KV_ORDER_IDS, write=True),
        *_LEASE,  # its partitions (services.order_router.partitions)
    ],
    "orchestrator": [
        *_LEASE,
        *_bucket_rights(subjects.KV_STRATEGIES, write=True),
        # uploaded strategies' versions (an object store): write, and purge its own replaced chunks
        *_stream_rights(f"OBJ_{subjects.OBJ_CODE}"),
        f"$O.{subjects.OBJ_CODE}.>",
        f"$JS.API.STREAM.PURGE.OBJ_{subjects.OBJ_CODE}",
        "$JS.API.STREAM.NAMES",  # read-only: nats-py's object store finds its stream by subject with it
        # a member's halt/resume of their own strategy, checked and passed on to the router
        subjects.RISK_HALT,
        subjects.RISK_RESUME,
        # the kill switch followed (read-only) so status shows which strategies are halted
        *_bucket_rights(subjects.KV_RISK, write=False),
    ],
    "dashboard": [
        "desk.ledger.>",
        "desk.ctl.strategy.>",
        "desk.risk.>",
        "$SRV.>",
        *_bucket_rights(subjects.KV_PRICES, write=False),
    ],
}


def service_permissions(service: str) -> dict[str, Any]:
    """The NATS permissions of ``service``'s user: publish only what that service needs, and ask its
    own micro PING/INFO/STATS (the compose healthcheck runs as the service's user)."""
    own_health = [f"$SRV.*.{service}", f"$SRV.*.{service}.>"]
    return {"publish": {"allow": [*_COMMON_PUBLISH, *own_health, *SERVICE_PUBLISH[service]]}}


def service_entry(service: str, password_hash: str) -> dict[str, Any]:
    return user_entry(service_user(service), password_hash, service_permissions(service))


def strategy_permissions(strategy_id: str) -> dict[str, Any]:
    return {
        "publish": {
            "allow": [
                subjects.order_submit(strategy_id),
                subjects.order_cancel(strategy_id),
                subjects.heartbeat(strategy_id),
                *(subjects.ledger_own(kind, strategy_id) for kind in subjects.LEDGER_OWN_KINDS),
            ]
        },
        "subscribe": {
            "allow": [subjects.MD_ALL, subjects.execution(strategy_id), f"{strategy_inbox_prefix(strategy_id)}.>"]
        },
    }


def leaf_permissions() -> dict[str, Any]:
    """What a site's leaf node may carry between its strategies and the desk: any strategy's own
    subjects (``strategy_permissions`` with the id a wildcard), never a member's replies.

    Static, not the union of the site's strategies: nats-server applies a reloaded user's new
    permissions to new connections only, and a leaf connection lives for days (measured: a reload that
    widened a connected leaf user's permissions changed nothing on that connection). Each strategy's
    own confinement is the site's leaf node's users file, written by the orchestrator."""
    one = strategy_permissions("*")
    return {
        "publish": {"allow": one["publish"]["allow"]},
        "subscribe": {"allow": one["subscribe"]["allow"], "deny": [f"{MEMBER_INBOX_ROOT}.>"]},
    }


def leaf_entry(password_hash: str) -> dict[str, Any]:
    return user_entry(LEAF_USER, password_hash, leaf_permissions())


def member_permissions(member: str) -> dict[str, Any]:
    """A member (a person, from their own laptop): their own control subjects and the leaderboard;
    replies only on their own inbox. No JetStream API, no other subject: an upload goes through the
    orchestrator, which checks what it is given."""
    return {
        "publish": {"allow": [f"{subjects.MEMBER_CTL_PREFIX}{member}.>", subjects.LEDGER_LEADERBOARD]},
        "subscribe": {"allow": [f"{member_inbox_prefix(member)}.>"]},
    }


def member_entry(member: str, password_hash: str) -> dict[str, Any]:
    return user_entry(member_user(member), password_hash, member_permissions(member))


def user_entry(user: str, password_hash: str, permissions: dict[str, Any] | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"user": user, "password": password_hash}
    if permissions is not None:
        entry["permissions"] = permissions
    return entry


def strategy_entry(strategy_id: str, password_hash: str) -> dict[str, Any]:
    return user_entry(strategy_user(strategy_id), password_hash, strategy_permissions(strategy_id))


def render_users(users: Iterable[dict[str, Any]]) -> str:
    """The ``authorization`` block nats-server reads (its config format accepts JSON values)."""
    return "authorization {\n  users: " + json.dumps(list(users), indent=2) + "\n}\n"


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by this user only, atomically (no half-written file is
    ever read by a reloading server)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def read_users(path: Path) -> list[dict[str, Any]]:
    users: list[dict[str, Any]] = json.loads(path.read_text())
    return users


_BCRYPT_RE = re.compile(r"^\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}$")


def is_bcrypt(value: str) -> bool:
    return bool(_BCRYPT_RE.match(value))


def read_members(path: Path) -> dict[str, str]:
    """The members file: ``[{"member": ..., "password": <bcrypt>}]``; entries that are not well formed
    are ignored (and logged), a missing file is no members."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        _log.error("members.unreadable", path=str(path), error=repr(exc))
        return {}
    members: dict[str, str] = {}
    for entry in raw if isinstance(raw, list) else []:
        member = entry.get("member") if isinstance(entry, dict) else None
        hashed = entry.get("password") if isinstance(entry, dict) else None
        if (
            isinstance(member, str)
            and subjects.MEMBER_LOGIN_RE.match(member)
            and isinstance(hashed, str)
            and is_bcrypt(hashed)
        ):
            members[member] = hashed
        else:
            _log.warning("members.bad_entry", path=str(path))
    return members


# Compose: `python -m desk.bus.auth init /auth` (the one-shot nats-auth service) ---------------------


def init_directory(directory: Path, services: Iterable[str], group_id: int | None = None) -> bool:
    """Make the users of a compose desk in ``directory`` once: ``base-users.json`` and ``auth.conf``
    (hashes only) and ``secrets/<user>`` (one plain password per file, readable by ``group_id``, the
    services' group). Returns False when they exist already (passwords stay stable across restarts)."""
    if (directory / "base-users.json").exists():
        upgrade_permissions(directory, services)
        return False
    passwords = {service_user(name): new_password() for name in services}
    admin_password, leaf_password = new_password(), new_password()
    base = [service_entry(name, hash_password(passwords[service_user(name)])) for name in services]
    base.append(user_entry(ADMIN_USER, hash_password(admin_password)))
    base.append(leaf_entry(hash_password(leaf_password)))
    passwords[ADMIN_USER] = admin_password
    secrets_dir = directory / "secrets"
    secrets_dir.mkdir(parents=True, exist_ok=True)
    for user, password in passwords.items():
        _write_secret(secrets_dir / user, password, group_id)
    write_private(secrets_dir / LEAF_USER, leaf_password)  # root only: it leaves for a site's machine
    if group_id is not None:
        os.chown(secrets_dir, 0, group_id)
        os.chmod(secrets_dir, 0o750)
    write_private(directory / "auth.conf", render_users(base))
    write_private(directory / "base-users.json", json.dumps(base))  # last: marks the directory complete
    return True


def _write_secret(path: Path, password: str, group_id: int | None) -> None:
    write_private(path, password)
    if group_id is not None:
        os.chown(path, 0, group_id)
        os.chmod(path, 0o640)


def placeholder_users() -> str:
    """A users file no one can log in with (one user, a random password never kept): what a site's
    leaf node starts with before the orchestrator writes its strategies' users. Never an empty list,
    which a nats-server could take for "no authorization"."""
    return render_users([user_entry(f"nobody-{secrets.token_hex(4)}", hash_password(new_password()))])


def site_users(entries: Iterable[dict[str, Any]]) -> str:
    """The users file of a site's leaf node: its strategies' users (the placeholder when none)."""
    users = list(entries)
    return render_users(users) if users else placeholder_users()


def leaf_url(directory: Path, hub: str) -> str:
    """``hub`` (``nats-leaf://host:7422``) with the leaf user's credentials: a site's LEAF_HUB_URL."""
    if not hub.startswith("nats-leaf://") or "@" in hub:
        raise ValueError(f"--hub must look like nats-leaf://host:7422 (no credentials), got {hub!r}")
    password = (directory / "secrets" / LEAF_USER).read_text().strip()
    return f"nats-leaf://{LEAF_USER}:{password}@{hub.removeprefix('nats-leaf://')}"


def upgrade_permissions(directory: Path, services: Iterable[str]) -> bool:
    """Bring the service users of an existing desk (made by an earlier release, when services could
    publish anything) up to today's permissions, keeping their passwords. True when it changed any."""
    path = directory / "base-users.json"
    users = read_users(path)
    wanted = {service_user(name): service_permissions(name) for name in services}
    wanted[LEAF_USER] = leaf_permissions()
    changed = False
    if not any(entry.get("user") == LEAF_USER for entry in users):  # a desk from before sites
        password = new_password()
        write_private(directory / "secrets" / LEAF_USER, password)
        users.append(leaf_entry(hash_password(password)))
        changed = True
    for entry in users:
        permissions = wanted.get(entry.get("user", ""))
        if permissions is not None and entry.get("permissions") != permissions:
            entry["permissions"] = permissions
            changed = True
    if changed:
        write_private(directory / "auth.conf", render_users(users))
        write_private(path, json.dumps(users))
    return changed


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m desk.bus.auth", description="NATS users of a compose desk")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="make the service and admin users once (the nats-auth service)")
    init.add_argument("directory", type=Path)
    init.add_argument("--services", default="marketdata,ledger,broker_gateway,order_router,orchestrator,dashboard")
    init.add_argument("--group", type=int, default=10001, help="group that may read the service passwords")
    cli = commands.add_parser("cli-credentials", help="print the admin credentials as the desk CLI reads them")
    cli.add_argument("directory", type=Path)
    leaf = commands.add_parser(
        "leaf-url", help="print a site's LEAF_HUB_URL: the desk's leaf port with the leaf user's credentials"
    )
    leaf.add_argument("directory", type=Path)
    leaf.add_argument("--hub", required=True, help="the desk's leaf port as the site reaches it: nats-leaf://host:7422")
    site = commands.add_parser("site-init", help="a site's leaf node: its first users file (no one can log in)")
    site.add_argument("directory", type=Path)
    args = parser.parse_args(argv)
    if args.command == "init":
        made = init_directory(args.directory, args.services.split(","), args.group)
        print("made the desk's NATS users" if made else "the desk's NATS users exist already")
        return 0
    if args.command == "leaf-url":
        try:
            print(leaf_url(args.directory, args.hub))
        except (OSError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "site-init":
        if (args.directory / "auth.conf").exists():
            print("the site's users file exists already (the orchestrator keeps it)")
            return 0
        write_private(args.directory / "auth.conf", placeholder_users())
        print("made the site's first users file")
        return 0
    password = (args.directory / "secrets" / ADMIN_USER).read_text().strip()
    print(json.dumps({"user": ADMIN_USER, "password": password}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
