"""JetStream streams and KV buckets of the desk, declared once.

Services create what is missing when they start and check, never change, what exists
(:func:`ensure_stream`: a warning lists what differs). Replicas and limits are set by one explicit,
idempotent step, :func:`provision` (``desk provision``, run by ``desk up``): an operator's R3 is not
undone by a service starting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, KeyValueConfig, ObjectStoreConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from desk.bus import subjects
from desk.bus.logging import get_logger
from desk.bus.retry import retrying

log = get_logger("desk.bus")

DAY = 24 * 3600.0
#: Seconds a lease lives unrenewed (the DESK_LEASES bucket's max_age; desk.bus.lease reads it from the
#: bucket, which is the server's truth). Changed only by re-creating the bucket or `nats kv` edit.
LEASE_TTL = 5.0

EXECUTIONS = StreamConfig(
    name=subjects.STREAM_EXECUTIONS,
    description="Execution reports from the broker gateways; Nats-Msg-Id = execution id",
    subjects=[subjects.EXEC_ALL],
    storage=StorageType.FILE,
    retention=RetentionPolicy.LIMITS,
    duplicate_window=10 * 60.0,  # a gateway retrying a publish within 10 minutes is deduplicated
    max_age=365 * DAY,
    discard=DiscardPolicy.OLD,
)

ORDERS = StreamConfig(
    name=subjects.STREAM_ORDERS,
    description="Routed orders and cancels, one work queue per venue (desk.broker.<venue>.orders)",
    subjects=[subjects.BROKER_ORDERS.format(venue="*")],
    storage=StorageType.FILE,
    retention=RetentionPolicy.WORK_QUEUE,
    duplicate_window=2 * 60.0,
    max_age=7 * DAY,
)

BUCKETS: dict[str, KeyValueConfig] = {
    subjects.KV_PRICES: KeyValueConfig(
        bucket=subjects.KV_PRICES, description="last trade price per symbol", history=1, storage=StorageType.FILE
    ),
    subjects.KV_STRATEGIES: KeyValueConfig(
        bucket=subjects.KV_STRATEGIES, description="StrategySpec per strategy id", history=5, storage=StorageType.FILE
    ),
    subjects.KV_RISK: KeyValueConfig(
        bucket=subjects.KV_RISK,
        description="kill switch: halt._global, halt.<strategy>",
        history=5,
        storage=StorageType.FILE,
    ),
    subjects.KV_ORDER_IDS: KeyValueConfig(
        bucket=subjects.KV_ORDER_IDS,
        description="first OrderAck per (strategy, client order id), for idempotent retries",
        history=1,
        storage=StorageType.FILE,
        ttl=7 * DAY,
    ),
    subjects.KV_LEASES: KeyValueConfig(
        bucket=subjects.KV_LEASES,
        description="active/standby leases: key = lease name, value = its holder; max_age = the lease TTL",
        history=1,
        storage=StorageType.FILE,
        ttl=LEASE_TTL,  # a dead holder's key expires on its own (desk.bus.lease)
    ),
}

#: Uploaded strategies (``desk deploy ./folder``): ``<strategy>/<version>`` = the folder as a tar,
#: ``<strategy>/current`` = which version runs and whose it is. Bounded: 1 GiB in all.
CODE_STORE = ObjectStoreConfig(
    bucket=subjects.OBJ_CODE,
    description="uploaded strategy folders: <strategy>/<version>, <strategy>/current",
    storage=StorageType.FILE,
    max_bytes=1024**3,
)


async def ensure_object_store(
    js: JetStreamContext, config: ObjectStoreConfig = CODE_STORE, *, deadline: float | None = 60.0
) -> ObjectStore:
    """Open object store ``config.bucket``, creating it (one replica) when it is missing (an existing
    desk upgraded to this release has none until ``desk provision`` or the orchestrator makes it).
    An election's errors are retried for up to ``deadline`` seconds."""
    return await retrying(
        lambda: _ensure_object_store(js, config), what=f"ensure object store {config.bucket}", deadline=deadline
    )


