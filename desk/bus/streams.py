"""JetStream streams and KV buckets of the desk, declared once and created idempotently."""

from __future__ import annotations

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

from desk.bus import subjects
from desk.bus.logging import get_logger

log = get_logger("desk.bus")

DAY = 24 * 3600.0

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
}


async def ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    """Create ``config``'s stream, or bring an existing one up to ``config``."""
    try:
        await js.add_stream(config)
    except BadRequestError:
        await js.update_stream(config)
        log.info("stream.updated", stream=config.name)


async def ensure_bucket(js: JetStreamContext, bucket: str) -> KeyValue:
    """Open KV ``bucket`` (one of :data:`BUCKETS`), creating it if needed."""
    config = BUCKETS[bucket]
    try:
        return await js.create_key_value(config)
    except BadRequestError:
        return await js.key_value(bucket)


async def ensure_all(js: JetStreamContext) -> None:
    """Every stream and bucket; ``desk up`` calls it once so services start in any order."""
    await ensure_stream(js, EXECUTIONS)
    await ensure_stream(js, ORDERS)
    for bucket in BUCKETS:
        await ensure_bucket(js, bucket)
