"""Operator sessions and CSRF tokens of the dashboard."""

from __future__ import annotations

from services.dashboard.auth import OperatorAuth, same_origin

HOUR_NS = 3600 * 1_000_000_000


def auth(password: str | None = "s3cret") -> OperatorAuth:
    return OperatorAuth(password, b"k" * 32, session_seconds=3600)


def test_the_right_password_passes_and_a_wrong_one_does_not() -> None:
    a = auth()
    assert a.enabled
    assert a.check_password("s3cret")
    assert not a.check_password("s3cret ")
    assert not a.check_password("")


def test_without_a_password_operator_actions_are_disabled_and_nothing_logs_in() -> None:
    a = auth(None)
    assert not a.enabled
    assert not a.check_password("")
    token = OperatorAuth("x", b"k" * 32, 3600).issue_session(0)
    assert not a.verify_session(token, 1)


def test_a_session_is_valid_until_it_expires() -> None:
    a = auth()
    token = a.issue_session(now_ns=0)
    assert a.verify_session(token, now_ns=HOUR_NS - 1)
    assert not a.verify_session(token, now_ns=HOUR_NS)


def test_a_tampered_or_foreign_session_is_refused() -> None:
    a = auth()
    token = a.issue_session(now_ns=0)
    expiry, nonce, signature = token.split(".")
    assert not a.verify_session(f"{int(expiry) * 2}.{nonce}.{signature}", now_ns=1)
    assert not a.verify_session(OperatorAuth("s3cret", b"other key", 3600).issue_session(0), now_ns=1)
    for junk in ("", "abc", "1.2", "x.y.z", None):
        assert not a.verify_session(junk, now_ns=1)


def test_csrf_token_is_bound_to_the_session() -> None:
    a = auth()
    one, two = a.issue_session(0), a.issue_session(0)
    assert one != two
    assert a.verify_csrf(one, a.csrf_token(one))
    assert not a.verify_csrf(one, a.csrf_token(two))
    assert not a.verify_csrf(one, "")
    assert not a.verify_csrf(None, a.csrf_token(one))


def test_same_origin_accepts_only_the_dashboards_own_origin() -> None:
    assert same_origin("http://127.0.0.1:8080", "127.0.0.1:8080")
    assert same_origin(None, "127.0.0.1:8080")
    assert not same_origin("http://evil.example", "127.0.0.1:8080")
    assert not same_origin("http://127.0.0.1:8081", "127.0.0.1:8080")
    assert not same_origin("null", "127.0.0.1:8080")
