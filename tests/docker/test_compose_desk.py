"""The desk under `docker compose`, strategies in hardened containers: tests that can fail."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.docker.conftest import (
    BROKER_KEY,
    EXAMPLES,
    PROJECT,
    ROOT,
    SERVICES,
    SITE_LEAF,
    SITE_PROJECT,
    ComposeDesk,
    compose_command,
    docker,
    remove_strategy_leftovers,
)
from tests.support import (
    LEDGER_ACKS,
    follow,
    follow_executions,
    ledger_caught_up,
    login_refused,
    member_cli,
    poll,
    wait_for_fills,
    write_strategy,
)

pytestmark = pytest.mark.docker


def container(strategy_id: str) -> str:
    return f"quantdesk-strategy-{strategy_id}"


def probe(strategy_id: str, code: str) -> dict[str, object]:
    """Run Python inside a strategy's container (same user, filesystem and network) -> its JSON."""
    result = subprocess.run(
        ["docker", "exec", container(strategy_id), "python", "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout)
    return answer


CONNECT = """
import json, socket, sys
results = {}
for target in sys.argv[1:] if len(sys.argv) > 1 else TARGETS:
    host, port = target.rsplit(":", 1)
    s = socket.socket(); s.settimeout(3)
    try:
        s.connect((host, int(port))); results[target] = "reachable"
    except OSError as exc:
        results[target] = f"blocked: {exc}"
    finally:
        s.close()
print(json.dumps(results))
"""


def strategy_state(desk: ComposeDesk, strategy_id: str) -> dict[str, object]:
    status = desk.desk("status", strategy_id)["strategies"]
    assert isinstance(status, list)
    return dict(status[0])


@pytest.fixture(scope="module")
def host_listener() -> Iterator[int]:
    """A TCP server of ours on every host address: a strategy must not reach it."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", 0))
    server.listen(16)
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.5)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join(5)
    server.close()


def test_every_service_is_healthy_and_each_strategy_runs_in_its_own_labelled_container(
    compose_desk: ComposeDesk,
) -> None:
    ps = compose_desk.compose("ps").stdout
    for service in SERVICES:
        line = next(line for line in ps.splitlines() if f"_{service}_" in line or f"-{service}-" in line)
        assert "healthy" in line and "unhealthy" not in line, line

    names = ("ma_crossover", "mean_reversion", "legacy_momentum", "idle_a", "idle_b")
    deadline = time.monotonic() + 90  # RUNNING once each container's strategy has heartbeaten: wait, bounded
    while True:
        status = {s["strategy_id"]: s for s in compose_desk.desk("status")["strategies"]}
        if all(status[n]["state"] == "running" for n in names) or time.monotonic() > deadline:
            break
        time.sleep(0.5)  # polling `desk status`, bounded by the deadline
    for strategy_id in names:
        assert status[strategy_id]["state"] == "running", status[strategy_id]
        assert status[strategy_id]["runtime"] == "docker"
        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", container(strategy_id)))
        assert labels["quantdesk.strategy"] == strategy_id
        assert docker("inspect", "-f", "{{.Id}}", container(strategy_id)) == status[strategy_id]["container_id"]


def test_fills_of_the_example_strategies_reach_the_ledger_and_the_leaderboard(compose_desk: ComposeDesk) -> None:
    async def run() -> None:
        nc = await nats.connect(compose_desk.url)
        try:
            executions = await follow_executions(nc)
            acks = await follow(nc, LEDGER_ACKS)
            await wait_for_fills(executions, EXAMPLES, timeout=180)
            await ledger_caught_up(nc, acks)
        finally:
            await nc.close()

    asyncio.run(run())
    fills = compose_desk.desk("fills", "--limit", "10000")["fills"]
    assert set(EXAMPLES.values()) <= {f["member_id"] for f in fills}
    board = compose_desk.desk("leaderboard")["rows"]
    assert set(EXAMPLES.values()) <= {row["member_id"] for row in board}


def test_a_strategy_runs_as_non_root_on_a_read_only_root_filesystem_without_broker_keys(
    compose_desk: ComposeDesk,
) -> None:
    facts = probe(
        "idle_a",
        """
import json, os
def can_write(path):
    try:
        with open(path, "w") as f: f.write("x")
        return True
    except OSError:
        return False
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "root_fs": can_write("/owned"),
                  "strategy_dir": can_write("/strategy/owned"), "tmp": can_write("/tmp/scratch"),
                  "env": dict(os.environ), "caps": open("/proc/self/status").read().split("CapEff:")[1].split()[0]}))
