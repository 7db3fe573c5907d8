"""Versions of uploaded strategies, in the JetStream object store ``DESK_CODE``.

``<strategy>/<n>`` holds version n (the checked tar, as uploaded); ``<strategy>/current`` a small
JSON record ``{"strategy_id", "member", "current", "versions"}``: whose strategy it is and which
version runs. Versions are kept; rollback runs the newest one older than the current.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from desk.bus import subjects
from desk.bus.logging import get_logger
from desk.bus.streams import ensure_object_store

log = get_logger("orchestrator")
CURRENT = "current"


@dataclass
class Pointer:
    strategy_id: str
    member: str
    current: int
    versions: list[int] = field(default_factory=list)

    def previous(self) -> int | None:
        older = [v for v in self.versions if v < self.current]
        return max(older) if older else None

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "strategy_id": self.strategy_id,
                "member": self.member,
                "current": self.current,
                "versions": sorted(self.versions),
            }
        ).encode()

    @classmethod
    def from_json(cls, strategy_id: str, data: bytes) -> Pointer | None:
        """The record, when it is well formed and about ``strategy_id`` (anything else is not believed)."""
        try:
            raw = json.loads(data)
            pointer = cls(
                str(raw["strategy_id"]), str(raw["member"]), int(raw["current"]), [int(v) for v in raw["versions"]]
            )
        except (ValueError, KeyError, TypeError):
            return None
        if (
            pointer.strategy_id != strategy_id
            or not subjects.MEMBER_LOGIN_RE.match(pointer.member)
            or pointer.current not in pointer.versions
        ):
            return None
        return pointer


class CodeStore:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    @classmethod
    async def open(cls, js: JetStreamContext) -> CodeStore:
        return cls(await ensure_object_store(js))

    async def pointers(self) -> dict[str, Pointer]:
        """Every uploaded strategy's record."""
        try:
            infos = await self.store.list()
        except (NotFoundError, ObjectNotFoundError):
            return {}
        found: dict[str, Pointer] = {}
        for info in infos:
            name = info.name or ""
            strategy_id, _, leaf = name.partition("/")
            if leaf != CURRENT or not subjects.STRATEGY_ID_RE.match(strategy_id):
                continue
            pointer = await self.pointer(strategy_id)
            if pointer is not None:
                found[strategy_id] = pointer
        return found

    async def pointer(self, strategy_id: str) -> Pointer | None:
        try:
            result = await self.store.get(f"{strategy_id}/{CURRENT}")
        except (NotFoundError, ObjectNotFoundError):
            return None
        pointer = Pointer.from_json(strategy_id, result.data or b"")
        if pointer is None:
            log.warning("code.bad_pointer", strategy_id=strategy_id)
        return pointer

    async def set_pointer(self, pointer: Pointer) -> None:
        await self.store.put(f"{pointer.strategy_id}/{CURRENT}", pointer.to_json())

    async def put_version(self, strategy_id: str, version: int, data: bytes) -> None:
        await self.store.put(f"{strategy_id}/{version}", data)

    async def get_version(self, strategy_id: str, version: int) -> bytes:
        result = await self.store.get(f"{strategy_id}/{version}")
        return bytes(result.data or b"")

    async def delete_version(self, strategy_id: str, version: int) -> None:
        try:
            await self.store.delete(f"{strategy_id}/{version}")
        except (NotFoundError, ObjectNotFoundError):
            pass
