"""The orchestrator service: ``desk.ctl.strategy.*`` endpoints, strategy processes, heartbeats.

Every strategy has a :class:`Supervisor` (the pure restart policy) and a lock that serialises
what users and the restart timer do to it. Deploy writes the ``StrategySpec`` to KV
``DESK_STRATEGIES`` before the process starts, so the router knows the strategy before its first
order. On shutdown every strategy is stopped (SIGTERM, then SIGKILL after ORCH_STOP_TIMEOUT).

Invalid strategy folders are not deployable; since ``StrategyList`` has no room for errors, their
messages are reported in the ``message`` of every ``StrategyStatusList`` reply (status, deploy...).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.kv import KeyValue

import desk
from desk.bus import codec, kv, subjects
from desk.bus.errors import DeskError
from desk.bus.lifecycle import ServiceRuntime
from desk.bus.logging import get_logger
from desk.bus.micro import add_service
from desk.bus.streams import ensure_bucket
from desk.v1 import strategy_pb2
from services.orchestrator.discovery import DiscoveredStrategy, Discovery, discover
from services.orchestrator.identities import NatsIdentities
from services.orchestrator.runtimes.base import ExitInfo, RunHandle, Runtime
from services.orchestrator.runtimes.docker import DockerRuntime
from services.orchestrator.runtimes.process import ProcessRuntime
from services.orchestrator.settings import Settings
from services.orchestrator.supervisor import ACTIVE, FAILED, STOPPED, RestartPolicy, Supervisor

NAME = "orchestrator"
log = get_logger(NAME)
DEFAULT_TAIL = 100
MAX_TAIL = 1000
START_FAILED_EXIT_CODE = 127


@dataclass
class Managed:
    """A deployed strategy: its spec, its supervisor, and what is running for it."""

    spec: strategy_pb2.StrategySpec
    supervisor: Supervisor
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    handle: RunHandle | None = None
    watcher: asyncio.Task[None] | None = None
    restart_task: asyncio.Task[None] | None = None

    @property
    def strategy_id(self) -> str:
        return str(self.spec.strategy_id)


class Orchestrator:
    def __init__(
        self, settings: Settings, runtime: Runtime | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self.runtime: Runtime = runtime or make_runtime(settings)
        self.identities: NatsIdentities | None = None
        if settings.orch_nats_auth_file and settings.orch_nats_base_users:
            reload = None
            if settings.orch_nats_reload == "docker":
                if not isinstance(self.runtime, DockerRuntime):
                    raise ValueError("ORCH_NATS_RELOAD=docker needs ORCH_RUNTIME=docker")
                reload = self.runtime.reload_nats
            self.identities = NatsIdentities(
                nats_url=settings.nats_url,
                auth_file=settings.orch_nats_auth_file,
                base_users_file=settings.orch_nats_base_users,
                pid_file=settings.orch_nats_pid_file,
                reload=reload,
            )
        self.clock = clock
        self.policy = RestartPolicy(
            backoff_initial=settings.orch_backoff_initial,
            backoff_max=settings.orch_backoff_max,
            stable_after=settings.orch_stable_after,
            max_restarts=settings.orch_max_restarts,
        )
        self.managed: dict[str, Managed] = {}
        self.invalid: dict[str, str] = {}
        self.heartbeats: dict[str, int] = {}
        self.bad_heartbeats = 0
        self._kv: KeyValue | None = None

    # -- service shell -------------------------------------------------------------------------

    async def start(self, runtime: ServiceRuntime) -> None:
        self._kv = await ensure_bucket(runtime.js, subjects.KV_STRATEGIES)
        svc = await add_service(
            runtime,
            NAME,
            desk.__version__,
            "strategy lifecycle: deploy, start, stop, restart, status, list, logs; watches heartbeats",
            metadata={"runtime": self.runtime.name, "strategies_dir": str(self.settings.orch_strategies_dir)},
        )
        control = strategy_pb2.StrategyControl
        await svc.add_endpoint("deploy", subjects.CTL_DEPLOY, control, self.on_deploy)
        await svc.add_endpoint("start", subjects.CTL_START, control, self.on_start)
        await svc.add_endpoint("stop", subjects.CTL_STOP, control, self.on_stop)
        await svc.add_endpoint("restart", subjects.CTL_RESTART, control, self.on_restart)
        await svc.add_endpoint("status", subjects.CTL_STATUS, control, self.on_status)
        await svc.add_endpoint("list", subjects.CTL_LIST, control, self.on_list)
        await svc.add_endpoint("logs", subjects.CTL_LOGS, strategy_pb2.LogsRequest, self.on_logs)
        sub = await runtime.nc.subscribe(subjects.HEARTBEAT_ALL, cb=self._on_heartbeat)
        await self.runtime.cleanup()
        # Unwound in reverse: strategies stop first, then the subscription, then the micro service.
        runtime.stack.push_async_callback(sub.unsubscribe)
        runtime.stack.push_async_callback(self.shutdown)
        if self.settings.orch_autodeploy:
            await self.on_deploy(strategy_pb2.StrategyControl(), subjects.CTL_DEPLOY)
        # The server has our subscriptions once this returns: no "no responders" right after ready.

    async def shutdown(self) -> None:
        """Stop every strategy so no process outlives the orchestrator."""
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
        for strategy in targets:
            await self._deploy(strategy)
        return self._status_list([self.managed[s.spec.strategy_id] for s in targets])

    async def on_start(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        targets = self._targets(request.strategy_id)
        for m in targets:
            async with m.lock:
                if m.supervisor.state not in ACTIVE:
                    await self._start_locked(m)
        return self._status_list(targets)

    async def on_stop(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        targets = self._targets(request.strategy_id)
        await asyncio.gather(*(self._stop(m) for m in targets))
        return self._status_list(targets)

    async def on_restart(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        targets = self._targets(request.strategy_id)
        for m in targets:
            async with m.lock:
                await self._stop_locked(m)
                await self._start_locked(m)
        return self._status_list(targets)

    async def on_status(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyStatusList:
        return self._status_list(self._targets(request.strategy_id))

    async def on_list(self, request: strategy_pb2.StrategyControl, subject: str) -> strategy_pb2.StrategyList:
        found = await self._discover()
        specs = [s.spec for s in found.strategies.values()]
        if request.strategy_id:
            specs = [self._found(found, request.strategy_id).spec]
        return strategy_pb2.StrategyList(strategies=specs)

    async def on_logs(self, request: strategy_pb2.LogsRequest, subject: str) -> strategy_pb2.LogsReply:
        strategy_id = request.strategy_id
        if strategy_id not in self.managed and not subjects.STRATEGY_ID_RE.match(strategy_id):
            raise self._unknown(strategy_id)
        tail = min(request.tail or DEFAULT_TAIL, MAX_TAIL)
        lines = await self.runtime.logs(strategy_id, tail)
        if not lines and strategy_id not in self.managed:  # not deployed now, and no log of an earlier run
            raise self._unknown(strategy_id)
        return strategy_pb2.LogsReply(strategy_id=strategy_id, lines=lines)

    # -- heartbeats ----------------------------------------------------------------------------

    async def _on_heartbeat(self, msg: Msg) -> None:
        strategy_id = subjects.token(msg.subject, -1)
        try:
            heartbeat = codec.decode(msg.data, strategy_pb2.Heartbeat, msg.headers)
            if heartbeat.strategy_id and heartbeat.strategy_id != strategy_id:
                raise DeskError(
                    "WRONG_STRATEGY", f"heartbeat for {heartbeat.strategy_id!r} published on {msg.subject}"
                )
        except DeskError as err:
            self.bad_heartbeats += 1
            log.warning("heartbeat.malformed", subject=msg.subject, code=err.code, reason=err.message,
                        count=self.bad_heartbeats)
            return
        self.heartbeats[strategy_id] = time.time_ns()

    # -- lifecycle -----------------------------------------------------------------------------

    async def _discover(self) -> Discovery:
        found = await asyncio.to_thread(discover, self.settings.orch_strategies_dir, self.settings.orch_runtime)
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

    async def _deploy(self, strategy: DiscoveredStrategy) -> None:
        spec = strategy.spec
        m = self.managed.get(spec.strategy_id)
        if m is None:
            m = Managed(spec=spec, supervisor=Supervisor(self.policy, self.clock))
            self.managed[spec.strategy_id] = m
        async with m.lock:
            await self._stop_locked(m)
            m.spec = spec
            assert self._kv is not None
            await kv.put(self._kv._js, subjects.KV_STRATEGIES, spec.strategy_id, spec)  # labelled: desk.bus.kv
            log.info("strategy.deployed", strategy_id=spec.strategy_id, member_id=spec.member_id,
                     legacy=spec.legacy, runtime=spec.runtime, path=spec.path)
            await self._start_locked(m)

    async def _start_locked(self, m: Managed) -> None:
        """User or deploy start (the lock is held): backoff history is forgotten."""
        self._cancel_restart(m)
        m.supervisor.start_requested()
        await self._launch(m)

    async def _launch(self, m: Managed) -> None:
        try:
            secrets = await self.identities.credentials(m.strategy_id) if self.identities else None
            handle = await self.runtime.start(m.spec, secrets)
        except Exception as exc:  # noqa: BLE001 - a strategy that cannot start is a crash, not our failure
            log.error("strategy.start_failed", strategy_id=m.strategy_id, error=repr(exc))
            self._after_exit(m, ExitInfo(START_FAILED_EXIT_CODE, "could not start", f"could not start: {exc}"))
            return
        m.handle = handle
        m.supervisor.started(handle.pid)
        log.info("strategy.started", strategy_id=m.strategy_id, pid=handle.pid, restarts=m.supervisor.restarts)
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
        strategy_id = m.strategy_id
        if decision.state == STOPPED:
            log.info("strategy.stopped", strategy_id=strategy_id, exit_code=info.exit_code, reason=info.reason)
            return
        log.warning("strategy.crashed", strategy_id=strategy_id, exit_code=info.exit_code, reason=info.reason,
                    last_error=info.last_error)
        if decision.restart_in is None:
            log.error("strategy.failed", strategy_id=strategy_id, message=decision.message)
            return
        m.supervisor.backoff(decision.restart_in)
        log.info("strategy.restart_scheduled", strategy_id=strategy_id, delay=decision.restart_in,
                 attempt=m.supervisor.consecutive_crashes)
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

    def status(self, m: Managed) -> strategy_pb2.StrategyStatus:
        sup = m.supervisor
        wait = sup.seconds_to_restart()
        return strategy_pb2.StrategyStatus(
            strategy_id=m.strategy_id,
            member_id=m.spec.member_id,
            state=sup.state,
            runtime=m.spec.runtime or self.runtime.name,
            pid=sup.pid,
            container_id=m.handle.container_id if m.handle else "",
            restarts=sup.restarts,
            last_error=sup.last_error,
            exit_code=sup.exit_code,
            started_ns=m.handle.started_ns if m.handle and sup.state in ACTIVE else 0,
            last_heartbeat_ns=self.heartbeats.get(m.strategy_id, 0),
            next_restart_ns=time.time_ns() + int(wait * 1e9) if wait is not None else 0,
        )

    def _status_list(self, targets: list[Managed]) -> strategy_pb2.StrategyStatusList:
        notes: list[str] = []
        for m in targets:
            if m.supervisor.state == FAILED:
                notes.append(f"{m.strategy_id}: {m.supervisor.message}")
        if self.invalid:
            notes.append(
                "invalid strategies (not deployable): "
                + "; ".join(f"{sid}: {error}" for sid, error in sorted(self.invalid.items()))
            )
        return strategy_pb2.StrategyStatusList(strategies=[self.status(m) for m in targets], message=" | ".join(notes))


def make_runtime(settings: Settings) -> Runtime:
    """The runtime the settings ask for (ORCH_RUNTIME)."""
    if settings.orch_runtime == "docker":
        import docker  # only the docker runtime needs the Docker SDK

        from services.orchestrator.runtimes.docker import DockerRuntime

        return DockerRuntime(
            client=docker.from_env(),
            image=settings.orch_docker_image,
            host_strategies_dir=settings.orch_docker_host_strategies_dir,
            strategies_dir=settings.orch_strategies_dir,
            log_dir=settings.orch_log_dir,
            nats_url=settings.orch_docker_nats_url,
            nats_container=settings.orch_docker_nats_container,
            default_memory=settings.orch_docker_memory,
            default_cpus=settings.orch_docker_cpus,
            default_pids=settings.orch_docker_pids,
        )
    return ProcessRuntime(
        nats_url=settings.nats_url,
        log_dir=settings.orch_log_dir,
        repo_root=settings.orch_repo_root,
        command=settings.orch_process_command,
    )


def make_start(settings: Settings, **options: Any) -> Callable[[ServiceRuntime], Any]:
    return Orchestrator(settings, **options).start
