"""``desk``: the Quant Desk command line.

Run the embedded desk (``desk up``), control strategies, read the books, engage the kill switch and
decode bus traffic. Every command that prints data takes ``--json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import nats
import nats.js.errors
import typer
from google.protobuf.message import Message
from nats.aio.client import Client

from desk.bus import codec, subjects
from desk.bus.errors import DeskError
from desk.bus.logging import configure_logging
from desk.bus.request import request
from desk.bus.servers import open_connection
from desk.cli.backtest_cmd import backtest as backtest_command
from desk.cli.data_cmd import data_app
from desk.cli.inspect_cmd import services as services_command
from desk.cli.inspect_cmd import streams as streams_command
from desk.cli.inspect_cmd import watch as watch_command
from desk.cli.leases_cmd import leases as leases_command
from desk.cli.member_cmd import login as login_command
from desk.cli.member_cmd import member_app
from desk.cli.member_cmd import rollback as rollback_command
from desk.cli.render import console, err_console, money, percent, print_json, signed_money, table, ts
from desk.v1 import ledger_pb2, orders_pb2, strategy_pb2

if TYPE_CHECKING:  # imported when `desk up` runs (reason: the other commands start faster without it)
    from desk import reconcile as rc
    from desk.cli.embedded import EmbeddedDesk

app = typer.Typer(
    name="desk",
    help="Quant Desk: an automated paper-trading desk on NATS. `desk up` runs the whole desk locally.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
app.add_typer(data_app, name="data")  # desk data fetch | list | check
app.command("backtest")(backtest_command)  # desk backtest
app.command("watch")(watch_command)  # desk watch [SUBJECT ...]
app.command("streams")(streams_command)  # desk streams
app.command("services")(services_command)  # desk services [NAME]
app.command("leases")(leases_command)  # desk leases
app.add_typer(member_app, name="member")  # desk member add | list | remove (operator)
app.command("login")(login_command)  # desk login FILE (a member, on their laptop)
app.command("rollback")(rollback_command)  # desk rollback NAME

R = TypeVar("R", bound=Message)


#: Seconds deploy, start, restart and stop wait by default: the orchestrator answers them once the
#: strategy has sent its first heartbeat or exited, within ORCH_START_TIMEOUT (30 s), and a stop may
#: take ORCH_STOP_TIMEOUT (10 s) before SIGKILL.
#: Seconds to reach NATS (each server of the list once); generous, so a busy machine is not "no desk".
CONNECT_TIMEOUT = 5.0
LIFECYCLE_TIMEOUT = 60.0


class Options:
    nats_url: str = "nats://127.0.0.1:4222"
    as_json: bool = False
    timeout: float = 5.0
    timeout_given: bool = False
    credentials: Path = Path("var/credentials/cli.json")


def _credential() -> dict[str, str] | None:
    """The credential file in use: --credentials (the embedded desk's cli.json), else a member's
    `desk login`; None when there is neither."""
    from desk.cli.member_cmd import login_path, read_credential

    return read_credential(opts.credentials) or read_credential(login_path())


def nats_auth() -> dict[str, Any]:
    """The CLI's NATS identity: NATS_USER/NATS_PASSWORD, else the embedded desk's credentials file
    (written by `desk up`), else a member's login (`desk login`), else none (a desk without
    authorization). A member's connection uses the member's own reply inbox."""
    import os

    from desk.bus.auth import member_inbox_prefix
    from desk.cli.member_cmd import member_of_user

    if os.environ.get("NATS_USER"):
        found = {"user": os.environ["NATS_USER"], "password": os.environ.get("NATS_PASSWORD", "")}
    else:
        stored = _credential()
        if stored is None:
            return {}
        found = {"user": stored["user"], "password": stored["password"]}
        if stored.get("ca"):  # a member's login to a desk with TLS: the CA its certificate is checked with
            found["tls_ca_pem"] = stored["ca"]
    member = member_of_user(found["user"])
    if member is not None:
        found["inbox_prefix"] = member_inbox_prefix(member)
    return found


def current_member() -> str | None:
    """The member the CLI acts as (its credential is a member's login); None for the operator."""
    from desk.cli.member_cmd import member_of_user

    return member_of_user(str(nats_auth().get("user", "")))


def _member_subject(subject: str) -> str:
    """``desk.ctl.strategy.<op>`` for the operator; the member's own ``desk.ctl.m.<member>.<op>``."""
    member = current_member()
    return subjects.member_ctl(member, subject.rsplit(".", 1)[1]) if member else subject


opts = Options()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
StrategyOpt = Annotated[str, typer.Option("--strategy", "-s", help="Only this strategy id.")]
MemberOpt = Annotated[str, typer.Option("--member", "-m", help="Only this member (config.json user_id).")]
SymbolOpt = Annotated[str, typer.Option("--symbol", help="Only this symbol.")]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, max=10000, help="At most this many rows.")]