""",
    )
    assert facts["uid"] != 0 and facts["gid"] != 0
    assert facts["root_fs"] is False and facts["strategy_dir"] is False and facts["tmp"] is True
    assert int(str(facts["caps"]), 16) == 0, "capabilities left"
    env = facts["env"]
    assert isinstance(env, dict)
    assert env["PURPOSE"] == "isolation-test" and env["DESK_STRATEGY_ID"] == "idle_a"
    assert not any(BROKER_KEY in value for value in env.values())
    assert not any(key.startswith("ALPACA") for key in env)
    limits = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", container("idle_a")))
    assert limits["ReadonlyRootfs"] is True and limits["CapDrop"] == ["ALL"]
    assert limits["Memory"] > 0 and limits["NanoCpus"] > 0 and limits["PidsLimit"] > 0
    assert any("no-new-privileges" in opt for opt in limits["SecurityOpt"])


def test_a_strategy_reaches_nats_and_nothing_else(compose_desk: ComposeDesk, host_listener: int) -> None:
    def addresses(name: str) -> list[str]:
        networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name))
        return [n["IPAddress"] for n in networks.values() if n["IPAddress"]]

    def gateways(name: str) -> list[str]:
        networks = json.loads(docker("inspect", "-f", "{{json .NetworkSettings.Networks}}", name))
        return [n["Gateway"] for n in networks.values() if n["Gateway"]]

    ledger = next(line.split()[0] for line in compose_desk.compose("ps").stdout.splitlines() if "ledger" in line)
    other_strategy = addresses(container("idle_b"))
    targets = ["nats:4222"]
    targets += [f"{ip}:{host_listener}" for ip in gateways(ledger)]  # the host, seen from the desk network
    targets += [f"{ip}:{host_listener}" for ip in gateways(container("idle_a"))]  # the host, from its own
    targets += [f"{ip}:8222" for ip in other_strategy]  # another strategy's container
    targets += [f"{ip}:4222" for ip in addresses(ledger)]  # a service's container
    assert len(targets) >= 3
    reached = probe("idle_a", CONNECT.replace("TARGETS", repr(targets)))
    assert reached.pop("nats:4222") == "reachable"
    assert reached and all(str(v).startswith("blocked") for v in reached.values()), reached


def test_a_strategy_past_its_memory_limit_is_killed_and_reported_while_the_rest_keep_running(
    compose_desk: ComposeDesk,
) -> None:
    async def run() -> None:
        nc = await nats.connect(compose_desk.url)
        try:
            async with asyncio.timeout(180):
                while True:
                    state = strategy_state(compose_desk, "hog")
                    if "OOM" in str(state.get("last_error", "")):
                        break
                    await asyncio.sleep(1)  # the orchestrator's status is the observable; polled, bounded
            for name in SERVICES:
                await nc.request(f"$SRV.PING.{name}", b"", timeout=5)
        finally:
            await nc.close()

    asyncio.run(run())
    hog = strategy_state(compose_desk, "hog")
    assert "memory limit of 64m" in str(hog["last_error"])
    assert hog["state"] in ("backoff", "running", "starting", "crashed", "failed")
    for strategy_id in ("ma_crossover", "idle_a", "idle_b"):
        other = strategy_state(compose_desk, strategy_id)
        assert other["state"] == "running" and int(str(other.get("restarts", 0))) == 0, other


def test_make_status_stop_and_deploy_work_against_the_containers(compose_desk: ComposeDesk) -> None:
    status = compose_desk.make("status")
    assert status.returncode == 0 and "idle_b" in status.stdout and "running" in status.stdout, status.stderr

    stopped = compose_desk.make("stop", "NAME=idle_b")
    assert stopped.returncode == 0, stopped.stderr
    assert docker("inspect", "-f", "{{.State.Running}}", container("idle_b")) == "false"
    assert strategy_state(compose_desk, "idle_b")["state"] == "stopped"

    deployed = compose_desk.make("deploy", "NAME=idle_b")
    assert deployed.returncode == 0, deployed.stderr
    assert docker("inspect", "-f", "{{.State.Running}}", container("idle_b")) == "true"
    assert strategy_state(compose_desk, "idle_b")["state"] == "running"

    logs = compose_desk.make("logs", "NAME=ma_crossover")
    assert logs.returncode == 0 and "ma_crossover ready" in logs.stdout


CONFINED = """
import asyncio, json, os
import nats