async def _ensure_object_store(js: JetStreamContext, config: ObjectStoreConfig) -> ObjectStore:
    bucket = config.bucket or ""
    try:
        return await js.object_store(bucket)
    except (NotFoundError, BucketNotFoundError):
        pass
    try:
        # nats-py sets config.bucket from its `bucket` argument (even when None): pass both, on a copy
        return await js.create_object_store(bucket, config=dataclasses.replace(config))
    except BadRequestError:  # created meanwhile
        return await js.object_store(bucket)


#: The settings of a stream the desk declares and checks (what the desk's correctness depends on).
CHECKED = ("subjects", "retention", "storage", "max_age", "duplicate_window", "discard", "max_msgs_per_subject")


def _same(have: object, want: object, unordered: bool) -> bool:
    if isinstance(want, float) and isinstance(have, (int, float)):
        return abs(have - want) < 1e-6  # the server rounds durations to nanoseconds
    if unordered and isinstance(want, list) and isinstance(have, list):
        return sorted(have) == sorted(want)
    return have == want


def differences(
    found: Any, wanted: Any, fields: tuple[str, ...] = CHECKED, unordered: frozenset[str] = frozenset({"subjects"})
) -> dict[str, tuple[object, object]]:
    """The ``fields`` ``wanted`` (a stream's or a consumer's config) sets that ``found`` has otherwise:
    name -> (found, wanted). Durations compare within a nanosecond; the ``unordered`` lists as sets."""
    out: dict[str, tuple[object, object]] = {}
    for name in fields:
        want = getattr(wanted, name)
        if want is None:
            continue
        have = getattr(found, name)
        if not _same(have, want, name in unordered):
            out[name] = (have, want)
    return out


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, deadline: float | None = 60.0) -> None:
    """A service's start: create ``config``'s stream when it is missing (one replica unless the config
    says otherwise); an existing one is checked, never changed — a warning lists what differs.
    Changing streams (replicas, limits) is :func:`provision`'s: ``desk provision``, run by ``desk up``.
    An election's errors are retried for up to ``deadline`` seconds (desk.bus.retry)."""
    await retrying(lambda: _ensure_stream(js, config), what=f"ensure stream {config.name}", deadline=deadline)


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        info = await js.stream_info(config.name or "")
    except NotFoundError:
        try:
            await js.add_stream(config)
            log.info("stream.created", stream=config.name, replicas=config.num_replicas or 1)
            return
        except BadRequestError:  # created meanwhile by another service
            info = await js.stream_info(config.name or "")
    diff = differences(info.config, config)
    if diff:
        log.warning(
            "stream.differs",
            stream=config.name,
            differences={k: f"{v[0]!r} (desk: {v[1]!r})" for k, v in diff.items()},
            hint="run `desk provision` to bring it to the desk's settings",
        )


async def ensure_bucket(
    js: JetStreamContext, bucket: str, *, deadline: float | None = 60.0, config: KeyValueConfig | None = None
) -> KeyValue:
    """Open KV ``bucket`` (one of :data:`BUCKETS`), creating it (one replica; ``config`` instead of the
    declared one when given) if it is missing; an existing bucket is used as it is. An election's
    errors are retried for up to ``deadline`` seconds."""
    wanted = config or BUCKETS[bucket]
    return await retrying(lambda: _ensure_bucket(js, bucket, wanted), what=f"ensure bucket {bucket}", deadline=deadline)


async def _ensure_bucket(js: JetStreamContext, bucket: str, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.key_value(bucket)
    except (NotFoundError, BucketNotFoundError):
        pass
    try:
        return await js.create_key_value(config)
    except BadRequestError:  # created meanwhile
        return await js.key_value(bucket)


async def ensure_all(js: JetStreamContext) -> None:
    """Every stream and bucket, created where missing (tests; ``desk up`` provisions instead)."""
    await ensure_stream(js, EXECUTIONS)
    await ensure_stream(js, ORDERS)
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket)