@app.callback()
def main(
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats-url",
            envvar="NATS_URL",
            help=f"NATS server to talk to (default: a member login's url, else {opts.nats_url}).",
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=0.1,
            help=f"Seconds to wait for a reply (default 5; {LIFECYCLE_TIMEOUT:g} for deploy, start, restart, stop).",
        ),
    ] = None,
    credentials: Annotated[
        Path,
        typer.Option(
            "--credentials",
            envvar="DESK_CREDENTIALS",
            help="NATS credentials of the embedded desk (written by `desk up`); NATS_USER/NATS_PASSWORD win.",
        ),
    ] = Options.credentials,
) -> None:
    opts.credentials = credentials
    stored = None if nats_url else _credential()
    opts.nats_url = nats_url or (stored or {}).get("url") or Options.nats_url
    opts.timeout = 5.0 if timeout is None else timeout
    opts.timeout_given = timeout is not None


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


async def _strategy_known(nc: Any, strategy_id: str) -> bool | None:
    """Whether ``strategy_id`` is on the desk (its spec is in KV DESK_STRATEGIES, written at deploy
    and kept after a stop); None when that cannot be read."""
    try:
        js = nc.jetstream()
        await js.get_last_msg(f"KV_{subjects.KV_STRATEGIES}", f"$KV.{subjects.KV_STRATEGIES}.{strategy_id}")
    except nats.js.errors.NotFoundError:  # no such key, or no bucket at all: never deployed here
        return False
    except Exception:  # noqa: BLE001 - no JetStream, no permission, a timeout: we cannot tell
        return None
    return True


async def _member_known(nc: Any, member: str) -> bool | None:
    """Whether ``member`` has a strategy on the desk (a ``StrategySpec`` in DESK_STRATEGIES with that
    member); None when that cannot be read."""
    js = nc.jetstream()
    stream = f"KV_{subjects.KV_STRATEGIES}"
    try:
        keys = await (await js.key_value(subjects.KV_STRATEGIES)).keys()
    except nats.js.errors.NoKeysError:  # an empty bucket: nobody's
        return False
    except nats.js.errors.NotFoundError:  # no bucket at all: never deployed here
        return False
    except Exception:  # noqa: BLE001 - no JetStream, no permission, a timeout: we cannot tell
        return None
    for key in keys:
        spec = strategy_pb2.StrategySpec()
        with contextlib.suppress(Exception):  # gone meanwhile, or not a spec: not this member's
            raw = await js.get_last_msg(stream, f"$KV.{subjects.KV_STRATEGIES}.{key}")
            spec = codec.decode(raw.data or b"", strategy_pb2.StrategySpec, raw.headers)
        if spec.member_id == member:
            return True
    return False


