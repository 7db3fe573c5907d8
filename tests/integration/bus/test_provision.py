"""Streams and buckets: services create what is missing and never change what an operator set;
`desk provision` is the one explicit, idempotent step that does (real nats-server)."""

from __future__ import annotations

import dataclasses
import json

import nats
import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from desk.bus import streams, subjects
from desk.bus.testing import NatsServer
from desk.cli.main import app


async def test_provision_creates_everything_once_then_changes_nothing(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        first = await streams.provision(js)
        assert {(d.kind, d.name, d.action) for d in first} == (
            {("stream", subjects.STREAM_EXECUTIONS, "created"), ("stream", subjects.STREAM_ORDERS, "created")}
            | {("bucket", b, "created") for b in streams.BUCKETS}
            | {("objects", subjects.OBJ_CODE, "created")}
        )
        again = await streams.provision(js)
        assert {d.action for d in again} == {"unchanged"}
        kv = await js.key_value(subjects.KV_ORDER_IDS)  # buckets made by provision are real KV buckets
        await kv.put("k", b"v")
        assert (await kv.get("k")).value == b"v"
    finally:
        await nc.close()


async def test_a_service_start_does_not_undo_an_operators_change_provision_does(nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await streams.provision(js)
        info = await js.stream_info(subjects.STREAM_EXECUTIONS)
        await js.update_stream(dataclasses.replace(info.config, max_age=30 * streams.DAY))  # the operator's
        with capture_logs() as logs:
            await streams.ensure_stream(js, streams.EXECUTIONS)  # what every service does at start
        assert (await js.stream_info(subjects.STREAM_EXECUTIONS)).config.max_age == pytest.approx(30 * streams.DAY)
        warned = [e for e in logs if e["event"] == "stream.differs"]
        assert warned and "max_age" in warned[0]["differences"] and "desk provision" in warned[0]["hint"]
        done = {d.name: d for d in await streams.provision(js)}
        assert done[subjects.STREAM_EXECUTIONS].action == "updated"
        assert set(done[subjects.STREAM_EXECUTIONS].changes) == {"max_age"}
        assert (await js.stream_info(subjects.STREAM_EXECUTIONS)).config.max_age == pytest.approx(365 * streams.DAY)
    finally:
        await nc.close()


def test_desk_provision_on_the_command_line_and_a_clear_error_for_more_replicas_than_servers(
    nats_server: NatsServer,
) -> None:
    runner = CliRunner()
    done = runner.invoke(app, ["--nats-url", nats_server.url, "provision", "--json"])
    assert done.exit_code == 0, done.output
    assert {d["action"] for d in json.loads(done.stdout)} == {"created"}
    again = runner.invoke(app, ["--nats-url", nats_server.url, "provision"])
    assert again.exit_code == 0 and "unchanged" in again.stdout and "created" not in again.stdout
    too_many = runner.invoke(app, ["--nats-url", nats_server.url, "provision", "--replicas", "3"])
    assert too_many.exit_code == 1 and "provisioning failed" in too_many.output
