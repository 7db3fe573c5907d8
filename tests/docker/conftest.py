"""The compose desk under a real Docker engine: one stack per test session, torn down afterwards.

Needs the images (`make build`, OFFLINE=1 here) and a running engine; `make test-docker` (which
`make test` runs) provides both, or says clearly why the Docker stage could not run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import free_port, wait_for_services

ROOT = Path(__file__).resolve().parents[2]
# QUANTDESK_TEST_PROJECT: another compose project name (a second checkout's run beside this one).
PROJECT = os.environ.get("QUANTDESK_TEST_PROJECT", "quantdesk-test")
SERVICES = ("marketdata", "ledger", "broker_gateway", "order_router", "orchestrator")
# The second "machine" of the site test (compose.site.yaml, its own compose project on this engine).
SITE_PROJECT = f"{PROJECT}-site"
SITE_LEAF = f"{SITE_PROJECT}-leaf"  # compose.site.yaml: SITE_LEAF_CONTAINER
EXAMPLES = {"ma_crossover": "alice", "mean_reversion": "bob", "legacy_momentum": "carol"}
BROKER_KEY = "PKTEST-never-give-this-to-a-strategy"

# A strategy that only idles: the isolation probes run inside its container with `docker exec`.
IDLE = """
from strategy_sdk import Strategy

class Idle(Strategy):
    def on_bar(self, bar):
        pass
"""

# A strategy that allocates far past its 64 MB limit as soon as it starts.
HOG = """
from strategy_sdk import Strategy

class Hog(Strategy):
    def on_start(self):
        self.log.info("allocating past the memory limit")
        self.blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]