async def cli_connection(errors: list[Exception] | None = None, **options: Any) -> Client:
    """A connection to the desk at --nats-url with the CLI's credentials (``options`` go to
    :func:`desk.bus.servers.open_connection`), or a DeskError a person can act on: a bad address,
    refused credentials, no server. ``errors`` collects what nats-py reports, also after connecting."""
    seen: list[Exception] = [] if errors is None else errors  # a refused login, an unreachable server
    try:
        return await open_connection(
            opts.nats_url, forever=False, connect_timeout=CONNECT_TIMEOUT, errors=seen, **nats_auth(), **options
        )
    except ValueError as exc:  # not a server address
        raise DeskError("BAD_URL", f"--nats-url / NATS_URL: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - any connect failure means the same thing to the user
        if any(isinstance(e, nats.errors.AuthorizationError) or "authorization" in str(e).lower() for e in seen):
            raise DeskError(
                "NOT_AUTHORIZED",
                f"NATS at {opts.nats_url} refused our credentials: pass --credentials (the embedded desk writes "
                f"<data dir>/credentials/cli.json; tried {opts.credentials}) or set NATS_USER/NATS_PASSWORD",
            ) from None
        raise DeskError(
            "NO_DESK", f"cannot reach NATS at {opts.nats_url} ({exc!r}); is the desk running? (`make run`)"
        ) from None


def _call(
    subject: str,
    message: Message,
    reply_type: type[R],
    who: str,
    timeout: float | None = None,
    *,
    strategy: str = "",
    member: str = "",
    empty: Callable[[R], bool] | None = None,
) -> R:
    """One request to a running desk, with errors a person can act on. With ``strategy`` or
    ``member`` (a read filtered by -s / -m) and an ``empty`` reply, an unknown strategy or member is an
    error, not "nothing yet"."""
    wait = opts.timeout if timeout is None else timeout

    async def go() -> R:
        nc = await cli_connection()
        try:
            reply = await request(nc, subject, message, reply_type, timeout=wait)
            if strategy and empty is not None and empty(reply) and await _strategy_known(nc, strategy) is False:
                raise DeskError("NOT_FOUND", f"no strategy {strategy!r} on the desk (`desk status` lists them)")
            if member and empty is not None and empty(reply) and await _member_known(nc, member) is False:
                raise DeskError(
                    "NOT_FOUND", f"no member {member!r} on the desk: no strategy of theirs (`desk status` lists them)"
                )
            return reply
        except nats.errors.NoRespondersError:
            raise DeskError(
                "NO_SERVICE", f"no {who} is running on {opts.nats_url} (nothing answers {subject})"
            ) from None
        except nats.errors.TimeoutError:
            still = " (it may still be working on it: see `desk status`)" if timeout is not None else ""
            raise DeskError("TIMEOUT", f"{who} did not answer {subject} within {wait:g}s{still}") from None
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except DeskError as err:
        _fail(f"{err.code}: {err.message}")
        raise AssertionError("unreachable") from None


# --------------------------------------------------------------------------------------------- up


@app.command()
def up(
    data_dir: Annotated[Path, typer.Option(help="Where NATS JetStream, the ledger database and logs live.")] = Path(
        "var"
    ),
    strategies_dir: Annotated[Path, typer.Option("--strategies", help="Folder of strategies to deploy.")] = Path(
        "strategies"
    ),
    port: Annotated[int, typer.Option(help="Port for the local nats-server (127.0.0.1).")] = 4222,
    cluster: Annotated[
        int,
        typer.Option(
            help="nats-servers to run, clustered on this machine (3 or 5; streams get one copy per server): "
            "client ports PORT, PORT+1, ...; 1 = one server."
        ),
    ] = 1,
    no_strategies: Annotated[bool, typer.Option("--no-strategies", help="Start the services only.")] = False,
    feed: Annotated[
        str | None,
        typer.Option(
            help="Market data feed: synthetic, replay or alpaca (default: MD_FEED, else alpaca with "
            "BROKER=alpaca, else synthetic)."
        ),
    ] = None,
    symbols: Annotated[str, typer.Option(help="Comma-separated symbols for the synthetic feed.")] = "",
    replay_file: Annotated[
        Path | None,
        typer.Option(help="--feed replay: the bars to replay (desk CSV, Yahoo CSV, Alpaca bars; MD_REPLAY_FILE)."),
    ] = None,
    replay_speed: Annotated[
        float | None,
        typer.Option(help="--feed replay: the file's spacing divided by this (0 = at once; MD_REPLAY_SPEED)."),
    ] = None,
    replay_pace: Annotated[
        float | None,
        typer.Option(help="--feed replay: seconds between bars instead, whatever the file's spacing (MD_REPLAY_PACE)."),
    ] = None,
    replay_wait_for: Annotated[
        str,
        typer.Option(
            help="--feed replay: comma-separated strategy ids; the replay starts once each has "
            "started (its first heartbeat), so they see every bar (MD_REPLAY_WAIT_FOR)."
        ),
    ] = "",
    dashboard_port: Annotated[
        int, typer.Option(envvar="DASHBOARD_PORT", help="Port of the web dashboard on 127.0.0.1 (0 = any free port).")
    ] = 8080,
) -> None:
    """Run the embedded desk: nats-server, every service, the broker (BROKER: sim, or alpaca), the feed
    and the strategies, all local. BROKER=alpaca implies MD_FEED=alpaca and ROUTER_VENUE=alpaca.
    Ctrl-C stops everything; the ledger and JetStream data stay in DATA_DIR."""
    import os

    from desk.cli.embedded import EmbeddedDesk, validate_cluster, venue_environment

    configure_logging("desk", "info", "console")
    if (why := validate_cluster(cluster)) is not None:
        _fail(why, 2)
    venues, mismatches = venue_environment(os.environ, feed)
    for mismatch in mismatches:
        err_console.print(f"[bold red]WARNING:[/bold red] {mismatch}", highlight=False)
    extra = {**venues, "DASHBOARD_PORT": str(dashboard_port)}
    extra.update(_feed_environment(symbols, replay_file, replay_speed, replay_pace, replay_wait_for))
    desk = EmbeddedDesk(
        data_dir=data_dir.resolve(),
        strategies_dir=strategies_dir.resolve(),
        port=port,
        cluster=cluster,
        extra_env=extra,
        deploy_strategies=not no_strategies,
    )
    raise typer.Exit(asyncio.run(_run_embedded(desk, port, venues, data_dir)))


def _feed_environment(
    symbols: str, replay_file: Path | None, replay_speed: float | None, replay_pace: float | None, replay_wait_for: str
) -> dict[str, str]:
    """The MD_* variables ``desk up``'s feed options set (an option left out sets none)."""
    extra: dict[str, str] = {}
    if symbols:
        extra["MD_SYMBOLS"] = symbols
    if replay_file is not None:
        extra["MD_REPLAY_FILE"] = str(replay_file.resolve())
    if replay_speed is not None:
        extra["MD_REPLAY_SPEED"] = repr(replay_speed)
    if replay_pace is not None:
        extra["MD_REPLAY_PACE"] = repr(replay_pace)
    if replay_wait_for:
        extra["MD_REPLAY_WAIT_FOR"] = replay_wait_for
    return extra


async def _run_embedded(desk: EmbeddedDesk, port: int, venues: dict[str, str], data_dir: Path) -> int:
    """Run ``desk`` until SIGINT/SIGTERM (or it ends); say how to use it once it is ready."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, desk.stop.set)
    ready = asyncio.create_task(desk.ready.wait())
    runner = asyncio.create_task(desk.run())
    await asyncio.wait({ready, runner}, return_when=asyncio.FIRST_COMPLETED)
    if desk.ready.is_set():
        _announce_up(desk, port, venues, data_dir)
    ready.cancel()
    return await runner


def _announce_up(desk: EmbeddedDesk, port: int, venues: dict[str, str], data_dir: Path) -> None:
    import os

    from rich.markup import escape

    from desk.cli.embedded import cli_command

    servers = desk.local_url if desk.cluster > 1 else f"nats://127.0.0.1:{port}"
    cli = escape(cli_command(port if desk.cluster == 1 else servers, desk.credentials_file, os.environ, Path.cwd()))
    nodes = f" ({desk.cluster} clustered nats-servers, streams R{desk.cluster})" if desk.cluster > 1 else ""
    console.print(
        f"[bold green]desk is up[/bold green] on {servers}{nodes} (broker {venues['BROKER']}, "
        f"feed {venues['MD_FEED']}), dashboard on "
        f"{desk.dashboard_url or '(not running)'} — data in {data_dir}/, logs in "
        f"{data_dir}/logs/.\nTry: [bold]{cli} status[/bold], [bold]{cli} positions[/bold], "
        f"[bold]{cli} leaderboard[/bold] (`nats sub` needs the desk-admin user of {desk.credentials_file}: "
        "see the README). Ctrl-C stops the desk.",
        highlight=False,
        soft_wrap=True,  # never a line break inside the command to copy
    )
    if desk.confinement.startswith("none"):
        console.print(
            f"[bold red]WARNING: strategies run UNCONFINED[/bold red] ({desk.confinement}): each can read "
            "your files, var/ (credentials, the ledger) and other processes. Install bubblewrap "
            "(apt-get install bubblewrap) or see the README's security section."
        )


# ------------------------------------------------------------------------------------ strategies


def _control(subject: str, name: str) -> strategy_pb2.StrategyStatusList:
    lifecycle = subject in (subjects.CTL_DEPLOY, subjects.CTL_START, subjects.CTL_RESTART, subjects.CTL_STOP)
    timeout = None
    if lifecycle:
        timeout = opts.timeout if opts.timeout_given else LIFECYCLE_TIMEOUT
    return _call(
        _member_subject(subject),
        strategy_pb2.StrategyControl(strategy_id=name),
        strategy_pb2.StrategyStatusList,
        "orchestrator",
        timeout=timeout,
    )


def _print_status(result: strategy_pb2.StrategyStatusList, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    if result.desk_halted:
        console.print("[bold red]the whole desk is HALTED[/bold red]: no strategy's orders pass (desk resume)")
    table(
        "strategies",
        ["strategy", "member", "state", "orders", "runtime", "pid / container", "restarts", "last heartbeat", "error"],
        [
            [
                s.strategy_id,
                s.member_id,
                codec.enum_word(strategy_pb2.StrategyState, s.state),
                "[red]HALTED[/red]" if s.halted else ("halted (desk)" if result.desk_halted else "open"),
                s.runtime,
                s.pid or s.container_id[:12],
                s.restarts,
                ts(s.last_heartbeat_ns),
                s.last_error,
            ]
            for s in result.strategies
        ],
    )
    if result.message:  # it quotes strategies' logs: print it as it is, never as rich markup
        console.print(result.message, markup=False, highlight=False)


@app.command()
def deploy(
    name: Annotated[
        str,
        typer.Argument(
            help="Strategy folder name; all strategies if omitted; a path (./my_strategy) uploads that folder."
        ),
    ] = "",
    as_json: JsonOpt = False,
) -> None:
    """(Re)read a strategy's folder, register it and start it. Without NAME: every enabled strategy,
    except those stopped with `desk stop` (their folder is re-read; they stay stopped). With a path
    (`desk deploy ./my_strategy`, from any machine): upload the folder as a new version and run it."""
    from desk.cli.member_cmd import is_folder_argument

    if is_folder_argument(name):
        _print_status(_upload(Path(name)), as_json)
        return
    _print_status(_control(subjects.CTL_DEPLOY, name), as_json)


def _upload(folder: Path) -> strategy_pb2.StrategyStatusList:
    from desk.cli.member_cmd import upload

    if not folder.is_dir():
        _fail(f"{folder} is not a folder (a strategy folder holds strategy.py and config.json)", 2)
    commit_timeout = opts.timeout if opts.timeout_given else LIFECYCLE_TIMEOUT

    async def go() -> strategy_pb2.StrategyStatusList:
        nc = await cli_connection()
        try:
            return await upload(nc, folder, current_member(), opts.timeout, commit_timeout)
        except nats.errors.NoRespondersError:
            raise DeskError("NO_SERVICE", f"no orchestrator is running on {opts.nats_url}") from None
        except nats.errors.TimeoutError:
            raise DeskError(
                "TIMEOUT",
                "the orchestrator did not answer the upload in time (it may still be deploying: see `desk status`)",
            ) from None
        finally:
            await nc.close()

    try:
        return asyncio.run(go())
    except DeskError as err:
        _fail(f"{err.code}: {err.message}")


@app.command()
def stop(
    name: Annotated[str, typer.Argument(help="Strategy to stop; all if omitted.")] = "", as_json: JsonOpt = False
) -> None:
    """Stop a strategy. It stays stopped, across desk restarts too, until `desk start NAME` (or
    `desk deploy NAME`, `desk restart NAME`); `desk deploy` without a name leaves it stopped."""
    _print_status(_control(subjects.CTL_STOP, name), as_json)


@app.command()
def start(
    name: Annotated[str, typer.Argument(help="Strategy to start; all if omitted.")] = "", as_json: JsonOpt = False
) -> None:
    """Start a stopped strategy."""
    _print_status(_control(subjects.CTL_START, name), as_json)


@app.command()
def restart(name: Annotated[str, typer.Argument(help="Strategy to restart.")], as_json: JsonOpt = False) -> None:
    """Restart a strategy now."""
    _print_status(_control(subjects.CTL_RESTART, name), as_json)


@app.command()
def status(
    name: Annotated[str, typer.Argument(help="One strategy; all if omitted.")] = "", as_json: JsonOpt = False
) -> None:
    """Strategies' state: running, crashed (with the last error), stopped; last heartbeat."""
    _print_status(_control(subjects.CTL_STATUS, name), as_json)


@app.command()
def logs(
    name: Annotated[str, typer.Argument(help="Strategy whose output to show.")],
    tail: Annotated[int, typer.Option("--tail", "-n", min=1, max=10000, help="Lines from the end.")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Then print new lines as the strategy writes them, until Ctrl-C.")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """A strategy's recent output (stdout and stderr); with -f, followed live (like tail -f)."""
    if follow:
        _follow_logs(name, tail, as_json)
        return
    reply = _call(
        _member_subject(subjects.CTL_LOGS),
        strategy_pb2.LogsRequest(strategy_id=name, tail=tail),
        strategy_pb2.LogsReply,
        "orchestrator",
    )
    if as_json:
        print_json(reply)
        return
    for line in reply.lines:
        sys.stdout.write(line.rstrip("\n") + "\n")


#: Seconds between two reads of a followed log (at once while the orchestrator has more).
FOLLOW_EVERY = 0.5


def _write_lines(reply: strategy_pb2.LogsReply, as_json: bool) -> None:
    import json

    for line in reply.lines:
        text = json.dumps({"strategy_id": reply.strategy_id, "line": line}) if as_json else line.rstrip("\n")
        sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _follow_logs(name: str, tail: int, as_json: bool) -> None:
    """`desk logs -f`: the last ``tail`` lines, then every line after the reply's cursor, asked every
    FOLLOW_EVERY s (so each line is shown once, none left out while the orchestrator holds it), until
    SIGINT/SIGTERM (exit 0). An orchestrator that does not answer is waited for; a refusal ends it."""
    subject = _member_subject(subjects.CTL_LOGS)

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        nc = await cli_connection()
        try:
            try:
                reply = await request(
                    nc,
                    subject,
                    strategy_pb2.LogsRequest(strategy_id=name, tail=tail),
                    strategy_pb2.LogsReply,
                    timeout=opts.timeout,
                )
            except nats.errors.NoRespondersError:
                raise DeskError("NO_SERVICE", f"no orchestrator is running on {opts.nats_url}") from None
            except nats.errors.TimeoutError:
                raise DeskError(
                    "TIMEOUT", f"the orchestrator did not answer {subject} within {opts.timeout:g}s"
                ) from None
            _write_lines(reply, as_json)
            await _follow_from(nc, subject, reply, stop, as_json)
        finally:
            await nc.close()

    try:
        asyncio.run(go())
    except DeskError as err:
        _fail(f"{err.code}: {err.message}")


async def _follow_from(
    nc: Client, subject: str, reply: strategy_pb2.LogsReply, stop: asyncio.Event, as_json: bool
) -> None:
    cursor, epoch, waiting = reply.next, reply.epoch, False
    more = reply.more
    while not stop.is_set():
        if not more:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FOLLOW_EVERY)
            if stop.is_set():
                return
        asked = strategy_pb2.LogsRequest(strategy_id=reply.strategy_id, follow=True, after=cursor, epoch=epoch)
        try:
            reply = await request(nc, subject, asked, strategy_pb2.LogsReply, timeout=opts.timeout)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if not waiting:
                err_console.print("[yellow]the orchestrator does not answer; still following[/yellow]")
            waiting, more = True, False
            continue
        if waiting or reply.epoch != epoch:
            if reply.epoch != epoch:
                err_console.print("[yellow]--- the orchestrator restarted: its log from here on ---[/yellow]")
            waiting = False
        if reply.skipped:
            err_console.print(
                f"[yellow]--- {reply.skipped} lines not shown: more came between two reads than the "
                "orchestrator keeps (the log file has them) ---[/yellow]"
            )
        _write_lines(reply, as_json)
        cursor, epoch, more = reply.next, reply.epoch, reply.more


# ------------------------------------------------------------------------------------------ books


def _query(strategy: str, member: str, symbol: str, limit: int) -> ledger_pb2.LedgerQuery:
    return ledger_pb2.LedgerQuery(strategy_id=strategy, member_id=member, symbol=symbol.upper(), limit=limit)


@app.command()
def positions(
    strategy: StrategyOpt = "",
    member: MemberOpt = "",
    symbol: SymbolOpt = "",
    limit: LimitOpt = 100,
    as_json: JsonOpt = False,
) -> None:
    """Open positions per strategy, with average cost and P&L."""
    reply = _call(
        subjects.LEDGER_POSITIONS,
        _query(strategy, member, symbol, limit),
        ledger_pb2.PositionsReply,
        "ledger",
        strategy=strategy,
        member=member,
        empty=lambda r: not r.positions,
    )
    if as_json:
        print_json(reply)
        return
    table(
        "positions",
        ["strategy", "member", "symbol", "qty", "avg cost", "last", "market value", "unrealized", "realized"],
        [
            [
                p.strategy_id,
                p.member_id,
                p.symbol,
                p.qty,
                money(p.avg_cost),
                money(p.last_price),
                money(p.market_value),
                signed_money(p.unrealized_pnl),
                signed_money(p.realized_pnl),
            ]
            for p in reply.positions
        ],
        numeric=["qty", "avg cost", "last", "market value", "unrealized", "realized"],
    )


@app.command()
def orders(
    strategy: StrategyOpt = "",
    member: MemberOpt = "",
    symbol: SymbolOpt = "",
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """Orders, newest first, with their status."""
    reply = _call(
        subjects.LEDGER_ORDERS,
        _query(strategy, member, symbol, limit),
        ledger_pb2.OrdersReply,
        "ledger",
        strategy=strategy,
        member=member,
        empty=lambda r: not r.orders,
    )
    if as_json:
        print_json(reply)
        return
    from desk.v1 import common_pb2, executions_pb2

    table(
        "orders",
        [
            "time",
            "strategy",
            "client order id",
            "symbol",
            "side",
            "type",
            "tif",
            "qty",
            "limit",
            "stop",
            "status",
            "filled",
            "avg price",
        ],
        [
            [
                ts(o.created_ns),
                o.strategy_id,
                o.client_order_id,
                o.symbol,
                codec.enum_word(common_pb2.Side, o.side),
                codec.enum_word(common_pb2.OrderType, o.type),
                codec.enum_word(common_pb2.TimeInForce, o.time_in_force),
                o.qty or o.notional,
                o.limit_price,
                o.stop_price,
                codec.enum_word(executions_pb2.OrderStatus, o.status),
                o.filled_qty,
                money(o.avg_price),
            ]
            for o in reply.orders
        ],
        numeric=["qty", "limit", "stop", "filled", "avg price"],
    )


@app.command()
def fills(
    strategy: StrategyOpt = "",
    member: MemberOpt = "",
    symbol: SymbolOpt = "",
    limit: LimitOpt = 50,
    as_json: JsonOpt = False,
) -> None:
    """Fills (executions), newest first."""
    reply = _call(
        subjects.LEDGER_FILLS,
        _query(strategy, member, symbol, limit),
        ledger_pb2.FillsReply,
        "ledger",
        strategy=strategy,
        member=member,
        empty=lambda r: not r.fills,
    )
    if as_json:
        print_json(reply)
        return
    from desk.v1 import common_pb2

    table(
        "fills",
        ["time", "strategy", "member", "symbol", "side", "qty", "price", "fee", "execution id"],
        [
            [
                ts(f.event_ns),
                f.strategy_id,
                f.member_id,
                f.symbol,
                codec.enum_word(common_pb2.Side, f.side),
                f.qty,
                money(f.price),
                money(f.fee),
                f.execution_id[:8],
            ]
            for f in reply.fills
        ],
        numeric=["qty", "price", "fee"],
    )


def _pnl_figures(r: ledger_pb2.PnlRow) -> list[Any]:
    return [
        money(r.cash),
        money(r.market_value),
        money(r.equity),
        signed_money(r.realized_pnl),
        signed_money(r.unrealized_pnl),
        money(r.fees),
        signed_money(r.total_pnl),
        percent(r.return_pct),
        r.fills,
    ]


@app.command()
def pnl(strategy: StrategyOpt = "", member: MemberOpt = "", as_json: JsonOpt = False) -> None:
    """Realized and unrealized P&L per strategy and per member."""
    reply = _call(
        subjects.LEDGER_PNL,
        _query(strategy, member, "", 1000),
        ledger_pb2.PnlReply,
        "ledger",
        strategy=strategy,
        member=member,
        empty=lambda r: not r.strategies,
    )
    if as_json:
        print_json(reply)
        return
    columns = ["cash", "market value", "equity", "realized", "unrealized", "fees", "total P&L", "return", "fills"]
    strategy_rows = [[r.strategy_id, r.member_id, *_pnl_figures(r)] for r in reply.strategies]
    table("P&L per strategy", ["strategy", "member", *columns], strategy_rows, numeric=columns)
    member_rows = [[r.member_id, *_pnl_figures(r)] for r in reply.members]
    table("P&L per member", ["member", *columns], member_rows, numeric=columns)


@app.command()
def leaderboard(limit: LimitOpt = 20, as_json: JsonOpt = False) -> None:
    """Members ranked by return."""
    reply = _call(
        subjects.LEDGER_LEADERBOARD, ledger_pb2.LedgerQuery(limit=limit), ledger_pb2.LeaderboardReply, "ledger"
    )
    if as_json:
        print_json(reply)
        return
    table(
        "leaderboard",
        ["#", "member", "equity", "total P&L", "return", "strategies", "fills"],
        [
            [
                r.rank,
                r.member_id,
                money(r.equity),
                signed_money(r.total_pnl),
                percent(r.return_pct),
                r.strategies,
                r.fills,
            ]
            for r in reply.rows
        ],
        numeric=["equity", "total P&L", "return", "strategies", "fills"],
    )


@app.command()
def equity(strategy: StrategyOpt = "", member: MemberOpt = "", limit: LimitOpt = 100, as_json: JsonOpt = False) -> None:
    """Equity snapshots over time (the data behind equity curves)."""
    reply = _call(
        subjects.LEDGER_EQUITY,
        _query(strategy, member, "", limit),
        ledger_pb2.EquityReply,
        "ledger",
        strategy=strategy,
        member=member,
        empty=lambda r: not r.points,
    )
    if as_json:
        print_json(reply)
        return
    table(
        "equity",
        ["time", "strategy", "member", "equity", "cash", "realized", "unrealized"],
        [
            [
                ts(p.ts_ns),
                p.strategy_id,
                p.member_id,
                money(p.equity),
                money(p.cash),
                signed_money(p.realized_pnl),
                signed_money(p.unrealized_pnl),
            ]
            for p in reply.points
        ],
        numeric=["equity", "cash", "realized", "unrealized"],
    )


@app.command()
def reconcile(
    venue: Annotated[str, typer.Option("--venue", help="The broker gateway to compare with.")] = "alpaca",
    since: Annotated[
        str, typer.Option(help="Check orders and fills created since: an ISO time (UTC) or an age (90m, 6h, 1d).")
    ] = "1d",
    baseline_file: Annotated[
        Path, typer.Option("--baseline", help="The cash baseline (account cash and ledger cash flow at one moment).")
    ] = Path("var/reconcile/alpaca-baseline.json"),
    set_baseline: Annotated[
        bool, typer.Option("--set-baseline", help="Record the cash baseline now (whatever the differences).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Compare the ledger with the broker account: positions per symbol, cash since a baseline, every
    Alpaca fill booked to the right strategy and order, each desk order's filled quantity and average
    price, per-Alpaca-order attribution, internal crosses balanced.

    The account is read with ALPACA_API_KEY/ALPACA_SECRET_KEY (and ALPACA_REST_URL, ALPACA_PAPER) from
    this environment; without them only positions are compared, through the gateway. Prints every
    difference, one per line; exits 1 when there is one (0 when the books agree)."""
    import time

    from desk import reconcile as rc

    now = time.time_ns()
    try:
        since_ns = rc.parse_since(since, now)
    except ValueError:
        _fail(f"--since {since!r}: give an ISO time (2026-12-01T09:30) or an age (90m, 6h, 1d)", 2)
    account = _reconcile_account(venue, since_ns)
    ledger = _reconcile_books(venue, since_ns)
    try:
        baseline = rc.Baseline.load(baseline_file)
    except ValueError as exc:
        _fail(str(exc))
    fresh = account.cash is not None and ledger.cash_flow is not None and (set_baseline or baseline is None)
    if set_baseline and not fresh:
        _fail("--set-baseline needs the account's cash (ALPACA_API_KEY/ALPACA_SECRET_KEY) and the ledger's P&L")
    result = rc.check(ledger, account, since_ns, None if set_baseline else baseline, venue)
    recorded = ""
    if fresh and (set_baseline or result.clean):
        assert account.cash is not None and ledger.cash_flow is not None
        baseline = rc.Baseline(account.account_id, account.cash, ledger.cash_flow, now)
        baseline.save(baseline_file)
        result.not_checked = [r for r in result.not_checked if not r.startswith("cash: no baseline")]
        recorded = (
            f"cash baseline recorded in {baseline_file}: account cash {account.cash}, ledger cash flow "
            f"{ledger.cash_flow}"
        )
    if as_json:
        print_json({**result.as_dict(venue), "baseline_recorded": str(baseline_file) if recorded else ""})
    else:
        for line in result.lines(venue):
            console.print(line, highlight=False)
        if recorded:
            console.print(recorded, highlight=False)
    raise typer.Exit(0 if result.clean else 1)


def _reconcile_account(venue: str, since_ns: int) -> rc.Account:
    """The broker's side: Alpaca's account (with the keys in this environment), else the gateway's positions."""
    import os

    from desk import reconcile as rc

    key, secret = os.environ.get("ALPACA_API_KEY", ""), os.environ.get("ALPACA_SECRET_KEY", "")
    if venue == "alpaca" and key and secret:
        from alpaca.common.exceptions import APIError
        from requests.exceptions import RequestException

        client = rc.make_trading_client(
            key,
            secret,
            paper=os.environ.get("ALPACA_PAPER", "true").lower() not in ("0", "false", "no"),
            rest_url=os.environ.get("ALPACA_REST_URL") or None,
            timeout=max(opts.timeout, 10.0),
        )
        try:
            return rc.fetch_account(client, since_ns)
        except APIError as exc:
            _fail(f"Alpaca refused the reconcile's reads (HTTP {exc.status_code}): {str(exc)[:200]}")
        except RequestException as exc:
            _fail(f"Alpaca unreachable: {type(exc).__name__}")
    broker = _call(
        subjects.broker_positions(venue), ledger_pb2.LedgerQuery(), ledger_pb2.PositionsReply, f"{venue} broker gateway"
    )
    return rc.Account(positions=list(broker.positions))


def _reconcile_books(venue: str, since_ns: int) -> rc.Books:
    """The ledger's side, read over NATS (a clear line and exit 1 if it cannot be read)."""
    from desk import reconcile as rc

    async def books() -> rc.Books:
        nc = await open_connection(opts.nats_url, forever=False, connect_timeout=CONNECT_TIMEOUT, **nats_auth())
        try:
            return await rc.fetch_books(nc, since_ns, venue, timeout=opts.timeout)
        finally:
            await nc.close()

    try:
        return asyncio.run(books())
    except DeskError as err:
        _fail(f"{err.code}: {err.message}")
    except nats.errors.NoRespondersError:
        _fail(f"no ledger is running on {opts.nats_url}")
    except (nats.errors.Error, OSError) as exc:
        _fail(f"cannot read the ledger at {opts.nats_url} ({exc!r}); is the desk running? (`make run`)")


# ------------------------------------------------------------------------------------------- risk


def _halt(subject: str, name: str, reason: str, as_json: bool) -> None:
    import getpass

    member = current_member()
    if member:  # a member halts their own strategies, through the orchestrator, which checks whose they are
        op = "halt" if subject == subjects.RISK_HALT else "resume"
        ack = _call(
            subjects.member_ctl(member, op),
            strategy_pb2.StrategyControl(strategy_id=name),
            orders_pb2.HaltAck,
            "orchestrator",
        )
    else:
        ack = _call(
            subject,
            orders_pb2.HaltRequest(strategy_id=name, reason=reason, requested_by=getpass.getuser()),
            orders_pb2.HaltAck,
            "order_router",
        )
    if as_json:
        print_json(ack)
        return
    state = "[red]HALTED[/red]" if ack.global_halted else "trading"
    console.print(f"desk: {state}; halted strategies: {', '.join(ack.halted_strategies) or 'none'}")
    if ack.message:
        console.print(ack.message)


@app.command()
def halt(
    name: Annotated[str, typer.Argument(help="Strategy to halt; the whole desk if omitted.")] = "",
    reason: Annotated[str, typer.Option(help="Why (kept with the halt).")] = "manual halt",
    as_json: JsonOpt = False,
) -> None:
    """Kill switch: refuse new orders (cancels still pass), for one strategy or the whole desk."""
    _halt(subjects.RISK_HALT, name, reason, as_json)


@app.command()
def resume(
    name: Annotated[str, typer.Argument(help="Strategy to resume; the whole desk if omitted.")] = "",
    as_json: JsonOpt = False,
) -> None:
    """Lift a halt."""
    _halt(subjects.RISK_RESUME, name, "", as_json)


# -------------------------------------------------------------------------------------- provision


@app.command()
def provision(
    replicas: Annotated[
        int,
        typer.Option(
            min=1, max=5, envvar="JS_REPLICAS", help="Copies of every stream and bucket (3 on a 3-node cluster)."
        ),
    ] = 1,
    as_json: JsonOpt = False,
) -> None:
    """Create or bring every JetStream stream and KV bucket of the desk to its settings, with REPLICAS
    copies. Idempotent (run it again: everything is unchanged); the one step that changes streams —
    services only create what is missing and warn about what differs. `desk up` runs it."""
    from desk.bus import streams

    async def go() -> list[streams.Provisioned]:
        try:
            nc = await open_connection(opts.nats_url, forever=False, connect_timeout=CONNECT_TIMEOUT, **nats_auth())
        except Exception as exc:  # noqa: BLE001 - any connect failure means the same thing to the user
            raise DeskError("NO_DESK", f"cannot reach NATS at {opts.nats_url} ({exc!r})") from None
        try:
            return await streams.provision(nc.jetstream(), replicas, log_actions=False)  # printed below
        finally:
            await nc.close()

    try:
        done = asyncio.run(go())
    except DeskError as err:
        _fail(err.message)
    except Exception as exc:  # noqa: BLE001 - JetStream refused (e.g. more replicas than servers)
        _fail(f"provisioning failed: {exc!r}")
    if as_json:
        print_json(
            [
                {
                    "kind": d.kind,
                    "name": d.name,
                    "action": d.action,
                    "replicas": d.replicas,
                    "changes": {k: [str(a), str(b)] for k, (a, b) in d.changes.items()},
                }
                for d in done
            ]
        )
        return
    for d in done:
        changes = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in d.changes.items())
        console.print(
            f"{d.kind:6} {d.name:18} {d.action:9} R{d.replicas}" + (f"  ({changes})" if changes else ""),
            highlight=False,
            markup=False,
        )


# ----------------------------------------------------------------------------------------- decode


@app.command()
def decode(
    subject: Annotated[str, typer.Argument(help="The subject the body was published on (chooses the type).")],
    type_name: Annotated[
        str, typer.Option("--type", "-t", help="Message type, e.g. OrderAck, for subjects without one (replies).")
    ] = "",
) -> None:
    """Read one message body on stdin, print it as JSON.

    For live traffic: nats sub 'desk.>' --translate 'desk decode {{Subject}}'
    """
    data = sys.stdin.buffer.read()
    if type_name:
        full = type_name if "." in type_name else f"desk.v1.{type_name}"
        message_type = codec.MESSAGE_TYPES.get(full)
        if message_type is None:
            _fail(
                f"unknown message type {type_name!r}; known: {', '.join(sorted(n.split('.')[-1] for n in codec.MESSAGE_TYPES))}",
                2,
            )
    else:
        message_type = codec.type_for_subject(subject)
        if message_type is None:
            _fail(
                f"no message type is mapped to subject {subject!r}; pass --type (e.g. --type OrderAck for replies)", 2
            )
    assert message_type is not None
    try:
        message = codec.decode(data, message_type)
    except DeskError as err:
        _fail(f"{err.code}: {err.message}", 1)
        return
    sys.stdout.write(codec.to_json(message) + "\n")


def run() -> None:  # pragma: no cover - console entry alias
    with contextlib.suppress(KeyboardInterrupt):
        app()
