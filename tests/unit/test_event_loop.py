"""EVENT_LOOP: which asyncio event loop a service runs on."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from desk.bus.lifecycle import event_loop_factory
from desk.bus.settings import BusSettings


def test_auto_and_uvloop_run_services_on_uvloop_when_it_is_installed() -> None:
    for choice in ("auto", "uvloop"):
        factory, name = event_loop_factory(choice)
        assert name == "uvloop" and factory is not None
        loop = factory()
        try:
            assert isinstance(loop, uvloop.Loop)
        finally:
            loop.close()


def test_asyncio_keeps_the_standard_loop() -> None:
    factory, name = event_loop_factory("asyncio")
    assert (factory, name) == (None, "asyncio")
    with asyncio.Runner(loop_factory=factory) as runner:
        assert not isinstance(runner.get_loop(), uvloop.Loop)


def test_event_loop_defaults_to_auto_and_refuses_other_values(monkeypatch: pytest.MonkeyPatch) -> None:
    assert BusSettings().event_loop == "auto"
    monkeypatch.setenv("EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        BusSettings()
