"""desk.bus.servers: NATS_URL read once, the same way, by everything that connects."""

from __future__ import annotations

import pytest

from desk.bus.servers import env_auth, server_list
from desk.bus.settings import BusSettings, SettingsError, load_settings


def test_a_list_of_servers_is_split_checked_and_given_a_scheme() -> None:
    assert server_list("nats://a:4222, tls://b:4223,,c:4224 ") == ["nats://a:4222", "tls://b:4223", "nats://c:4224"]
    assert server_list(["nats://127.0.0.1:4222"]) == ["nats://127.0.0.1:4222"]


@pytest.mark.parametrize("bad", ["http://a:4222", "nats://a:port", "nats://:4222", "nats://a:4222/x", ""])
def test_what_is_not_a_server_address_is_refused_by_name(bad: str) -> None:
    with pytest.raises(ValueError, match=r"NATS server|no NATS server"):
        server_list(f"nats://ok:4222,{bad}" if bad else bad)


def test_the_settings_refuse_a_bad_nats_url_at_start_up(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NATS_URL", "nats://a:4222,nats://b:x")
    with pytest.raises(SettingsError):
        load_settings(BusSettings)
    assert "NATS server 'nats://b:x' is not an address like nats://host:4222" in capsys.readouterr().err
    monkeypatch.setenv("NATS_URL", "nats://a:4222,b:4223")
    assert load_settings(BusSettings).servers == ["nats://a:4222", "nats://b:4223"]


def test_credentials_come_from_the_creds_file_else_the_user_and_password() -> None:
    assert env_auth({"NATS_CREDS": "/x.creds", "NATS_USER": "u"}) == {"user_credentials": "/x.creds"}
    assert env_auth({"NATS_USER": "u", "NATS_PASSWORD": "p"}) == {"user": "u", "password": "p"}
    assert env_auth({}) == {}