async def main():
    errors = []
    async def record(exc):
        errors.append(str(exc).lower())
    nc = await nats.connect(os.environ["NATS_URL"], user=os.environ["NATS_USER"], password=os.environ["NATS_PASSWORD"],
                            inbox_prefix=os.environ["NATS_INBOX_PREFIX"], error_cb=record)
    await nc.subscribe("desk.exec.idle_b")
    await nc.publish("desk.order.submit.idle_b", b"an order as idle_b")
    await nc.flush()
    for _ in range(100):  # the server's -ERR lines arrive on their own; bounded
        if len(errors) >= 2:
            break
        await asyncio.sleep(0.05)
    await nc.close()
    print(json.dumps({"user": os.environ["NATS_USER"], "errors": errors}))

asyncio.run(main())
"""


def test_the_stacks_nats_refuses_anonymous_clients_and_confines_each_strategy(compose_desk: ComposeDesk) -> None:
    async def anonymous() -> None:
        nc = await nats.connect(
            compose_desk.plain_url, max_reconnect_attempts=1, reconnect_time_wait=0.1, connect_timeout=2
        )
        await nc.close()

    with pytest.raises(Exception):  # noqa: B017 - nats-py raises NoServersError after the refusal
        asyncio.run(anonymous())

    confined = probe("idle_a", CONFINED)
    assert confined["user"] == "strategy-idle_a"
    errors = confined["errors"]
    assert isinstance(errors, list)
    assert any("permissions violation for subscription" in e and "desk.exec.idle_b" in e for e in errors), errors
    assert any("permissions violation for publish" in e and "desk.order.submit.idle_b" in e for e in errors), errors


def test_the_strategy_image_has_the_indicator_library(compose_desk: ComposeDesk) -> None:
    code = (
        "import json; from talipp.indicators import RSI; r = RSI(2); [r.add(x) for x in (1.0, 2.0, 1.5)]; "
        "print(json.dumps({'rsi': round(r[-1], 2)}))"
    )
    assert probe("idle_a", code) == {"rsi": 66.67}  # the README's indicator recipe works in a container


UPLOADED = """
from strategy_sdk import Strategy

CODE_VERSION = "%s"


class Uploaded(Strategy):
    def on_start(self):
        self.bought = False
        self.log.info("code version %%s", CODE_VERSION)

    async def on_bar(self, bar):
        if not self.bought:
            self.bought = True
            await self.buy(bar.symbol, 1)
"""

READ_CODE = """
import json, os
def can_write(path):
    try:
        with open(path, "w") as f: f.write("x")
        return True
    except OSError:
        return False
files = {}
for root, _, names in os.walk("/strategy"):
    for name in names:
        path = os.path.join(root, name)
        files[os.path.relpath(path, "/strategy")] = open(path).read()
