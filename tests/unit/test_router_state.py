"""The router's pure state machines: the kill switch (services.order_router.halts) and the order-id
bookkeeping and acks (services.order_router.acks), without NATS or an event loop."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from desk.bus.errors import DeskError
from desk.core.ids import order_id_for
from desk.core.orders import validate_order
from desk.v1 import common_pb2, orders_pb2
from services.order_router.acks import OrderIds, accepted_ack, duplicate_of, refused_ack, stored_ack_matches
from services.order_router.halts import GLOBAL_HALT_KEY, Halts

ROOT = Path(__file__).resolve().parents[2]


def halt(strategy_id: str = "", reason: str = "test") -> orders_pb2.HaltRequest:
    return orders_pb2.HaltRequest(strategy_id=strategy_id, reason=reason, requested_by="tests")


# -- halts ----------------------------------------------------------------------------------------


def test_a_desk_halt_refuses_every_strategy_and_a_strategy_halt_only_its_own() -> None:
    halts = Halts()
    halts.check("alpha")  # nothing halted
    assert halts.apply("halt.alpha", 1, halt("alpha", "too fast"))
    with pytest.raises(DeskError, match="strategy alpha: too fast") as err:
        halts.check("alpha")
    assert err.value.code == "HALTED"
    halts.check("beta")
    assert halts.apply(GLOBAL_HALT_KEY, 2, halt(reason=""))
    with pytest.raises(DeskError, match="the desk: no reason given"):
        halts.check("beta")


def test_an_older_revision_never_undoes_a_newer_one() -> None:
    halts = Halts()
    assert halts.apply("halt.alpha", 5, halt("alpha"))
    assert not halts.apply("halt.alpha", 4, None)  # a late watch event of an earlier resume
    assert not halts.apply("halt.alpha", 5, None)  # the same revision again (our own write, then the watch)
    assert "halt.alpha" in halts
    assert halts.apply("halt.alpha", 6, None)
    assert "halt.alpha" not in halts
    assert not halts.apply("halt.alpha", 3, halt("alpha"))  # an older halt after the resume


def test_a_resume_of_a_key_not_halted_changes_nothing_but_its_revision_counts() -> None:
    halts = Halts()
    assert not halts.apply("halt.alpha", 2, None)
    assert not halts.apply("halt.alpha", 1, halt("alpha"))  # older than the resume: ignored
    assert halts.keys() == []


def test_the_state_names_the_desk_halt_and_the_halted_strategies_sorted() -> None:
    halts = Halts()
    assert halts.state("") == orders_pb2.HaltAck(global_halted=False, halted_strategies=[], message="")
    halts.apply("halt.beta", 1, halt("beta"))
    halts.apply("halt.alpha", 1, halt("alpha"))
    halts.apply(GLOBAL_HALT_KEY, 1, halt())
    state = halts.state("halted the desk")
    assert (state.global_halted, list(state.halted_strategies), state.message) == (
        True,
        ["alpha", "beta"],
        "halted the desk",
    )
    assert halts.keys() == [GLOBAL_HALT_KEY, "halt.alpha", "halt.beta"]


# -- order ids ------------------------------------------------------------------------------------


def test_order_ids_prune_what_is_older_than_the_ttl_and_say_when_a_prune_is_due() -> None:
    ids = OrderIds(ttl=100.0, prune_every=10.0, now=1000.0)
    ids.record("alpha.old", 850.0)
    ids.record("alpha.new", 950.0)
    assert set(ids) == {"alpha.old", "alpha.new"} and len(ids) == 2 and ids["alpha.new"] == 950.0
    assert not ids.prune_due(1005.0)
    assert ids.prune_due(1010.5)
    assert ids.prune(1010.5) == 1
    assert dict(ids) == {"alpha.new": 950.0}
    assert not ids.prune_due(1015.0)  # counted from the last prune


def test_a_forgotten_key_is_no_longer_seen_and_forgetting_twice_is_harmless() -> None:
    ids = OrderIds(ttl=100.0, prune_every=10.0, now=0.0)
    ids.record("alpha.c-1", 1.0)
    assert "alpha.c-1" in ids
    ids.forget("alpha.c-1")
    ids.forget("alpha.c-1")
    assert "alpha.c-1" not in ids


# -- acks -----------------------------------------------------------------------------------------


def order_request(client_order_id: str = "c-1") -> orders_pb2.OrderRequest:
    return orders_pb2.OrderRequest(
        strategy_id="alpha",
        client_order_id=client_order_id,
        symbol="AAPL",
        side=common_pb2.SIDE_BUY,
        type=common_pb2.ORDER_TYPE_MARKET,
        time_in_force=common_pb2.TIME_IN_FORCE_DAY,
        qty="10",
    )


def test_an_accepted_ack_carries_the_derived_order_id_and_a_duplicate_is_a_marked_copy() -> None:
    order = validate_order(order_request(), "desk.order.submit.alpha")
    ack = accepted_ack(order, ts_ns=7)
    assert (ack.strategy_id, ack.client_order_id, ack.order_id, ack.accepted, ack.duplicate, ack.ts_ns) == (
        "alpha",
        "c-1",
        order_id_for("alpha", "c-1"),
        True,
        False,
        7,
    )
    again = duplicate_of(ack)
    assert again.duplicate and not ack.duplicate
    again.duplicate = False
    assert again == ack


def test_a_stored_ack_is_used_only_under_its_own_key() -> None:
    ack = orders_pb2.OrderAck(strategy_id="alpha", client_order_id="c-1")
    assert stored_ack_matches("alpha.c-1", ack)
    assert not stored_ack_matches("beta.c-1", ack)
    assert not stored_ack_matches("alpha.c-2", ack)


def test_a_refusal_names_the_request_or_else_the_subjects_strategy() -> None:
    err = DeskError("HALTED", "trading is halted", status=409)
    ack = refused_ack(orders_pb2.OrderAck, err, "desk.order.submit.alpha", order_request(), ts_ns=3)
    assert (ack.strategy_id, ack.client_order_id, ack.order_id, ack.accepted, ack.message, ack.ts_ns) == (
        "alpha",
        "c-1",
        order_id_for("alpha", "c-1"),
        False,
        "trading is halted",
        3,
    )
    assert ack.reason == orders_pb2.REJECT_REASON_HALTED

    undecoded = refused_ack(
        orders_pb2.CancelAck, DeskError("MALFORMED", "bad bytes"), "desk.order.cancel.beta", None, 4
    )
    assert isinstance(undecoded, orders_pb2.CancelAck)
    assert (undecoded.strategy_id, undecoded.client_order_id, undecoded.order_id) == ("beta", "", "")


def test_the_state_modules_load_neither_nats_nor_asyncio() -> None:
    code = (
        "import sys\n"
        "import services.order_router.acks, services.order_router.halts\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'asyncio', 'structlog')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