"""


def compose_command() -> list[str]:
    v2 = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    return ["docker", "compose"] if v2.returncode == 0 else ["docker-compose"]


@dataclass
class ComposeDesk:
    strategies: Path
    nats_port: int
    env: dict[str, str]

    credentials: Path | None = None

    @property
    def url(self) -> str:
        """With the admin credentials of the stack (its NATS runs with authorization)."""
        assert self.credentials is not None
        creds = json.loads(self.credentials.read_text())
        return f"nats://{creds['user']}:{creds['password']}@127.0.0.1:{self.nats_port}"

    @property
    def plain_url(self) -> str:
        return f"nats://127.0.0.1:{self.nats_port}"

    def compose(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*compose_command(), "-p", PROJECT, "-f", str(ROOT / "compose.yaml"), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=600,
            check=check,
        )

    def desk(self, *args: str) -> dict[str, Any]:
        result = subprocess.run(
            [
                str(ROOT / ".venv" / "bin" / "desk"),
                "--nats-url",
                self.plain_url,
                "--credentials",
                str(self.credentials),
                *args,
                "--json",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        reply: dict[str, object] = json.loads(result.stdout)
        return reply

    def make(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "--no-print-directory", *args],
            cwd=ROOT,
            env={**self.env, "NATS_URL": self.plain_url, "DESK_CREDENTIALS": str(self.credentials)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


def docker(*args: str) -> str:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def remove_strategy_leftovers(desk: str = PROJECT) -> None:
    """This desk's strategy containers, networks and code volumes (labelled quantdesk.desk=PROJECT by
    its orchestrator; a site's: PROJECT@<site>): another project's on the same engine are left alone."""
    mine = f"label=quantdesk.desk={desk}"
    for container in docker("ps", "-aq", "--filter", "label=quantdesk.strategy", "--filter", mine).split():
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    for container in docker("ps", "-aq", "--filter", "label=quantdesk.code-version", "--filter", mine).split():
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)  # a code volume's filler
    for network in docker("network", "ls", "-q", "--filter", "label=quantdesk.strategy", "--filter", mine).split():
        subprocess.run(["docker", "network", "rm", network], capture_output=True, check=False)
    for volume in docker("volume", "ls", "-q", "--filter", "label=quantdesk.code-version", "--filter", mine).split():
        subprocess.run(["docker", "volume", "rm", "-f", volume], capture_output=True, check=False)  # uploaded code


def wait_for_docker_health(desk: ComposeDesk, timeout: float = 180) -> None:
    """Until Docker's own healthchecks (the micro PING) call every service healthy.

    The engine runs them on its interval; their result is only observable by inspecting, so this
    polls, bounded by ``timeout``, and fails with the states it last saw."""
    ids = desk.compose("ps", "-q").stdout.split()
    deadline = time.monotonic() + timeout
    states: dict[str, str] = {}
    while time.monotonic() < deadline:
        states = {}
        for container_id in ids:
            name, health = docker(
                "inspect", "-f", "{{.Name}} {{if .State.Health}}{{.State.Health.Status}}{{end}}", container_id
            ).partition(" ")[::2]
            states[name] = health or "no healthcheck"
        if all(h in ("healthy", "no healthcheck") for h in states.values()):
            return
        time.sleep(1)
    raise AssertionError(f"services not healthy within {timeout}s: {states}")


@pytest.fixture(scope="session")
def compose_desk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeDesk]:
    if (
        shutil.which("docker") is None
        or subprocess.run(["docker", "info"], capture_output=True, check=False).returncode
    ):
        pytest.fail("no Docker engine: run these tests through `make test-docker`, which starts one")
    images = docker("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    missing = {"quantdesk/service:latest", "quantdesk/strategy:latest", "quantdesk/nats:latest"} - set(images)
    assert not missing, f"images missing, run `make build OFFLINE=1`: {sorted(missing)}"

    strategies = tmp_path_factory.mktemp("compose") / "strategies"
    for name in EXAMPLES:
        shutil.copytree(ROOT / "strategies" / name, strategies / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name, source, extra in (
        ("idle_a", IDLE, {}),
        ("idle_b", IDLE, {}),
        ("hog", HOG, {"resources": {"memory": "64m", "pids": 64}}),
    ):
        (strategies / name).mkdir()
        (strategies / name / "strategy.py").write_text(source)
        config = {
            "user_id": f"member_{name}",
            "name": name,
            "description": "docker test",
            "version": "1",
            "env": {"PURPOSE": "isolation-test"},
            **extra,
        }
        (strategies / name / "config.json").write_text(json.dumps(config))
    strategies.chmod(0o755)

    nats_port = free_port()
    env = {
        **os.environ,
        "DESK_STRATEGIES_DIR": str(strategies),
        "NATS_PORT": str(nats_port),
        "NATS_MONITOR_PORT": str(free_port()),
        "LEAF_PORT": str(free_port()),
        "DASHBOARD_PORT": str(free_port()),
        "MD_INTERVAL": "0.25",
        "ALPACA_API_KEY": BROKER_KEY,
        "ALPACA_SECRET_KEY": BROKER_KEY + "-secret",
        "BROKER": "sim",
        # a site whose engine is this one (its own compose project stands for the second machine)
        "ORCH_SITES": json.dumps({"lab": {"docker_host": "unix:///var/run/docker.sock", "leaf_container": SITE_LEAF}}),
    }
    desk = ComposeDesk(strategies, nats_port, env)
    remove_strategy_leftovers()
    desk.compose("down", "--volumes", "--remove-orphans", check=False)
    try:
        up = desk.compose("up", "-d", check=False)
        assert up.returncode == 0, up.stderr
        creds = desk.compose(
            "run", "--rm", "--no-deps", "-T", "nats-auth", "python", "-m", "desk.bus.auth", "cli-credentials", "/auth"
        )
        desk.credentials = strategies.parent / "cli.json"
        desk.credentials.write_text(creds.stdout.strip().splitlines()[-1])
        asyncio.run(wait_for_services(desk.url, SERVICES))
        wait_for_docker_health(desk)
        yield desk
    finally:
        logs = desk.compose("logs", "--no-color", "--tail", "30", check=False)
        print(logs.stdout[-20000:])
        desk.compose("down", "--volumes", "--remove-orphans", check=False)
        remove_strategy_leftovers()
