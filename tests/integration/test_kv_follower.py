"""desk.bus.kv against a real nats-server: labelled writes, and a follower that believes only values
whose Desk-Type is the bucket's and whose id equals their key (forged or misplaced ones are ignored,
counted and logged), accepting an earlier release's unlabelled values only while loading."""

from __future__ import annotations

import asyncio
import contextlib

import nats.js.errors
import pytest
from nats.aio.client import Client

from desk.bus import codec, kv, subjects
from desk.bus.lifecycle import ServiceRuntime
from desk.v1 import orders_pb2, strategy_pb2

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self) -> None:
        self.changes: list[kv.Change[strategy_pb2.StrategySpec]] = []
        self.changed = asyncio.Condition()

    async def apply(self, change: kv.Change[strategy_pb2.StrategySpec]) -> None:
        async with self.changed:
            self.changes.append(change)
            self.changed.notify_all()

    async def wait_for(self, count: int) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: len(self.changes) >= count), 10)


def spec(strategy_id: str, member: str = "m") -> strategy_pb2.StrategySpec:
    return strategy_pb2.StrategySpec(strategy_id=strategy_id, member_id=member)


async def test_only_labelled_values_whose_id_is_their_key_are_believed(nc: Client) -> None:
    js = nc.jetstream()
    bucket = subjects.KV_STRATEGIES
    # Written by an earlier release (no label) before the follower starts: believed while loading.
    await js.publish(f"$KV.{bucket}.old", spec("old").SerializeToString())
    # ...but not when its id is another key's.
    await js.publish(f"$KV.{bucket}.victim", spec("attacker").SerializeToString())
    await kv.put(js, bucket, "alpha", spec("alpha"))

    seen = Seen()
    follower = kv.follower(js, bucket, seen.apply)
    async with contextlib.AsyncExitStack() as stack:
        runtime = ServiceRuntime(name="test", nc=nc, js=js, stack=stack)
        assert await follower.start(runtime) == 2
        assert {c.key: c.value.member_id for c in seen.changes if c.value} == {"old": "m", "alpha": "m"}
        assert all(c.initial for c in seen.changes)
        assert follower.ignored == {kv.KEY_MISMATCH: 1}

        # Live: a value of another type (a reply injected as a KV write), a value for another key, an
        # unlabelled value, a bad key: all ignored. A labelled, matching one is applied.
        ack_data, ack_headers = codec.encode(orders_pb2.OrderAck(strategy_id="alpha", accepted=True))
        await js.publish(f"$KV.{bucket}.alpha", ack_data, headers=ack_headers)
        await kv.put(js, bucket, "beta", spec("gamma"))
        await js.publish(f"$KV.{bucket}.beta", spec("beta").SerializeToString())
        await kv.put(js, bucket, "Not_An_Id", spec("Not_An_Id"))
        await kv.put(js, bucket, "beta", spec("beta", member="bob"))
        await seen.wait_for(3)
        latest = seen.changes[-1]
        assert (latest.key, latest.value and latest.value.member_id, latest.initial) == ("beta", "bob", False)
        assert len(seen.changes) == 3, [c.key for c in seen.changes]
        assert follower.ignored == {kv.KEY_MISMATCH: 2, kv.WRONG_TYPE: 1, kv.UNLABELLED: 1, kv.BAD_KEY: 1}

        # A delete reaches the follower as a change with no value.
        await (await js.key_value(bucket)).delete("alpha")
        await seen.wait_for(4)
        assert seen.changes[-1].key == "alpha" and seen.changes[-1].deleted


async def test_an_empty_bucket_is_loaded_at_once_and_create_refuses_an_existing_key(nc: Client) -> None:
    js = nc.jetstream()
    seen = Seen()
    async with contextlib.AsyncExitStack() as stack:
        runtime = ServiceRuntime(name="test", nc=nc, js=js, stack=stack)
        assert await kv.follower(js, subjects.KV_RISK, seen.apply).start(runtime) == 0

    ack = orders_pb2.OrderAck(strategy_id="alpha", client_order_id="c-1", accepted=True)
    key = subjects.order_id_key("alpha", "c-1")
    revision = await kv.create(js, subjects.KV_ORDER_IDS, key, ack)
    with pytest.raises(nats.js.errors.KeyWrongLastSequenceError):
        await kv.create(js, subjects.KV_ORDER_IDS, key, ack)
    entry = await (await js.key_value(subjects.KV_ORDER_IDS)).get(key)
    assert entry.revision == revision and codec.decode(entry.value or b"", orders_pb2.OrderAck) == ack