@dataclass(frozen=True)
class Provisioned:
    """What :func:`provision` did to one stream or bucket: ``created``, ``updated`` (with the changes)
    or ``unchanged``."""

    kind: str  # "stream" or "bucket"
    name: str
    action: str
    changes: dict[str, tuple[object, object]]
    replicas: int


def _bucket_stream(bucket: str, replicas: int) -> StreamConfig:
    """The stream behind KV ``bucket`` as nats-py's create_key_value makes it, with ``replicas``."""
    config = BUCKETS[bucket]
    return StreamConfig(
        name=f"KV_{bucket}",
        description=config.description,
        subjects=[f"$KV.{bucket}.>"],
        max_msgs_per_subject=config.history,
        max_age=config.ttl,
        storage=config.storage,
        num_replicas=replicas,
    )


async def provision(js: JetStreamContext, replicas: int = 1, *, log_actions: bool = True) -> list[Provisioned]:
    """Bring every stream and bucket of the desk to its declared settings with ``replicas`` copies:
    create what is missing, update what differs (replicas included, up or down: this is the operator's
    explicit step), leave the rest. Idempotent: a second run reports everything ``unchanged``.
    ``log_actions``: log each creation and update (a command prints them itself)."""
    if not 1 <= replicas <= 5:
        raise ValueError(f"replicas must be 1 to 5, got {replicas}")
    done: list[Provisioned] = []
    wanted: list[tuple[str, str, StreamConfig]] = [
        ("stream", c.name or "", dataclasses.replace(c, num_replicas=replicas)) for c in (EXECUTIONS, ORDERS)
    ]
    wanted += [("bucket", b, _bucket_stream(b, replicas)) for b in BUCKETS]
    for kind, name, config in wanted:
        stream = config.name or ""
        try:
            info = await js.stream_info(stream)
        except NotFoundError:
            if kind == "stream":
                await js.add_stream(config)
            else:
                await js.create_key_value(dataclasses.replace(BUCKETS[name], replicas=replicas))
            done.append(Provisioned(kind, name, "created", {}, replicas))
            if log_actions:
                log.info("provision.created", kind=kind, name=name, replicas=replicas)
            continue
        fields = (*CHECKED, "num_replicas") if kind == "stream" else ("max_msgs_per_subject", "max_age", "num_replicas")
        diff = differences(info.config, config, fields)
        if not diff:
            done.append(Provisioned(kind, name, "unchanged", {}, info.config.num_replicas or 1))
            continue
        changes: dict[str, Any] = {k: v[1] for k, v in diff.items()}
        update = dataclasses.replace(info.config, **changes)
        await js.update_stream(update)
        done.append(Provisioned(kind, name, "updated", diff, replicas))
        if log_actions:
            log.info(
                "provision.updated", kind=kind, name=name, changes={k: f"{a!r} -> {b!r}" for k, (a, b) in diff.items()}
            )
    done.append(await _provision_objects(js, replicas, log_actions))
    return done


async def _provision_objects(js: JetStreamContext, replicas: int, log_actions: bool) -> Provisioned:
    """The object store of uploaded strategies: created when missing, its replicas brought to ``replicas``."""
    name = CODE_STORE.bucket or ""
    stream = f"OBJ_{name}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        await js.create_object_store(name, config=dataclasses.replace(CODE_STORE, replicas=replicas))
        if log_actions:
            log.info("provision.created", kind="objects", name=name, replicas=replicas)
        return Provisioned("objects", name, "created", {}, replicas)
    have = info.config.num_replicas or 1
    if have == replicas:
        return Provisioned("objects", name, "unchanged", {}, have)
    await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    if log_actions:
        log.info("provision.updated", kind="objects", name=name, changes={"num_replicas": f"{have} -> {replicas}"})
    return Provisioned("objects", name, "updated", {"num_replicas": (have, replicas)}, replicas)
