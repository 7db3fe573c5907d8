"""A running embedded desk plus the dashboard, for the browser tests, and headless Chromium.

The desk is `desk up` in a child process (nats-server, every service, the example strategies and a
probe strategy of the test's own), and the dashboard is `python -m services.dashboard` beside it,
as `desk up` will run it. Both start once per module; each test gets a fresh browser.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from playwright.async_api import Browser, async_playwright

from tests.support import desk_url

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OPERATOR_PASSWORD = "browser-test-operator"
EXAMPLES = ("ma_crossover", "mean_reversion", "legacy_momentum")
PROBE = "browser_probe"
PROBE_MEMBER = "erin"
PROBE_NAME = "<b>probe</b>"
PROBE_LOG = "<img src=x onerror=\"document.title='pwned'\"> probe ready"
PROBE_STRATEGY = f'''\
from strategy_sdk import Strategy


class Probe(Strategy):
    """Trades only when the browser tests send orders on its subject; logs markup to be escaped."""

    def on_start(self) -> None:
        self.log.info({PROBE_LOG!r})
'''
PROBE_CONFIG = {
    "user_id": PROBE_MEMBER,
    "name": PROBE_NAME,
    "description": "orders placed by the browser tests",
    "version": "1.0.0",
    "env": {},
    "symbols": ["AAPL"],
    "initial_cash": "100000",
    "risk": {"max_order_notional": "25000", "max_position_notional": "100000", "max_orders_per_minute": 120},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Child:
    """A child process in its own session whose stdout lines are read by a thread."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log.open("ab")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.log, text=True, start_new_session=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.output.append(line)
            self.lines.put(line)
        self.lines.put(None)

    def wait_for_line(self, needle: str, timeout: float) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no {needle!r} within {timeout}s:\n{''.join(self.output[-30:])}") from None
            if line is None:
                raise AssertionError(f"exited before {needle!r}:\n{''.join(self.output[-30:])}")
            if needle in line:
                return line

    def stop(self, sig: signal.Signals, timeout: float) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(10)
        if self.process.stdout:
            self.process.stdout.close()
        self.log.close()
        return self.process.returncode


@dataclass
class RunningDesk:
    nats_url: str
    url: str  # the dashboard, without a trailing slash
    data_dir: Path


@pytest.fixture(scope="module")
def running_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningDesk]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (make test-browser does it)")
    base = tmp_path_factory.mktemp("desk")
    strategies = base / "strategies"
    for name in EXAMPLES:
        shutil.copytree(ROOT / "strategies" / name, strategies / name, ignore=shutil.ignore_patterns("__pycache__"))
    (strategies / PROBE).mkdir()
    (strategies / PROBE / "strategy.py").write_text(PROBE_STRATEGY)
    (strategies / PROBE / "config.json").write_text(json.dumps(PROBE_CONFIG))
    port = free_port()
    # `desk up` starts the dashboard itself (any free port) and prints its address.
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        MD_INTERVAL="0.25",
        LEDGER_SNAPSHOT_INTERVAL="1",
        COLUMNS="200",
        DASHBOARD_PORT="0",
        DASHBOARD_OPERATOR_PASSWORD=OPERATOR_PASSWORD,
        DASHBOARD_REPORTS_DIR=str(base / "reports"),  # backtest reports: <strategy>.html
    )
    desk = Child(
        [
            sys.executable,
            "-m",
            "desk.cli",
            "up",
            "--data-dir",
            str(base / "var"),
            "--strategies",
            str(strategies),
            "--port",
            str(port),
        ],
        env,
        base / "desk-up.log",
    )
    try:
        line = desk.wait_for_line("desk is up", timeout=120)
        match = re.search(r"dashboard on (http://[^\s/]+)", line)
        assert match, f"no dashboard address in {line!r}"
        yield RunningDesk(desk_url(port, base / "var"), match.group(1), base)
    finally:
        assert desk.stop(signal.SIGINT, 90) == 0, (base / "desk-up.log").read_text()[-3000:]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()
