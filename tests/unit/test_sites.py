"""ORCH_SITES (services.orchestrator.sites) and a spec's site: what is refused, and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from desk.bus import auth
from desk.specs import spec_problems
from desk.v1 import strategy_pb2
from services.orchestrator.sites import DEFAULT_LEAF_AUTH_FILE, SitesError, parse_sites

LOCAL = {"docker_host": "unix:///var/run/docker.sock", "leaf_container": "quantdesk-site-leaf"}


def test_a_site_with_its_defaults() -> None:
    [site] = parse_sites(json.dumps({"lab": LOCAL})).values()
    assert (site.name, site.docker_host, site.leaf_container) == ("lab", LOCAL["docker_host"], LOCAL["leaf_container"])
    assert site.leaf_auth_file == DEFAULT_LEAF_AUTH_FILE
    assert parse_sites("") == {} and parse_sites("  ") == {}


@pytest.mark.parametrize(
    ("sites", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"Lab": LOCAL}), "site name 'Lab'"),
        (json.dumps({"a.b": LOCAL}), "site name"),
        (json.dumps({"lab": "tcp://x"}), "must be an object"),
        (json.dumps({"lab": {**LOCAL, "password": "x"}}), "unknown keys \\['password'\\]"),
        (json.dumps({"lab": {**LOCAL, "docker_host": "http://x"}}), "docker_host must be"),
        (json.dumps({"lab": {**LOCAL, "docker_host": "tcp://10.0.0.7:2376"}}), "needs docker_tls_dir"),
        (json.dumps({"lab": {**LOCAL, "leaf_container": "a b; rm"}}), "leaf_container"),
        (json.dumps({"lab": {**LOCAL, "leaf_auth_file": "auth.conf"}}), "absolute path"),
        (json.dumps({"lab": {**LOCAL, "docker_tls_dir": "/run/../etc"}}), "absolute path"),
        (json.dumps({"lab": {**LOCAL, "leaf_container": 7}}), "must be a string"),
    ],
)
def test_a_bad_description_names_the_site_and_key(sites: str, message: str) -> None:
    with pytest.raises(SitesError, match=message):
        parse_sites(sites)


def test_tcp_engines_take_tls() -> None:
    sites = parse_sites(json.dumps({"lab": {**LOCAL, "docker_host": "tcp://10.0.0.7:2376", "docker_tls_dir": "/tls"}}))
    assert sites["lab"].docker_tls_dir == "/tls"


def test_a_spec_site_is_a_plain_word_on_the_docker_runtime() -> None:
    spec = strategy_pb2.StrategySpec(strategy_id="alpha", member_id="m", site="lab", runtime="docker")
    assert not [p for p in spec_problems(spec) if "site" in p]
    spec.site = "../../etc"
    assert any("is not a site name" in p for p in spec_problems(spec))
    spec.site, spec.runtime = "lab", "process"
    assert any("needs the docker runtime" in p for p in spec_problems(spec))


def test_the_leaf_user_may_carry_any_strategy_subject_but_no_member_reply() -> None:
    permissions = auth.leaf_permissions()
    one = auth.strategy_permissions("*")
    assert permissions["publish"]["allow"] == one["publish"]["allow"]
    assert permissions["subscribe"]["deny"] == [f"{auth.MEMBER_INBOX_ROOT}.>"]
    assert not any(s.startswith(("$JS", "$KV", "desk.exec")) for s in permissions["publish"]["allow"])


def test_a_desk_from_before_sites_gains_the_leaf_user_keeping_every_password(tmp_path: Path) -> None:
    services = ["marketdata", "orchestrator"]
    assert auth.init_directory(tmp_path, services)
    users = auth.read_users(tmp_path / "base-users.json")
    assert auth.LEAF_USER in {u["user"] for u in users}
    before = [u for u in users if u["user"] != auth.LEAF_USER]  # what the previous release made
    auth.write_private(tmp_path / "base-users.json", json.dumps(before))
    (tmp_path / "secrets" / auth.LEAF_USER).unlink()
    assert auth.upgrade_permissions(tmp_path, services)
    after = auth.read_users(tmp_path / "base-users.json")
    assert [u for u in after if u["user"] != auth.LEAF_USER] == before
    assert (tmp_path / "secrets" / auth.LEAF_USER).read_text()
    assert auth.LEAF_USER in (tmp_path / "auth.conf").read_text()
    url = auth.leaf_url(tmp_path, "nats-leaf://desk.example:7422")
    assert url.startswith(f"nats-leaf://{auth.LEAF_USER}:") and url.endswith("@desk.example:7422")
    with pytest.raises(ValueError, match="no credentials"):
        auth.leaf_url(tmp_path, "nats-leaf://u:p@desk.example:7422")
