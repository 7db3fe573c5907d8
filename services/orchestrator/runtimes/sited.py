"""The docker runtime across sites: the desk's own engine plus one per site (services.orchestrator.sites).

One :class:`~services.orchestrator.runtimes.base.Runtime` to the orchestrator: a strategy whose spec
names a ``site`` starts, stops, is waited for and has its logs read on that site's engine; every other
one on the desk's own. Which engine a running strategy is on is remembered from its start.
"""

from __future__ import annotations

import asyncio

from desk.bus.logging import get_logger
from desk.v1 import strategy_pb2
from services.orchestrator.runtimes.base import ExitInfo, LogSlice, RunHandle
from services.orchestrator.runtimes.docker import DockerRuntime

log = get_logger("orchestrator")


class UnknownSite(RuntimeError):
    pass


class SitedRuntime:
    def __init__(self, main: DockerRuntime, sites: dict[str, DockerRuntime]) -> None:
        self.main = main
        self.sites = sites
        self._site_of: dict[str, str] = {}

    @property
    def name(self) -> str:
        return self.main.name

    @property
    def confinement(self) -> str:
        return self.main.confinement

    @property
    def log_epoch(self) -> str:
        return self.main.log_epoch

    def for_site(self, site: str) -> DockerRuntime:
        if not site:
            return self.main
        runtime = self.sites.get(site)
        if runtime is None:
            known = ", ".join(sorted(self.sites)) or "none"
            raise UnknownSite(f"site {site!r} is not one of this desk's sites (ORCH_SITES: {known})")
        return runtime

    def _of(self, strategy_id: str) -> DockerRuntime:
        return self.for_site(self._site_of.get(strategy_id, ""))

    async def start(self, spec: strategy_pb2.StrategySpec, secrets: dict[str, str] | None = None) -> RunHandle:
        runtime = self.for_site(spec.site)
        previous = self._site_of.get(spec.strategy_id)
        if previous is not None and previous != spec.site:  # it moved: its old run's leftovers go
            await self.for_site(previous).remove(spec.strategy_id)
        self._site_of[spec.strategy_id] = spec.site
        return await runtime.start(spec, secrets)

    async def stop(self, handle: RunHandle, timeout: float) -> None:
        await self._of(handle.strategy_id).stop(handle, timeout)

    async def wait(self, handle: RunHandle) -> ExitInfo:
        return await self._of(handle.strategy_id).wait(handle)

    async def logs(self, strategy_id: str, tail: int) -> list[str]:
        return await self._of(strategy_id).logs(strategy_id, tail)

    async def follow_logs(self, strategy_id: str, after: int | None, tail: int) -> LogSlice:
        return await self._of(strategy_id).follow_logs(strategy_id, after, tail)

    async def cleanup(self) -> None:
        """Every engine's leftovers; a site whose engine does not answer is logged, not fatal (its
        strategies fail to start, each with the engine's error, until it answers)."""
        await self.main.cleanup()
        results = await asyncio.gather(*(r.cleanup() for r in self.sites.values()), return_exceptions=True)
        for site, result in zip(self.sites, results, strict=True):
            if isinstance(result, BaseException):
                log.error("site.unreachable", site=site, error=repr(result))

    def reload_nats(self) -> None:
        self.main.reload_nats()


__all__ = ["SitedRuntime", "UnknownSite"]
