"""desk.bus.confine: which reply subjects a request may be answered on."""

from __future__ import annotations

import pytest

from desk.bus import confine, subjects

SUBMIT = subjects.order_submit("alpha")
OWN_PNL = subjects.ledger_own(subjects.LEDGER_PNL, "alpha")


@pytest.mark.parametrize(
    ("subject", "reply", "expected"),
    [
        (SUBMIT, "_INBOX_S.alpha.abc.1", None),
        (OWN_PNL, "_INBOX_S.alpha.x", None),
        (subjects.order_cancel("alpha"), "_INBOX_S.alpha.x", None),
        (SUBMIT, "", confine.NO_REPLY),
        (SUBMIT, None, confine.NO_REPLY),
        (SUBMIT, "$KV.DESK_RISK.halt._global", confine.REPLY_NOT_INBOX),
        (SUBMIT, "$JS.API.STREAM.PURGE.EXECUTIONS", confine.REPLY_NOT_INBOX),
        (SUBMIT, "desk.exec.beta", confine.REPLY_NOT_INBOX),
        (SUBMIT, "_INBOX_S.alphabet.x", confine.REPLY_FOREIGN_INBOX),  # a prefix, not the inbox
        (SUBMIT, "_INBOX_S.beta.x", confine.REPLY_FOREIGN_INBOX),
        (SUBMIT, "_INBOX.abc", confine.REPLY_FOREIGN_INBOX),
        (SUBMIT, "_INBOX_S.alpha", confine.REPLY_FOREIGN_INBOX),  # the prefix itself is no inbox
        (SUBMIT, "_INBOX_S.alpha.>", confine.REPLY_MALFORMED),
        (SUBMIT, "_INBOX_S.alpha..x", confine.REPLY_MALFORMED),
        (SUBMIT, "_INBOX_S.alpha." + "x" * 300, confine.REPLY_MALFORMED),
        (subjects.RISK_HALT, "_INBOX.abc", None),
        (subjects.LEDGER_PNL, "_INBOX_S.alpha.x", None),
        (subjects.RISK_HALT, "$KV.DESK_RISK.halt._global", confine.REPLY_NOT_INBOX),
        (subjects.CTL_STOP, "desk.ctl.strategy.stop", confine.REPLY_NOT_INBOX),
        ("$SRV.PING", "_INBOX.x", None),
    ],
)
def test_a_request_is_answered_only_on_its_askers_inbox(subject: str, reply: str | None, expected: str | None) -> None:
    assert confine.check_reply(subject, reply) == expected


def test_the_scoped_subjects_are_exactly_those_a_strategy_may_publish_as_requests() -> None:
    from desk.bus import auth

    allowed = auth.strategy_permissions("alpha")["publish"]["allow"]
    scoped = {s for s in allowed if confine.asker(s) == "alpha"}
    assert scoped == set(allowed) - {subjects.heartbeat("alpha")}  # heartbeats are not requests
    assert confine.asker(subjects.RISK_HALT) is None and confine.asker(subjects.LEDGER_PNL) is None
    assert confine.asker("desk.order.submit.a.b") is None
    assert confine.reply_prefix(SUBMIT) == "_INBOX_S.alpha" == auth.strategy_inbox_prefix("alpha")
