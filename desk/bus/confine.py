"""Replies go only to the asker: the one rule every endpoint of the desk answers by.

NATS never checks the reply subject a client writes on a request, and a responder publishes its
answer wherever it is told. A strategy that put ``$KV.DESK_RISK.halt._global`` or
``$JS.API.STREAM.PURGE.EXECUTIONS`` as the reply of its own (allowed) order request would have the
router write that key or purge that stream with the router's rights. So every endpoint of every
service (``desk.bus.micro``) checks the reply subject before it does anything:

- an endpoint scoped to one strategy (``desk.order.submit.<id>``, ``desk.order.cancel.<id>``,
  ``desk.ledger.{positions,orders,pnl}.<id>``: the subjects a strategy may publish) answers only
  under that strategy's own inbox, ``_INBOX_S.<id>.`` (its NATS user subscribes nowhere else);
- every other endpoint answers only under an inbox, ``_INBOX.`` (nats-py's default) or
  ``_INBOX_S.`` — never a stream, a bucket, the JetStream API or a desk subject;
- a request with no reply subject, or a malformed one, is not handled at all.

Anything else is dropped before it is decoded (no effect, no answer), counted per reason in the
endpoint's STATS and logged once per asker and minute. Callers that ask a strategy-scoped subject
from a connection with another inbox (the CLI, tests, tools) get a reply subject under the
strategy's inbox from :func:`desk.bus.request.request`, which uses :func:`reply_prefix` too.
"""

from __future__ import annotations

from desk.bus import subjects

ADMIN_INBOX_ROOT = "_INBOX"
STRATEGY_INBOX_ROOT = "_INBOX_S"

# Why a request was dropped (keys of the "dropped" counters in STATS).
NO_REPLY = "NO_REPLY"
REPLY_MALFORMED = "REPLY_MALFORMED"
REPLY_NOT_INBOX = "REPLY_NOT_INBOX"  # a stream, a bucket, the JetStream API, a desk subject...
REPLY_FOREIGN_INBOX = "REPLY_FOREIGN_INBOX"  # an inbox, but not the asking strategy's own

#: Subjects a strategy may publish that are requests, by their prefix (the strategy id follows).
_SCOPED_PREFIXES = (
    subjects.ORDER_SUBMIT.removesuffix("{strategy_id}"),
    subjects.ORDER_CANCEL.removesuffix("{strategy_id}"),
    *(subjects.ledger_own(kind, "") for kind in subjects.LEDGER_OWN_KINDS),
)
_MAX_REPLY = 256


def strategy_inbox_prefix(strategy_id: str) -> str:
    """The reply inbox of one strategy (its connection's ``inbox_prefix``): ``_INBOX_S.<id>``."""
    return f"{STRATEGY_INBOX_ROOT}.{strategy_id}"


def asker(subject: str) -> str | None:
    """The strategy a strategy-scoped request subject belongs to; None for every other subject."""
    for prefix in _SCOPED_PREFIXES:
        if subject.startswith(prefix):
            strategy_id = subject[len(prefix) :]
            return strategy_id if strategy_id and "." not in strategy_id else None
    return None


def reply_prefix(subject: str) -> str | None:
    """The inbox prefix a request on ``subject`` must be answered under, when it is scoped."""
    strategy_id = asker(subject)
    return strategy_inbox_prefix(strategy_id) if strategy_id is not None else None


def _well_formed(reply: str) -> bool:
    if len(reply) > _MAX_REPLY or any(c in reply for c in " \t\r\n*>"):
        return False
    return all(reply.split("."))


def check_reply(subject: str, reply: str | None) -> str | None:
    """Why a request on ``subject`` with reply ``reply`` must be dropped; None when it may be answered."""
    if not reply:
        return NO_REPLY
    if not _well_formed(reply):
        return REPLY_MALFORMED
    required = reply_prefix(subject)
    if required is not None:
        if reply.startswith(required + "."):
            return None
        is_inbox = reply.startswith((ADMIN_INBOX_ROOT + ".", STRATEGY_INBOX_ROOT + "."))
        return REPLY_FOREIGN_INBOX if is_inbox else REPLY_NOT_INBOX
    if reply.startswith((ADMIN_INBOX_ROOT + ".", STRATEGY_INBOX_ROOT + ".")):
        return None
    return REPLY_NOT_INBOX