print(json.dumps({"uid": os.getuid(), "files": files, "writable": can_write("/strategy/owned")}))
"""


def code_mount(strategy_id: str) -> dict[str, object]:
    mounts = json.loads(docker("inspect", "-f", "{{json .Mounts}}", container(strategy_id)))
    (mount,) = [m for m in mounts if m["Destination"] == "/strategy"]
    return dict(mount)


def running_code(strategy_id: str, version: int, source: str) -> str:
    """The volume /strategy is, read-only, of ``version``, holding the uploaded files: checked from
    the engine's side and from inside the container (as the strategy's own user)."""
    mount = code_mount(strategy_id)
    name = str(mount["Name"])
    assert mount["Type"] == "volume" and mount["RW"] is False, mount
    assert name.startswith(f"quantdesk-code-{strategy_id}-v{version}-"), name
    labels = json.loads(docker("volume", "inspect", "-f", "{{json .Labels}}", name))
    assert labels["quantdesk.strategy"] == strategy_id and labels["quantdesk.code-version"] == str(version)
    assert labels["quantdesk.desk"] == PROJECT  # this desk's: its cleanup and `make clean-docker` find it
    inside = probe(strategy_id, READ_CODE)
    assert inside["uid"] != 0 and inside["writable"] is False
    files = inside["files"]
    assert isinstance(files, dict)
    assert set(files) == {"strategy.py", "config.json", "lib/notes.txt"}
    assert files["strategy.py"] == source and files["lib/notes.txt"] == "uploaded by alice\n"
    return name


def test_a_member_deploys_by_upload_and_the_compose_desk_runs_each_version_from_its_own_volume(
    compose_desk: ComposeDesk, tmp_path: Path
) -> None:
    url = compose_desk.plain_url
    compose_desk.desk("member", "add", "alice", "--url", url)
    compose_desk.desk("member", "add", "bob", "--url", url)
    assert compose_desk.credentials is not None
    members_dir = compose_desk.credentials.parent / "members"
    alice, bob = tmp_path / "alice-laptop", tmp_path / "bob-laptop"
    for home, name in ((alice, "alice"), (bob, "bob")):
        home.mkdir()
        (home / f"{name}.json").write_bytes((members_dir / f"{name}.json").read_bytes())
        member_cli(home, "login", f"{name}.json")

    strategy_id = "alice_upload"
    folder = write_strategy(alice / strategy_id, "alice", UPLOADED % "A", symbols=["AAPL"])
    (folder / "lib").mkdir()
    (folder / "lib" / "notes.txt").write_text("uploaded by alice\n")

    def deploy(home: Path, *args: str) -> dict[str, Any]:
        result = member_cli(home, *args, "--json", timeout=240)
        reply: dict[str, Any] = json.loads(result.stdout)
        return reply

    first = deploy(alice, "deploy", f"./{strategy_id}")
    assert [(s["strategy_id"], s["state"], s["code_version"]) for s in first["strategies"]] == [
        (strategy_id, "running", 1)
    ]
    labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", container(strategy_id)))
    assert labels["quantdesk.strategy"] == strategy_id and labels["quantdesk.member"] == "alice"
    assert labels["quantdesk.desk"] == PROJECT
    host = json.loads(docker("inspect", "-f", "{{json .HostConfig}}", container(strategy_id)))
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"] and host["Memory"] > 0
    assert host["NetworkMode"] == f"quantdesk-s-{strategy_id}"
    env = probe(strategy_id, "import json, os; print(json.dumps(dict(os.environ)))")
    assert not any(BROKER_KEY in str(value) for value in env.values())
    v1 = running_code(strategy_id, 1, UPLOADED % "A")

    async def a_fill() -> list[dict[str, Any]]:
        fills: list[dict[str, Any]] = compose_desk.desk("fills", "-s", strategy_id)["fills"]
        return fills

    async def booked() -> None:
        fills = await poll(a_fill, f"a fill of {strategy_id} booked by the ledger", timeout=120, every=1)
        assert {f["member_id"] for f in fills} == {"alice"}

    asyncio.run(booked())

    (folder / "strategy.py").write_text(UPLOADED % "B")
    second = deploy(alice, "deploy", f"./{strategy_id}")
    assert [(s["state"], s["code_version"]) for s in second["strategies"]] == [("running", 2)]
    v2 = running_code(strategy_id, 2, UPLOADED % "B")
    assert v2 != v1

    back = deploy(alice, "rollback", strategy_id)
    assert [(s["state"], s["code_version"]) for s in back["strategies"]] == [("running", 1)]
    assert "rolled back to version 1" in back["message"]
    assert running_code(strategy_id, 1, UPLOADED % "A") == v1  # the same volume again
    kept = docker("volume", "ls", "-q", "--filter", f"label=quantdesk.strategy={strategy_id}").split()
    assert sorted(kept) == sorted([v1, v2])

    # bob cannot deploy over alice's strategy: the name is hers
    write_strategy(bob / strategy_id, "bob", UPLOADED % "BOB", symbols=["AAPL"])
    refused = member_cli(bob, "deploy", f"./{strategy_id}", check=False, timeout=120)
    assert refused.returncode == 1 and "NOT_YOURS" in refused.stderr, refused.stderr
    assert running_code(strategy_id, 1, UPLOADED % "A") == v1


# -- a site: strategies on a second machine (issue 14) ------------------------------------------------


def site_compose(env: dict[str, str], override: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*compose_command(), "-p", SITE_PROJECT, "-f", str(ROOT / "compose.site.yaml"), "-f", str(override), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_a_strategy_placed_on_a_site_runs_on_its_engine_behind_its_leaf_node_and_trades(
    compose_desk: ComposeDesk, tmp_path: Path
) -> None:
    """compose.site.yaml as its own compose project stands for the second machine: its leaf node joins
    the desk's NATS over the desk's network (two machines: the LAN, LEAF_BIND), and the desk's
    orchestrator (ORCH_SITES names the site) runs a strategy whose config.json says "site": "lab" there."""
    override = tmp_path / "site-wan.yaml"
    override.write_text(f"networks:\n  wan:\n    external: true\n    name: {PROJECT}_desk\n")
    leaf_url = compose_desk.compose(
        "run", "--rm", "--no-deps", "-T", "nats-auth",
        "python", "-m", "desk.bus.auth", "leaf-url", "/auth", "--hub", "nats-leaf://nats:7422",
    ).stdout.strip().splitlines()[-1]  # fmt: skip
    assert leaf_url.startswith("nats-leaf://desk-leaf:")
    env = {**compose_desk.env, "LEAF_HUB_URL": leaf_url, "SITE_NAME": "lab", "SITE_LEAF_CONTAINER": SITE_LEAF}
    site_compose(env, override, "down", "--volumes")
    up = site_compose(env, override, "up", "-d")
    assert up.returncode == 0, up.stderr
    url = compose_desk.plain_url
    dana = tmp_path / "dana-laptop"
    dana.mkdir()
    strategy_id = "dana_lab"
    try:

        def leaf_log() -> str:
            logs = subprocess.run(["docker", "logs", SITE_LEAF], capture_output=True, text=True, check=False)
            return logs.stdout + logs.stderr

        def joined() -> bool:
            return "Leafnode connection created" in leaf_log()

        try:
            asyncio.run(poll(joined, "the site's leaf node joins the desk's NATS", timeout=60, every=0.5))
        except AssertionError as exc:
            raise AssertionError(f"{exc}; its log:\n{leaf_log()[-3000:]}") from None

        compose_desk.desk("member", "add", "dana", "--url", url)
        assert compose_desk.credentials is not None
        card = compose_desk.credentials.parent / "members" / "dana.json"
        (dana / "dana.json").write_bytes(card.read_bytes())
        member_cli(dana, "login", "dana.json")
        write_strategy(dana / strategy_id, "dana", UPLOADED % "LAB", symbols=["AAPL"], site="lab")
        result = member_cli(dana, "deploy", f"./{strategy_id}", "--json", timeout=240)
        [status] = json.loads(result.stdout)["strategies"]
        assert (status["state"], status["runtime"], status["code_version"]) == ("running", "docker@lab", 1), status

        labels = json.loads(docker("inspect", "-f", "{{json .Config.Labels}}", container(strategy_id)))
        assert labels["quantdesk.desk"] == f"{PROJECT}@lab" and labels["quantdesk.member"] == "dana"
        network = json.loads(docker("network", "inspect", f"quantdesk-s-{strategy_id}"))[0]
        attached = {c["Name"] for c in (network.get("Containers") or {}).values()}
        assert attached == {container(strategy_id), SITE_LEAF}, attached  # its only NATS is the site's leaf node
        assert network["Internal"] is True

        # its identity is the site's: the leaf node's users file has it, the desk's own server refuses it
        env_inside = probe(strategy_id, "import json, os; print(json.dumps(dict(os.environ)))")
        assert env_inside["NATS_URL"] == "nats://nats:4222" and env_inside["NATS_USER"] == f"strategy-{strategy_id}"
        users = subprocess.run(
            ["docker", "cp", f"{SITE_LEAF}:/etc/nats/auth/auth.conf", "-"], capture_output=True, check=True
        ).stdout
        assert f"strategy-{strategy_id}".encode() in users and str(env_inside["NATS_PASSWORD"]).encode() not in users

        refused_here = login_refused(url, str(env_inside["NATS_USER"]), str(env_inside["NATS_PASSWORD"]))
        assert asyncio.run(refused_here), "the desk's own NATS must not know a site's strategy"

        async def a_fill() -> list[dict[str, Any]]:
            fills: list[dict[str, Any]] = compose_desk.desk("fills", "-s", strategy_id)["fills"]
            return fills

        async def booked() -> list[dict[str, Any]]:
            return await poll(a_fill, f"a fill of {strategy_id} (on the site) booked", timeout=120, every=1)

        fills = asyncio.run(booked())
        assert {(f["member_id"], f["symbol"]) for f in fills} == {("dana", "AAPL")}

        # a site the desk does not have is refused before anything runs
        write_strategy(dana / "dana_nowhere", "dana", UPLOADED % "X", symbols=["AAPL"], site="nowhere")
        refused = member_cli(dana, "deploy", "./dana_nowhere", check=False, timeout=120)
        assert refused.returncode == 1 and "UNKNOWN_SITE" in refused.stderr, refused.stderr
        assert "nowhere" in refused.stderr and "lab" in refused.stderr
    finally:
        member_cli(dana, "stop", strategy_id, check=False, timeout=120)  # so it is not restarted meanwhile
        remove_strategy_leftovers(f"{PROJECT}@lab")
        site_compose(env, override, "down", "--volumes")
