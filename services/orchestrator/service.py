"""The orchestrator service: ``desk.ctl.strategy.*`` endpoints, strategy processes, heartbeats.

Every strategy has a :class:`Supervisor` (the pure restart policy and heartbeat watchdog) and a
lock that serialises what users, the restart timer and the watchdog do to *it*; nothing holds more
than one strategy's lock, and requests on several strategies act on each in its own task
(``gather``), so one strategy stuck in its stop never delays another. The control endpoints handle
several requests at once (each strategy's lock keeps them consistent); status, list and logs take
no lock at all and answer while a stop or a deploy is in progress.

Deploy validates the folder (:mod:`services.orchestrator.discovery`, which applies the desk-wide
rule :func:`desk.specs.validate_spec`, and refuses a runtime other than ours), writes the
``StrategySpec`` to KV ``DESK_STRATEGIES`` before the process starts (so the router knows the
strategy before its first order), then **waits for the outcome**, at most ORCH_START_TIMEOUT: the
first heartbeat (RUNNING) or the process ending (FAILED when it could not even load: see
:mod:`services.orchestrator.supervisor`), answered with ``last_error`` (the traceback's last line)
and, in the reply's ``message``, the tail of the strategy's log. start and restart wait the same
way. The autodeploy at service start launches every enabled strategy in parallel and does not
wait for heartbeats, so readiness is not held up by strategies.

A periodic check (every half heartbeat interval, at most 1 s) asks each supervisor's watchdog
whether its run is hung (no heartbeat for ORCH_HEARTBEAT_MISSES intervals, or none within
ORCH_START_TIMEOUT); a hung run is killed (it cannot act on SIGTERM, so it gets at most one interval
before SIGKILL) and its exit is a crash: backoff, restart, FAILED after ORCH_MAX_RESTARTS. Strategies
are told the interval (DESK_HEARTBEAT_INTERVAL) unless their config asks for a shorter one.
On shutdown every strategy is stopped (SIGTERM, then SIGKILL after ORCH_STOP_TIMEOUT).

**A stop lasts.** ``desk stop X`` records the wish in the strategy's own ``DESK_STRATEGIES`` entry
(the same ``StrategySpec``, written again with the header ``Desk-Desired: stopped``; the router and
the ledger read only the spec), so when the orchestrator (or the whole desk) starts again X is
registered, shown STOPPED and not launched. ``desk start X``, ``desk restart X`` and ``desk deploy X``
write it back without the header and run it. ``desk deploy`` without a name re-reads every folder but
leaves the strategies stopped by request stopped (their spec refreshed), and says so. The
orchestrator's own shutdown stops strategies without recording anything.

**Halts and logs.** The orchestrator follows the router's ``DESK_RISK`` bucket (read-only), so every
status says which strategies are halted (``halted``) and whether the whole desk is (``desk_halted``);
a member's halt/resume through it is shown at once. ``logs`` answers with a cursor (``next`` in
``epoch``, the runtime's count of lines); a request with ``follow`` gets the lines after the cursor it
passes back, each line once (``desk logs -f``), ``skipped`` counting those the ring no longer held.

Invalid strategy folders are not deployable; since ``StrategyList`` has no room for errors, their
messages are reported in the ``message`` of every ``StrategyStatusList`` reply (status, deploy...).

**Members and uploads** (issue 15). A member's requests come on ``desk.ctl.m.<member>.<op>``, which
only that member's NATS user may publish: the member is taken from the subject, and each op acts on
the member's own strategies only (NOT_YOURS otherwise); replies go only to the member's own inbox
(:class:`MemberAwareService`). ``desk deploy ./folder`` uploads the folder in chunks (upload) and
commits it (commit): checked by :mod:`services.orchestrator.uploads`, stored as a new version in the
object store (:mod:`services.orchestrator.codestore`), unpacked under ORCH_CODE_DIR and run like any
strategy (an uploaded version wins over a folder of the same name; the docker runtime runs it from
a volume filled from that folder); rollback runs the previous version. The operator adds and removes members (``desk.ctl.member.*``; logins in
:mod:`services.orchestrator.identities`).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro.request import Request

import desk
from desk.bus import auth, codec, confine, kv, subjects
from desk.bus.errors import DeskError
from desk.bus.kv import Change
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import DeskService, add_service
from desk.bus.request import request as bus_request
from desk.bus.retry import retrying
from desk.bus.streams import ensure_bucket
from desk.v1 import orders_pb2, strategy_pb2
from services.orchestrator import uploads
from services.orchestrator.codestore import CodeStore, Pointer
from services.orchestrator.discovery import (
    CONFIG_FILE,
    STRATEGY_FILE,
    DiscoveredStrategy,
    Discovery,
    StrategyConfigError,
    discover,
    load_folder,
    validate_strategy,
)
from services.orchestrator.identities import NatsIdentities, is_bcrypt
from services.orchestrator.runtimes.base import ExitInfo, RunHandle, Runtime
from services.orchestrator.runtimes.docker import DockerRuntime
from services.orchestrator.runtimes.process import ProcessRuntime
from services.orchestrator.runtimes.sited import SitedRuntime, UnknownSite
from services.orchestrator.settings import Settings
from services.orchestrator.sites import Site, parse_sites
from services.orchestrator.supervisor import ACTIVE, FAILED, STOPPED, RestartPolicy, Supervisor

NAME = "orchestrator"
log = get_logger(NAME)
DEFAULT_TAIL = 100
MAX_TAIL = 1000
START_FAILED_EXIT_CODE = 127
#: Control requests (deploy, start, stop, restart) handled at once: each may wait on its strategies.
CONTROL_CONCURRENCY = 16
#: The runtimes that run uploaded versions (desk deploy ./folder); any other refuses uploads.
UPLOAD_RUNTIMES = ("process", "docker")
#: Log lines of a failed start quoted in the reply, each cut to LOG_LINE_CHARS.
FAILURE_TAIL = 20
LOG_LINE_CHARS = 300
#: The reply's ``message`` is cut to this (replies must stay under codec.MAX_MESSAGE_BYTES).
MESSAGE_CHARS = 24 * 1024
LAST_ERROR_CHARS = 1000
BANNER = "--- started pid"
#: Header on a DESK_STRATEGIES entry: the desired state a user asked for (absent: run it).
DESIRED_HEADER = "Desk-Desired"
DESIRED_STOPPED = "stopped"
#: DESK_STRATEGIES through an election (desk.bus.retry): seconds per attempt, and retried for at
#: most (a spec write is a put, safe to repeat; a deploy waits for it, well inside the CLI's wait).
KV_ATTEMPT_TIMEOUT = 2.0
SPEC_WRITE_DEADLINE = 10.0
SPEC_READ_DEADLINE = 5.0
#: The owner of a name taken by an invalid folder in the strategies folder (no member may take it).
FOLDER_OWNER = "the desk's strategies folder"


@dataclass
class Managed:
    """A deployed strategy: its spec, its supervisor, and what is running for it."""

    spec: strategy_pb2.StrategySpec
    supervisor: Supervisor
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handle: RunHandle | None = None
    watcher: asyncio.Task[None] | None = None
    restart_task: asyncio.Task[None] | None = None
    kill_task: asyncio.Task[None] | None = None
    #: Set when the current run's outcome is known: first heartbeat, exit, or declared hung.
    outcome: asyncio.Event = field(default_factory=asyncio.Event)
    #: Stopped by a user, and recorded so (DESIRED_HEADER): not launched by autodeploy or deploy-all.
    held: bool = False

    @property
    def strategy_id(self) -> str:
        return str(self.spec.strategy_id)


class OrchestratorService:
    def __init__(
        self, settings: Settings, runtime: Runtime | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.runtime: Runtime = runtime or make_runtime(settings)
        self.identities: NatsIdentities | None = None
        if settings.orch_nats_auth_file and settings.orch_nats_base_users:
            reload = None
            if settings.orch_nats_reload == "docker":
                if not isinstance(self.runtime, DockerRuntime | SitedRuntime):
                    raise ValueError("ORCH_NATS_RELOAD=docker needs ORCH_RUNTIME=docker")
                reload = self.runtime.reload_nats
            site_users = self.runtime.sites if isinstance(self.runtime, SitedRuntime) else {}
            self.identities = NatsIdentities(
                nats_url=settings.nats_url,
                auth_file=settings.orch_nats_auth_file,
                base_users_file=settings.orch_nats_base_users,
                pid_file=settings.orch_nats_pid_file,
                reload=reload,
                members_file=settings.orch_nats_members_file,
                sites=dict(site_users),
            )
        self.clock = clock
        self.policy = RestartPolicy(
            backoff_initial=settings.orch_backoff_initial,
            backoff_max=settings.orch_backoff_max,
            stable_after=settings.orch_stable_after,
            max_restarts=settings.orch_max_restarts,
            heartbeat_interval=settings.orch_heartbeat_interval,
            heartbeat_misses=settings.orch_heartbeat_misses,
            start_timeout=settings.orch_start_timeout,
        )
        self.managed: dict[str, Managed] = {}
        self.invalid: dict[str, str] = {}
        self.heartbeats: dict[str, int] = {}
        self.bad_heartbeats = 0
        self._js: JetStreamContext | None = None
        self._nc: Client | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self.uploads = uploads.Uploads(settings.orch_upload_max_bytes)
        self.code: CodeStore | None = None
        #: uploaded strategies (DESK_CODE): whose, and which version runs
        self.pointers: dict[str, Pointer] = {}
        self._code_locks: dict[str, asyncio.Lock] = {}
        #: DESK_RISK keys holding a halt (``halt._global``, ``halt.<id>``), followed from the bucket the
        #: router writes: what status shows as halted
        self.halted: set[str] = set()

    # -- service shell -------------------------------------------------------------------------

    async def start(self, runtime: ServiceRuntime) -> None:
        await ensure_bucket(runtime.js, subjects.KV_STRATEGIES)
        await ensure_bucket(runtime.js, subjects.KV_RISK)
        await kv.follower(runtime.js, subjects.KV_RISK, self._on_risk).start(runtime, self.settings.orch_start_timeout)
        self._js = runtime.js
        self._nc = runtime.nc
        self.code = await CodeStore.open(runtime.js)
        self.pointers = await self.code.pointers()
        for pointer in list(self.pointers.values()):
            try:
                await self._materialise(pointer.strategy_id, pointer.current)
            except Exception as exc:  # noqa: BLE001 - one bad version must not keep the others from running
                log.error(
                    "code.materialise_failed", strategy_id=pointer.strategy_id, version=pointer.current, error=repr(exc)
                )
        if self.identities is not None:
            await self.identities.sync()  # members log in again after a restart
        svc = await add_service(
            runtime,
            NAME,
            desk.__version__,
            "strategy lifecycle: deploy, start, stop, restart, status, list, logs; watches heartbeats",
            metadata={
                "runtime": self.runtime.name,
                "confinement": self.runtime.confinement,
                "strategies_dir": str(self.settings.orch_strategies_dir),
            },
        )
        svc.__class__ = MemberAwareService  # the same service, with the members' reply rule (below)
        control = strategy_pb2.StrategyControl
        many = CONTROL_CONCURRENCY
        await svc.add_endpoint("deploy", subjects.CTL_DEPLOY, control, self.on_deploy, concurrency=many)
        await svc.add_endpoint("start", subjects.CTL_START, control, self.on_start, concurrency=many)
        await svc.add_endpoint("stop", subjects.CTL_STOP, control, self.on_stop, concurrency=many)
        await svc.add_endpoint("restart", subjects.CTL_RESTART, control, self.on_restart, concurrency=many)
        await svc.add_endpoint("status", subjects.CTL_STATUS, control, self.on_status)
        await svc.add_endpoint("list", subjects.CTL_LIST, control, self.on_list)
        await svc.add_endpoint("logs", subjects.CTL_LOGS, strategy_pb2.LogsRequest, self.on_logs)
        await self._add_code_endpoints(svc)
        sub = await runtime.nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_heartbeat)
        await self.runtime.cleanup()
        # Unwound in reverse: strategies stop first, then the subscription, then the micro service.
        runtime.stack.push_async_callback(sub.unsubscribe)
        runtime.stack.push_async_callback(self.shutdown)
        self._watchdog = asyncio.create_task(self._watchdog_loop(), name="orchestrator.watchdog")
        if self.settings.orch_autodeploy:
            await self._autodeploy()
        # The server has our subscriptions once this returns: no "no responders" right after ready.

    def _on_risk(self, change: Change[orders_pb2.HaltRequest]) -> None:
        """The kill switch as the router keeps it (the follower applies checked values only, in order)."""
        if change.value is None:
            self.halted.discard(change.key)
        else:
            self.halted.add(change.key)

    async def _autodeploy(self) -> None:
        """Launch every enabled strategy, in parallel, without waiting for their heartbeats; those a
        user stopped (recorded in DESK_STRATEGIES) are registered, STOPPED, and not launched."""
        found = await self._discover()
        results = await asyncio.gather(
            *(self._deploy(s, wait=False, keep_stopped=True) for s in found.enabled), return_exceptions=True
        )
        for strategy, result in zip(found.enabled, results, strict=True):
            if isinstance(result, BaseException):
                log.error("strategy.autodeploy_failed", strategy_id=strategy.spec.strategy_id, error=repr(result))

    async def shutdown(self) -> None:
        """Stop every strategy so no process outlives the orchestrator."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
            self._watchdog = None
        if self.managed:
            log.info("orchestrator.stopping_strategies", count=len(self.managed))
        await asyncio.gather(*(self._stop(m) for m in list(self.managed.values())), return_exceptions=True)

    # -- endpoints -----------------------------------------------------------------------------

    async def on_deploy(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        found = await self._discover()
        if request.strategy_id:
            targets = [self._found(found, request.strategy_id)]
        else:
            targets = found.enabled
        keep = not request.strategy_id  # deploy-all leaves what a user stopped stopped; deploy X runs X
        results = await asyncio.gather(
            *(self._deploy(s, wait=True, keep_stopped=keep) for s in targets), return_exceptions=True
        )
        errors = self._raise_or_note(targets, results)
        held = sorted(
            s.spec.strategy_id
            for s in targets
            if s.spec.strategy_id in self.managed and self.managed[s.spec.strategy_id].held
        )
        if held:
            errors.append(
                "stopped by request, left stopped: "
                + ", ".join(held)
                + f" (desk start {held[0] if len(held) == 1 else 'NAME'} runs it)"
            )
        deployed = [self.managed[s.spec.strategy_id] for s in targets if s.spec.strategy_id in self.managed]
        return await self._outcome_list(deployed, errors)

    async def on_start(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        return await self._start_targets(self._targets(request.strategy_id))

    async def _start_targets(self, targets: list[Managed]) -> strategy_pb2.StrategyStatusList:
        async def start(m: Managed) -> None:
            async with m.lock:
                await self._set_held(m, False)
                if m.supervisor.state in ACTIVE:
                    return
                await self._start_locked(m)
                outcome = m.outcome
            await self._await_outcome(outcome)

        self._raise_first(await asyncio.gather(*(start(m) for m in targets), return_exceptions=True))
        return await self._outcome_list(targets)

    async def on_stop(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        return await self._stop_targets(self._targets(request.strategy_id))

    async def _stop_targets(self, targets: list[Managed]) -> strategy_pb2.StrategyStatusList:
        async def stop(m: Managed) -> None:
            async with m.lock:
                await self._set_held(m, True)  # recorded first: a stop survives a restart mid-way
                await self._stop_locked(m)

        await asyncio.gather(*(stop(m) for m in targets))
        return self._status_list(targets)

    async def on_restart(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        return await self._restart_targets(self._targets(request.strategy_id))

    async def _restart_targets(self, targets: list[Managed]) -> strategy_pb2.StrategyStatusList:
        async def restart(m: Managed) -> None:
            async with m.lock:
                await self._set_held(m, False)
                await self._stop_locked(m)
                await self._start_locked(m)
                outcome = m.outcome
            await self._await_outcome(outcome)

        self._raise_first(await asyncio.gather(*(restart(m) for m in targets), return_exceptions=True))
        return await self._outcome_list(targets)

    async def on_status(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        return self._status_list(self._targets(request.strategy_id))

    async def on_list(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyList:
        found = await self._discover()
        specs = [s.spec for s in found.strategies.values()]
        if request.strategy_id:
            specs = [self._found(found, request.strategy_id).spec]
        return strategy_pb2.StrategyList(strategies=specs)

    async def on_logs(self, request: strategy_pb2.LogsRequest, subject: str) -> strategy_pb2.LogsReply:
        """The last ``tail`` lines, or with ``follow`` the lines after the cursor (``after``, ``epoch``)
        of a previous reply; every reply carries the cursor after its lines (`desk logs -f`)."""
        strategy_id = request.strategy_id
        if strategy_id not in self.managed and not subjects.STRATEGY_ID_RE.match(strategy_id):
            raise self._unknown(strategy_id)
        after = request.after if request.follow and request.epoch == self.runtime.log_epoch else 0
        tail = min(request.tail or DEFAULT_TAIL, MAX_TAIL)
        part = await self.runtime.follow_logs(strategy_id, after if request.follow else None, tail)
        # not deployed now, and no log of an earlier run (a follow: nor of one under this orchestrator)
        if not part.lines and strategy_id not in self.managed and (not request.follow or part.next == 0):
            raise self._unknown(strategy_id)
        return strategy_pb2.LogsReply(
            strategy_id=strategy_id,
            lines=part.lines,
            next=part.next,
            epoch=self.runtime.log_epoch,
            skipped=part.skipped,
            more=part.more,
        )

    # -- members and uploads -------------------------------------------------------------------
    #
    # A member's requests arrive on desk.ctl.m.<member>.<op>, which only that member's NATS user may
    # publish (desk.bus.auth.member_permissions): the member is the subject's, as the server delivered
    # it, never a field of the message. Each acts only on the member's own strategies (NOT_YOURS
    # otherwise). The operator (admin user) keeps desk.ctl.strategy.* and may do everything.

    async def _add_code_endpoints(self, svc: DeskService) -> None:
        control = strategy_pb2.StrategyControl
        many = CONTROL_CONCURRENCY
        await svc.add_endpoint("upload", subjects.CTL_UPLOAD, strategy_pb2.UploadChunk, self.on_upload)
        await svc.add_endpoint(
            "commit", subjects.CTL_COMMIT, strategy_pb2.UploadCommit, self.on_commit, concurrency=many
        )
        await svc.add_endpoint("rollback", subjects.CTL_ROLLBACK, control, self.on_rollback, concurrency=many)
        await svc.add_endpoint("member_add", subjects.CTL_MEMBER_ADD, strategy_pb2.MemberRequest, self.on_member_add)
        await svc.add_endpoint(
            "member_remove", subjects.CTL_MEMBER_REMOVE, strategy_pb2.MemberRequest, self.on_member_remove
        )
        await svc.add_endpoint("member_list", subjects.CTL_MEMBER_LIST, strategy_pb2.MemberRequest, self.on_member_list)
        member = {
            "deploy": (control, self.on_member_deploy),
            "start": (control, self.on_member_start),
            "stop": (control, self.on_member_stop),
            "restart": (control, self.on_member_restart),
            "status": (control, self.on_member_status),
            "logs": (strategy_pb2.LogsRequest, self.on_member_logs),
            "upload": (strategy_pb2.UploadChunk, self.on_upload),
            "commit": (strategy_pb2.UploadCommit, self.on_commit),
            "rollback": (control, self.on_rollback),
            "halt": (control, self.on_member_halt),
            "resume": (control, self.on_member_halt),
        }
        assert set(member) == set(subjects.MEMBER_OPS)
        for op, (request_type, handler) in member.items():
            await svc.add_endpoint(
                f"m_{op}",
                subjects.member_ctl("*", op),
                request_type,
                handler,  # type: ignore[arg-type]
                concurrency=1 if op == "upload" else many,
            )

    @staticmethod
    def _member(subject: str) -> str:
        member = subjects.member_of(subject)
        if member is None:  # the endpoint's subscription is desk.ctl.m.*.<op>: cannot happen
            raise DeskError("BAD_SUBJECT", f"not a member subject: {subject}")
        return member

    def _owner(self, strategy_id: str, found: Discovery | None = None) -> str | None:
        """Whose strategy ``strategy_id`` is: its uploaded record's member, else its spec's (deployed,
        or found in the strategies folder); None when there is no such strategy."""
        if strategy_id in self.pointers:
            return self.pointers[strategy_id].member
        if strategy_id in self.managed:
            return str(self.managed[strategy_id].spec.member_id)
        if found is not None and strategy_id in found.strategies:
            return str(found.strategies[strategy_id].spec.member_id)
        if found is not None and strategy_id in found.errors:  # a folder of the desk's own, invalid: not free
            return FOLDER_OWNER
        return None

    def _own(self, member: str, strategy_id: str) -> None:
        """Refuse unless ``strategy_id`` is deployed and ``member``'s."""
        owner = self._owner(strategy_id)
        if owner is None:
            raise self._unknown(strategy_id)
        if owner != member:
            raise DeskError(
                "NOT_YOURS",
                f"strategy {strategy_id!r} is not yours ({member}): only its owner or the operator may control it",
                status=403,
            )

    def _own_targets(self, member: str, strategy_id: str) -> list[Managed]:
        if not strategy_id:
            return [m for m in self.managed.values() if m.spec.member_id == member]
        self._own(member, strategy_id)
        return self._targets(strategy_id)

    @staticmethod
    def _for_member(reply: strategy_pb2.StrategyStatusList) -> strategy_pb2.StrategyStatusList:
        """A reply to a member without the desk-wide notes (other members' invalid folders)."""
        reply.message = " | ".join(n for n in reply.message.split(" | ") if not n.startswith("invalid strategies"))
        return reply

    async def on_member_status(
        self, request: strategy_pb2.StrategyControl, subject: str
    ) -> strategy_pb2.StrategyStatusList:
        return self._for_member(self._status_list(self._own_targets(self._member(subject), request.strategy_id)))

    async def on_member_start(
        self, request: strategy_pb2.StrategyControl, subject: str
    ) -> strategy_pb2.StrategyStatusList:
        targets = self._own_targets(self._member(subject), request.strategy_id)
        return self._for_member(await self._start_targets(targets))

    async def on_member_stop(
        self, request: strategy_pb2.StrategyControl, subject: str
    ) -> strategy_pb2.StrategyStatusList:
        targets = self._own_targets(self._member(subject), request.strategy_id)
        return self._for_member(await self._stop_targets(targets))

    async def on_member_restart(
        self, request: strategy_pb2.StrategyControl, subject: str
    ) -> strategy_pb2.StrategyStatusList:
        if not request.strategy_id:
            raise DeskError("NAME_REQUIRED", "name the strategy to restart")
        targets = self._own_targets(self._member(subject), request.strategy_id)
        return self._for_member(await self._restart_targets(targets))

    async def on_member_deploy(
        self, request: strategy_pb2.StrategyControl, subject: str
    ) -> strategy_pb2.StrategyStatusList:
        """Run a member's strategy again from what the desk has (its current version); a new version
        comes with an upload (desk deploy ./folder)."""
        member = self._member(subject)
        if not request.strategy_id:
            raise DeskError("NAME_REQUIRED", "name the strategy, or deploy a folder: desk deploy ./my_strategy")
        found = await self._discover()
        owner = self._owner(request.strategy_id, found)
        if owner is None:
            raise self._unknown(request.strategy_id)
        if owner != member:
            raise DeskError("NOT_YOURS", f"strategy {request.strategy_id!r} is not yours ({member})", status=403)
        return self._for_member(await self._deploy_one(found, request.strategy_id))

    async def on_member_logs(self, request: strategy_pb2.LogsRequest, subject: str) -> strategy_pb2.LogsReply:
        self._own(self._member(subject), request.strategy_id)
        return await self.on_logs(request, subject)

    async def on_member_halt(self, request: strategy_pb2.StrategyControl, subject: str) -> orders_pb2.HaltAck:
        """A member's kill switch, for one of their own strategies only (the desk-wide one is the
        operator's): checked here, passed on to the router with the orchestrator's identity."""
        member = self._member(subject)
        if not request.strategy_id:
            raise DeskError(
                "NAME_REQUIRED",
                "members halt their own strategies: name one (the whole desk is the operator's)",
                status=403,
            )
        self._own(member, request.strategy_id)
        assert self._nc is not None
        target = subjects.RISK_HALT if subject.endswith(".halt") else subjects.RISK_RESUME
        try:
            ack = await bus_request(
                self._nc,
                target,
                orders_pb2.HaltRequest(
                    strategy_id=request.strategy_id,
                    reason=f"halted by member {member}",
                    requested_by=f"member:{member}",
                ),
                orders_pb2.HaltAck,
                timeout=5.0,
            )
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            raise DeskError("NO_SERVICE", "the order router did not answer the halt", status=503) from None
        # what the router did is known now: status says so before the DESK_RISK watch brings it
        key = subjects.halt_key(request.strategy_id)
        if target == subjects.RISK_HALT:
            self.halted.add(key)
        else:
            self.halted.discard(key)
        own = {m.strategy_id for m in self.managed.values() if m.spec.member_id == member}
        halted = sorted(own & set(ack.halted_strategies))  # the member's own halted strategies only
        del ack.halted_strategies[:]
        ack.halted_strategies.extend(halted)
        return ack

    # uploads

    def _uploader(self, subject: str) -> str | None:
        """The member of a member subject; None for the operator's desk.ctl.strategy.* subjects."""
        return subjects.member_of(subject)

    def _uploads_supported(self) -> None:
        # process: runs the unpacked version's folder; docker: a volume filled from it (runtimes/docker.py)
        if self.runtime.name not in UPLOAD_RUNTIMES:
            raise DeskError(
                "NOT_SUPPORTED",
                f"deploying by upload needs the process or docker runtime (this desk runs "
                f"{self.runtime.name}): put the folder in the strategies folder instead",
                status=501,
            )

    async def on_upload(self, request: strategy_pb2.UploadChunk, subject: str) -> strategy_pb2.UploadAck:
        self._uploads_supported()
        member = self._uploader(subject)
        if not subjects.STRATEGY_ID_RE.match(request.strategy_id):
            raise uploads.refuse(
                "BAD_NAME",
                f"strategy name {request.strategy_id[:40]!r} is not valid: 1-32 of "
                "a-z 0-9 _ -, starting with a letter or digit (the folder's name)",
            )
        if member is not None:  # refused before any byte is kept: a name another member owns
            owner = self._owner(request.strategy_id, await self._discover() if request.offset == 0 else None)
            if owner is not None and owner != member:
                raise DeskError(
                    "NOT_YOURS",
                    f"strategy name {request.strategy_id!r} is taken by another member; choose another folder name",
                    status=403,
                )
        held = self.uploads.add(
            member or "", request.strategy_id, request.upload_id, request.offset, bytes(request.data)
        )
        return strategy_pb2.UploadAck(upload_id=request.upload_id, received=held, limit=self.uploads.max_bytes)

    async def on_commit(self, request: strategy_pb2.UploadCommit, subject: str) -> strategy_pb2.StrategyStatusList:
        self._uploads_supported()
        member = self._uploader(subject)
        strategy_id = request.strategy_id
        if not subjects.STRATEGY_ID_RE.match(strategy_id):
            raise uploads.refuse("BAD_NAME", f"strategy name {strategy_id[:40]!r} is not valid")
        data = self.uploads.take(member or "", strategy_id, request.upload_id, request.size, request.sha256)
        files = uploads.read_tar(data, self.uploads.max_bytes)
        try:
            config_text = files[CONFIG_FILE].decode("utf-8")
            source = files[STRATEGY_FILE].decode("utf-8")
        except UnicodeDecodeError:
            raise uploads.refuse("BAD_CONFIG", f"{CONFIG_FILE} and {STRATEGY_FILE} must be UTF-8 text") from None
        try:
            spec = validate_strategy(strategy_id, config_text, source, "", self.settings.orch_runtime).spec
        except StrategyConfigError as exc:
            raise uploads.refuse("BAD_CONFIG", f"{strategy_id}: {exc}") from None
        if member is not None and spec.member_id != member:
            raise uploads.refuse(
                "WRONG_MEMBER",
                f'{CONFIG_FILE} says user_id {spec.member_id!r}, but you are {member!r}: set "user_id": "{member}"',
            )
        if not subjects.MEMBER_LOGIN_RE.match(spec.member_id):
            raise uploads.refuse("BAD_CONFIG", f"user_id {spec.member_id!r} is not a member name (a-z 0-9 _ -)")
        self._check_site(spec)  # before a version is stored
        found = await self._discover()
        owner = self._owner(strategy_id, found)
        if owner is not None and owner != spec.member_id:
            raise DeskError(
                "NOT_YOURS", f"strategy name {strategy_id!r} is {owner}'s; choose another folder name", status=403
            )
        assert self.code is not None
        if strategy_id not in self.pointers and member is not None:
            mine = sum(1 for p in self.pointers.values() if p.member == member)
            if mine >= self.settings.orch_member_max_strategies:
                raise DeskError(
                    "TOO_MANY_STRATEGIES",
                    f"{member} has {mine} uploaded strategies, the most a member may have (ORCH_MEMBER_MAX_STRATEGIES)",
                    status=403,
                )
        async with self._code_lock(strategy_id):
            pointer = self.pointers.get(strategy_id)
            version = max(pointer.versions) + 1 if pointer else 1
            await self.code.put_version(strategy_id, version, data)
            await asyncio.to_thread(uploads.materialise, files, self._code_path(strategy_id, version))
            versions = sorted([*(pointer.versions if pointer else []), version])
            dropped, versions = (
                versions[: -self.settings.orch_code_versions],
                versions[-self.settings.orch_code_versions :],
            )
            updated = Pointer(strategy_id, spec.member_id, version, versions)
            await self.code.set_pointer(updated)
            self.pointers[strategy_id] = updated
            for old in dropped:  # bounded history: the oldest versions go (never the one running)
                await self.code.delete_version(strategy_id, old)
                await asyncio.to_thread(shutil.rmtree, self._code_path(strategy_id, old), True)
        log.info(
            "code.version_stored",
            strategy_id=strategy_id,
            member_id=spec.member_id,
            version=version,
            bytes=len(data),
            files=len(files),
            by=member or "operator",
        )
        reply = await self._deploy_one(await self._discover(), strategy_id)
        reply.message = f"{strategy_id}: version {version} deployed" + (f" | {reply.message}" if reply.message else "")
        return self._for_member(reply) if member is not None else reply

    async def on_rollback(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        member = self._uploader(subject)
        strategy_id = request.strategy_id
        pointer = self.pointers.get(strategy_id)
        if pointer is None:
            raise DeskError(
                "NOT_UPLOADED",
                f"strategy {strategy_id!r} has no uploaded versions to roll back (desk deploy ./folder uploads one)",
                status=404,
            )
        if member is not None and pointer.member != member:
            raise DeskError("NOT_YOURS", f"strategy {strategy_id!r} is not yours ({member})", status=403)
        assert self.code is not None
        async with self._code_lock(strategy_id):
            previous = pointer.previous()
            if previous is None:
                raise DeskError(
                    "NO_PREVIOUS", f"{strategy_id} runs version {pointer.current}, its first: nothing to roll back to"
                )
            await self._materialise(strategy_id, previous)
            updated = Pointer(strategy_id, pointer.member, previous, list(pointer.versions))
            await self.code.set_pointer(updated)
            self.pointers[strategy_id] = updated
        log.info("code.rolled_back", strategy_id=strategy_id, version=previous, was=pointer.current)
        reply = await self._deploy_one(await self._discover(), strategy_id)
        reply.message = f"{strategy_id}: rolled back to version {previous} (from {pointer.current})" + (
            f" | {reply.message}" if reply.message else ""
        )
        return self._for_member(reply) if member is not None else reply

    async def _deploy_one(self, found: Discovery, strategy_id: str) -> strategy_pb2.StrategyStatusList:
        target = self._found(found, strategy_id)
        await self._deploy(target, wait=True)
        return await self._outcome_list([self.managed[strategy_id]])

    def _code_lock(self, strategy_id: str) -> asyncio.Lock:
        return self._code_locks.setdefault(strategy_id, asyncio.Lock())

    def _code_path(self, strategy_id: str, version: int) -> Path:
        return self.settings.orch_code_dir.resolve() / strategy_id / str(version)

    async def _materialise(self, strategy_id: str, version: int) -> Path:
        """Version ``version`` of ``strategy_id`` unpacked (from the store, checked again) where it runs."""
        path = self._code_path(strategy_id, version)
        if path.is_dir():
            return path
        assert self.code is not None
        data = await self.code.get_version(strategy_id, version)
        files = uploads.read_tar(data, max(self.uploads.max_bytes, len(data)))
        return await asyncio.to_thread(uploads.materialise, files, path)

    # the operator's member administration

    def _need_identities(self) -> NatsIdentities:
        if self.identities is None:
            raise DeskError(
                "NO_AUTH",
                "this desk runs without NATS users (ORCH_NATS_AUTH_FILE): members need the "
                "embedded desk (desk up) or compose",
                status=409,
            )
        return self.identities

    async def on_member_add(self, request: strategy_pb2.MemberRequest, subject: str) -> strategy_pb2.MemberList:
        identities = self._need_identities()
        if not subjects.MEMBER_LOGIN_RE.match(request.member_id):
            raise DeskError(
                "BAD_NAME",
                f"member name {request.member_id[:40]!r}: use 1-32 of a-z 0-9 _ -, starting with a letter or digit",
            )
        if not is_bcrypt(request.password_hash):
            raise DeskError("BAD_HASH", "password_hash must be a bcrypt hash (the CLI makes it)")
        await identities.set_member(request.member_id, request.password_hash)
        return self._member_list([request.member_id])

    async def on_member_remove(self, request: strategy_pb2.MemberRequest, subject: str) -> strategy_pb2.MemberList:
        """Revoke a member's login (the server drops their connections); their strategies are stopped
        (recorded: they stay stopped across restarts) and kept, with their versions: the operator may
        start them again or give the name back with a new login of the same name."""
        identities = self._need_identities()
        if not await identities.remove_member(request.member_id):
            raise DeskError("NOT_FOUND", f"no member {request.member_id[:40]!r}", status=404)
        theirs = [m for m in self.managed.values() if m.spec.member_id == request.member_id]
        await self._stop_targets(theirs)
        listed = self._member_list([])
        listed.message = f"{request.member_id}: login revoked; strategies stopped and kept: " + (
            ", ".join(sorted(m.strategy_id for m in theirs)) or "none"
        )
        return listed

    async def on_member_list(self, request: strategy_pb2.MemberRequest, subject: str) -> strategy_pb2.MemberList:
        self._need_identities()
        return self._member_list(None)

    def _member_list(self, only: list[str] | None) -> strategy_pb2.MemberList:
        assert self.identities is not None
        names = sorted(self.identities.members()) if only is None else only
        owned: dict[str, set[str]] = {}
        for m in self.managed.values():
            owned.setdefault(str(m.spec.member_id), set()).add(m.strategy_id)
        for p in self.pointers.values():
            owned.setdefault(p.member, set()).add(p.strategy_id)
        return strategy_pb2.MemberList(
            members=[
                strategy_pb2.Member(member_id=n, user=auth.member_user(n), strategies=sorted(owned.get(n, set())))
                for n in names
            ]
        )

    # -- heartbeats ----------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        strategy_id = subjects.token(msg.subject, -1)
        try:
            heartbeat = codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers)
            if heartbeat.strategy_id and heartbeat.strategy_id != strategy_id:
                raise DeskError("WRONG_STRATEGY", f"heartbeat for {heartbeat.strategy_id!r} published on {msg.subject}")
        except DeskError as err:
            self.bad_heartbeats += 1
            log.warning(
                "heartbeat.malformed", subject=msg.subject, code=err.code, reason=err.message, count=self.bad_heartbeats
            )
            return
        self.heartbeats[strategy_id] = time.time_ns()
        m = self.managed.get(strategy_id)
        if m is None:
            return
        had_error = m.supervisor.last_error
        if m.supervisor.heartbeat():
            log.info("strategy.running", strategy_id=strategy_id, pid=m.supervisor.pid)
            m.outcome.set()
        if had_error and not m.supervisor.last_error:  # kept here: status shows the current run's error
            log.info(
                "strategy.recovered", strategy_id=strategy_id, restarts=m.supervisor.restarts, previous_error=had_error
            )

    # -- watchdog ------------------------------------------------------------------------------

    @property
    def watchdog_period(self) -> float:
        """Seconds between two watchdog checks."""
        return max(0.02, min(self.policy.heartbeat_interval / 2, self.policy.start_timeout / 4, 1.0))

    async def _watchdog_loop(self) -> None:
        while True:
            await asyncio.sleep(self.watchdog_period)
            try:
                self.check_heartbeats()
            except Exception as exc:  # the watchdog must outlive a bug in one check
                log.error("watchdog.failed", error=repr(exc), exc_info=exc)

    def check_heartbeats(self) -> None:
        """Kill (in its own task) every run its supervisor declares hung."""
        for m in list(self.managed.values()):
            reason = m.supervisor.watchdog()
            if reason is None:
                continue
            log.warning("strategy.hung", strategy_id=m.strategy_id, pid=m.supervisor.pid, reason=reason)
            m.outcome.set()
            handle = m.handle
            if handle is not None and m.kill_task is None:
                m.kill_task = asyncio.create_task(self._kill_hung(m, handle), name=f"kill.{m.strategy_id}")

    async def _kill_hung(self, m: Managed, handle: RunHandle) -> None:
        """Stop a hung run; its watcher reports the exit, which the supervisor counts as a crash.

        A hung strategy cannot act on SIGTERM (its event loop is stuck), so it gets at most one
        heartbeat interval before SIGKILL."""
        try:
            async with m.lock:
                if m.handle is handle:
                    timeout = min(self.settings.orch_stop_timeout, self.policy.heartbeat_interval)
                    await self.runtime.stop(handle, timeout)
        except Exception as exc:  # noqa: BLE001 - a failed kill is retried by nobody but must be seen
            log.error("strategy.kill_failed", strategy_id=m.strategy_id, error=repr(exc))
        finally:
            m.kill_task = None

    # -- lifecycle -----------------------------------------------------------------------------

    async def _discover(self) -> Discovery:
        found = await asyncio.to_thread(discover, self.settings.orch_strategies_dir, self.settings.orch_runtime)
        uploaded = self.pointers if self.runtime.name in UPLOAD_RUNTIMES else {}
        for strategy_id, pointer in list(uploaded.items()):  # an uploaded version wins over a folder
            folder = self._code_path(strategy_id, pointer.current)
            try:
                strategy = await asyncio.to_thread(load_folder, strategy_id, folder, self.settings.orch_runtime)
            except StrategyConfigError as exc:
                found.strategies.pop(strategy_id, None)
                found.errors[strategy_id] = f"uploaded version {pointer.current}: {exc}"
                continue
            found.errors.pop(strategy_id, None)
            found.strategies[strategy_id] = strategy
        for strategy_id, error in found.errors.items():
            if self.invalid.get(strategy_id) != error:
                log.warning("strategy.invalid", strategy_id=strategy_id, error=error)
        self.invalid = dict(found.errors)
        return found

    def _found(self, found: Discovery, strategy_id: str) -> DiscoveredStrategy:
        if strategy_id in found.errors:
            raise DeskError(
                "INVALID_STRATEGY", f"strategy {strategy_id!r} cannot be deployed: {found.errors[strategy_id]}"
            )
        if strategy_id not in found.strategies:
            raise DeskError(
                "NOT_FOUND",
                f"unknown strategy {strategy_id!r}: no folder {self.settings.orch_strategies_dir / strategy_id} "
                "with strategy.py and config.json",
                status=404,
            )
        return found.strategies[strategy_id]

    def _unknown(self, strategy_id: str) -> DeskError:
        hint = f" ({self.invalid[strategy_id]})" if strategy_id in self.invalid else "; deploy it first"
        return DeskError("NOT_FOUND", f"unknown strategy {strategy_id!r}: it is not deployed{hint}", status=404)

    def _targets(self, strategy_id: str) -> list[Managed]:
        if not strategy_id:
            return list(self.managed.values())
        if strategy_id not in self.managed:
            raise self._unknown(strategy_id)
        return [self.managed[strategy_id]]

    @staticmethod
    def _raise_first(results: list[BaseException | None]) -> None:
        """After every strategy's task has finished: the first failure, if any, is the reply's error."""
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _raise_or_note(self, targets: list[DiscoveredStrategy], results: list[BaseException | None]) -> list[str]:
        """A single target's failure is the reply's error; with several, each becomes a note."""
        failures = [
            (t.spec.strategy_id, r) for t, r in zip(targets, results, strict=True) if isinstance(r, BaseException)
        ]
        for strategy_id, error in failures:
            log.error("strategy.deploy_failed", strategy_id=strategy_id, error=repr(error))
        if len(targets) == 1 and failures:
            raise failures[0][1]
        return [f"{sid}: deploy failed: {err}" for sid, err in failures]

    async def _deploy(self, strategy: DiscoveredStrategy, wait: bool, keep_stopped: bool = False) -> None:
        """Write the spec and (re)start the strategy. ``keep_stopped``: one a user stopped (in memory,
        or recorded in DESK_STRATEGIES by an earlier orchestrator) gets its new spec and stays STOPPED."""
        spec = strategy.spec
        self._check_site(spec)
        m = self.managed.get(spec.strategy_id)
        if m is None:
            held = keep_stopped and await self._recorded_stopped(spec.strategy_id)
            m = Managed(spec=spec, supervisor=Supervisor(self.policy, self.clock), held=held)
            self.managed[spec.strategy_id] = m
            if held:
                m.supervisor.stop_request()  # STOPPED, "stopped by request": what status shows
        async with m.lock:
            hold = keep_stopped and m.held
            if not hold:
                await self._stop_locked(m)
            m.spec = spec
            m.held = hold
            await self._write_spec(spec, stopped=hold)
            log.info(
                "strategy.deployed",
                strategy_id=spec.strategy_id,
                member_id=spec.member_id,
                legacy=spec.legacy,
                runtime=spec.runtime,
                path=spec.path,
                stopped_by_request=hold,
            )
            if hold:
                return
            await self._start_locked(m)
            outcome = m.outcome
        if wait:
            await self._await_outcome(outcome)

    def _check_site(self, spec: strategy_pb2.StrategySpec) -> None:
        """A spec's site must be one of ORCH_SITES (the docker runtime's): else UNKNOWN_SITE, nothing done."""
        if not spec.site:
            return
        try:
            if not isinstance(self.runtime, SitedRuntime):
                raise UnknownSite(f"site {spec.site!r}: this desk has no sites (ORCH_SITES is empty)")
            self.runtime.for_site(spec.site)
        except UnknownSite as exc:
            raise DeskError("UNKNOWN_SITE", f"{spec.strategy_id}: {exc}", status=400) from None

    async def _write_spec(self, spec: strategy_pb2.StrategySpec, stopped: bool) -> None:
        """The spec into DESK_STRATEGIES, labelled (as desk.bus.kv.put) and, when a user stopped the
        strategy, with DESIRED_HEADER (readers of the spec ignore it)."""
        assert self._js is not None
        data, headers = codec.encode(spec)
        if stopped:
            headers = {**headers, DESIRED_HEADER: DESIRED_STOPPED}
        js, subject = self._js, f"$KV.{subjects.KV_STRATEGIES}.{spec.strategy_id}"
        # a put, safe to repeat (the last value is the value): retried through an election
        await retrying(
            lambda: js.publish(subject, data, headers=headers, timeout=KV_ATTEMPT_TIMEOUT),
            what=f"write spec {spec.strategy_id}",
            log=log,
            deadline=SPEC_WRITE_DEADLINE,
        )

    async def _set_held(self, m: Managed, held: bool) -> None:
        """Record (the lock is held) whether a user wants the strategy stopped across restarts."""
        if m.held == held:
            return
        await self._write_spec(m.spec, stopped=held)
        m.held = held
        log.info("strategy.desired_state", strategy_id=m.strategy_id, desired="stopped" if held else "running")

    async def _recorded_stopped(self, strategy_id: str) -> bool:
        """Whether DESK_STRATEGIES records a user's stop for ``strategy_id`` (on our own labelled
        entry for that id: anything else is not believed)."""
        js = self._js
        assert js is not None
        try:
            raw = await retrying(
                lambda: asyncio.wait_for(
                    js.get_last_msg(f"KV_{subjects.KV_STRATEGIES}", f"$KV.{subjects.KV_STRATEGIES}.{strategy_id}"),
                    KV_ATTEMPT_TIMEOUT,
                ),
                what=f"read spec {strategy_id}",
                log=log,
                deadline=SPEC_READ_DEADLINE,
            )
        except nats.js.errors.NotFoundError:
            return False
        except Exception as exc:  # noqa: BLE001 - unreadable: run it, as before this was recorded
            log.warning("strategy.desired_state_unreadable", strategy_id=strategy_id, error=repr(exc))
            return False
        headers = raw.headers or {}
        if headers.get(DESIRED_HEADER) != DESIRED_STOPPED:
            return False
        try:
            spec = codec.decode(raw.data or b"", strategy_pb2.StrategySpec, headers)
        except DeskError:
            return False
        return headers.get(codec.DESK_TYPE) is not None and spec.strategy_id == strategy_id

    async def _await_outcome(self, outcome: asyncio.Event) -> None:
        """Until the run's first heartbeat, its exit or the watchdog's verdict (ORCH_START_TIMEOUT
        plus one watchdog period at most: by then the watchdog has spoken)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(outcome.wait(), self.policy.start_timeout + 2 * self.watchdog_period + 0.5)

    def _heartbeat_env(self, spec: strategy_pb2.StrategySpec) -> dict[str, str]:
        """DESK_HEARTBEAT_INTERVAL for the strategy: ours, unless its config asks for a shorter one."""
        interval = self.policy.heartbeat_interval
        own = spec.env.get("DESK_HEARTBEAT_INTERVAL", "")
        with contextlib.suppress(ValueError):
            if own and 0 < float(own) <= interval:
                return {}
        return {"DESK_HEARTBEAT_INTERVAL": f"{interval:g}"}

    async def _start_locked(self, m: Managed) -> None:
        """User or deploy start (the lock is held): backoff history is forgotten."""
        self._cancel_restart(m)
        m.supervisor.start_requested()
        await self._launch(m)

    async def _launch(self, m: Managed) -> None:
        m.outcome = asyncio.Event()
        try:
            secrets = self._heartbeat_env(m.spec)
            if self.settings.nats_tls_ca:  # TLS on the client port: the CA, as text (a sandbox sees no host files)
                secrets["NATS_TLS_CA_PEM"] = await asyncio.to_thread(Path(self.settings.nats_tls_ca).read_text)
            if self.identities:
                secrets.update(await self.identities.credentials(m.strategy_id, m.spec.site))
            handle = await self.runtime.start(m.spec, secrets)
        except Exception as exc:  # noqa: BLE001 - a strategy that cannot start is a crash, not our failure
            log.error("strategy.start_failed", strategy_id=m.strategy_id, error=repr(exc))
            self._after_exit(m, ExitInfo(START_FAILED_EXIT_CODE, "could not start", f"could not start: {exc}"))
            return
        m.handle = handle
        m.supervisor.started(handle.pid)
        log.info(
            "strategy.started",
            strategy_id=m.strategy_id,
            pid=handle.pid,
            restarts=m.supervisor.restarts,
            requested=m.supervisor.requested_run,
        )
        m.watcher = asyncio.create_task(self._watch(m, handle), name=f"watch.{m.strategy_id}")

    async def _watch(self, m: Managed, handle: RunHandle) -> None:
        try:
            info = await self.runtime.wait(handle)
        except Exception as exc:  # noqa: BLE001 - the runtime lost track: count it as an exit
            log.error("strategy.wait_failed", strategy_id=m.strategy_id, error=repr(exc))
            info = ExitInfo(-1, "lost", f"runtime lost the process: {exc!r}")
        if m.handle is handle:
            m.handle = None
        self._after_exit(m, info)

    def _after_exit(self, m: Managed, info: ExitInfo) -> None:
        decision = m.supervisor.exited(info.exit_code, info.last_error)
        m.outcome.set()
        strategy_id = m.strategy_id
        if decision.state == STOPPED:
            log.info("strategy.stopped", strategy_id=strategy_id, exit_code=info.exit_code, reason=info.reason)
            return
        log.warning(
            "strategy.crashed",
            strategy_id=strategy_id,
            exit_code=info.exit_code,
            reason=info.reason,
            last_error=info.last_error,
        )
        if decision.restart_in is None:
            log.error("strategy.failed", strategy_id=strategy_id, message=decision.message)
            return
        m.supervisor.backoff(decision.restart_in)
        log.info(
            "strategy.restart_scheduled",
            strategy_id=strategy_id,
            delay=decision.restart_in,
            attempt=m.supervisor.consecutive_crashes,
        )
        m.restart_task = asyncio.create_task(self._restart_later(m, decision.restart_in), name=f"restart.{strategy_id}")

    async def _restart_later(self, m: Managed, delay: float) -> None:
        await asyncio.sleep(delay)
        async with m.lock:
            m.restart_task = None
            if m.supervisor.restart_due():
                await self._launch(m)

    def _cancel_restart(self, m: Managed) -> None:
        if m.restart_task is not None and m.restart_task is not asyncio.current_task():
            m.restart_task.cancel()
        m.restart_task = None

    async def _stop(self, m: Managed) -> None:
        async with m.lock:
            await self._stop_locked(m)

    async def _stop_locked(self, m: Managed) -> None:
        self._cancel_restart(m)
        was = m.supervisor.state
        must_stop = m.supervisor.stop_request()
        if must_stop and m.handle is not None:
            await self.runtime.stop(m.handle, self.settings.orch_stop_timeout)
        if m.watcher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await m.watcher
            m.watcher = None
        elif was != STOPPED and not must_stop:  # from BACKOFF or FAILED: nothing was running
            log.info("strategy.stopped", strategy_id=m.strategy_id, reason="stopped by request", was=was)

    # -- replies -------------------------------------------------------------------------------

    @property
    def confined(self) -> bool:
        return not self.runtime.confinement.startswith("none")

    @property
    def runtime_label(self) -> str:
        """The runtime as ``desk status`` shows it: ``process+bwrap``, ``process (UNCONFINED)``, ``docker``."""
        if self.runtime.name != "process":
            return self.runtime.name
        return "process+bwrap" if self.confined else "process (UNCONFINED)"

    def status(self, m: Managed) -> strategy_pb2.StrategyStatus:
        sup = m.supervisor
        wait = sup.seconds_to_restart()
        return strategy_pb2.StrategyStatus(
            strategy_id=m.strategy_id,
            member_id=m.spec.member_id,
            state=sup.state,
            runtime=f"{self.runtime_label}@{m.spec.site}" if m.spec.site else self.runtime_label,
            pid=sup.pid,
            container_id=m.handle.container_id if m.handle else "",
            restarts=sup.restarts,
            last_error=sup.last_error[:LAST_ERROR_CHARS],
            exit_code=sup.exit_code,
            started_ns=m.handle.started_ns if m.handle and sup.state in ACTIVE else 0,
            last_heartbeat_ns=self.heartbeats.get(m.strategy_id, 0),
            next_restart_ns=time.time_ns() + int(wait * 1e9) if wait is not None else 0,
            code_version=self.pointers[m.strategy_id].current if m.strategy_id in self.pointers else 0,
            halted=subjects.halt_key(m.strategy_id) in self.halted,
            site=m.spec.site,
        )

    async def _outcome_list(
        self, targets: list[Managed], notes: list[str] | None = None
    ) -> strategy_pb2.StrategyStatusList:
        """The reply to deploy/start/restart: statuses, and the log tail of each run that ended."""
        tails: dict[str, list[str]] = {}
        for m in targets:
            sup = m.supervisor
            if (sup.state not in ACTIVE and sup.state != STOPPED) or sup.hung_reason:
                tails[m.strategy_id] = await self._failure_tail(m.strategy_id)
        return self._status_list(targets, tails, notes or [])

    async def _failure_tail(self, strategy_id: str) -> list[str]:
        """The last lines of the strategy's latest run (its traceback, typically)."""
        try:
            lines = await self.runtime.logs(strategy_id, FAILURE_TAIL + 2)
        except Exception as exc:  # noqa: BLE001 - the reply matters more than its log excerpt
            return [f"(no log: {exc!r})"]
        starts = [i for i, line in enumerate(lines) if line.startswith(BANNER)]
        if starts:
            lines = lines[starts[-1] + 1 :]
        lines = [line for line in lines if not line.startswith("--- pid ")]
        while lines and not lines[-1].strip():
            lines.pop()
        return [line[:LOG_LINE_CHARS] for line in lines[-FAILURE_TAIL:]]

    def _status_list(
        self, targets: list[Managed], tails: dict[str, list[str]] | None = None, extra: list[str] | None = None
    ) -> strategy_pb2.StrategyStatusList:
        notes: list[str] = list(extra or [])
        tails = tails or {}
        for m in targets:
            sup = m.supervisor
            if sup.state == FAILED or m.strategy_id in tails:
                note = f"{m.strategy_id}: {sup.message or sup.last_error}"
                if tails.get(m.strategy_id):
                    note += f" -- its log (desk logs {m.strategy_id}):\n" + "\n".join(
                        "    " + line for line in tails[m.strategy_id]
                    )
                notes.append(note)
        if not self.confined:
            notes.append(
                f"WARNING: strategies run UNCONFINED ({self.runtime.confinement}): they can read your "
                "files and see other processes; see the README's security section"
            )
        if self.invalid:
            notes.append(
                "invalid strategies (not deployable): "
                + "; ".join(f"{sid}: {error}" for sid, error in sorted(self.invalid.items()))
            )
        message = " | ".join(notes)
        if len(message) > MESSAGE_CHARS:
            message = message[: MESSAGE_CHARS - 40] + " ... (cut; see desk logs NAME)"
        return strategy_pb2.StrategyStatusList(
            strategies=[self.status(m) for m in targets],
            message=message,
            desk_halted=subjects.halt_key("") in self.halted,
        )


def make_runtime(settings: Settings) -> Runtime:
    """The runtime the settings ask for (ORCH_RUNTIME)."""
    if settings.orch_runtime == "docker":
        import docker  # only the docker runtime needs the Docker SDK

        main = docker_runtime(
            settings,
            docker.from_env(),
            host_strategies_dir=settings.orch_docker_host_strategies_dir,
            nats_url=settings.orch_docker_nats_url,
            nats_container=settings.orch_docker_nats_container,
        )
        sites = parse_sites(settings.orch_sites)
        if not sites:
            return main
        return SitedRuntime(main, {name: site_runtime(settings, main, site) for name, site in sites.items()})
    if settings.orch_sites:
        raise ValueError("ORCH_SITES needs ORCH_RUNTIME=docker: a site is another machine's Docker engine")
    return ProcessRuntime.from_settings(settings)


def docker_runtime(settings: Settings, client: Any, **where: Any) -> DockerRuntime:
    """A docker runtime on ``client``'s engine with the desk's image, limits and folders; ``where``: the
    engine's own part (its NATS containers, a site's name and leaf node)."""
    return DockerRuntime(
        client=client,
        image=settings.orch_docker_image,
        strategies_dir=settings.orch_strategies_dir,
        log_dir=settings.orch_log_dir,
        default_memory=settings.orch_docker_memory,
        default_cpus=settings.orch_docker_cpus,
        default_pids=settings.orch_docker_pids,
        code_dir=settings.orch_code_dir,
        **where,
    )


def site_runtime(settings: Settings, main: DockerRuntime, site: Site) -> DockerRuntime:
    """The docker runtime of ``site``: its engine, its leaf node, the desk's image and limits."""
    return docker_runtime(
        settings,
        site.docker_client(),
        host_strategies_dir=None,
        nats_container=site.leaf_container,
        desk=f"{main.desk or 'desk'}@{site.name}",
        site=site.name,
        leaf_auth_file=site.leaf_auth_file,
    )


class MemberAwareService(DeskService):
    """The orchestrator's micro service: the desk's reply rule (desk.bus.confine) and, on a member's
    subjects (``desk.ctl.m.<member>.<op>``), replies only to that member's own inbox (or the
    operator's ``_INBOX.``): never to another member's or a strategy's."""

    def _admit(self, endpoint: str, req: Request) -> bool:
        if not super()._admit(endpoint, req):
            return False
        member = subjects.member_of(req.subject)
        reply = req._msg.reply or ""
        if member is None or reply.startswith((auth.member_inbox_prefix(member) + ".", confine.ADMIN_INBOX_ROOT + ".")):
            return True
        self.dropped[endpoint][confine.REPLY_FOREIGN_INBOX] += 1
        log.warning(
            "request.dropped",
            endpoint=endpoint,
            subject=req.subject,
            reply=reply[:120],
            reason=confine.REPLY_FOREIGN_INBOX,
            member=member,
        )
        return False
