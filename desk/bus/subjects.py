"""Every subject, stream and bucket name of the desk, in one module (see docs/architecture.md §2, and
§8 for the subjects this repository adds)."""

from __future__ import annotations

import re

# Market data -----------------------------------------------------------------------------------
MD_BAR = "md.bar.{symbol}"
MD_TRADE = "md.trade.{symbol}"
MD_QUOTE = "md.quote.{symbol}"
MD_ALL = "md.>"

# Orders -----------------------------------------------------------------------------------------
ORDER_SUBMIT = "desk.order.submit.{strategy_id}"
ORDER_CANCEL = "desk.order.cancel.{strategy_id}"
ORDER_SUBMIT_ALL = "desk.order.submit.*"
ORDER_CANCEL_ALL = "desk.order.cancel.*"
BROKER_ORDERS = "desk.broker.{venue}.orders"

# Executions -------------------------------------------------------------------------------------
EXEC = "desk.exec.{strategy_id}"
EXEC_ALL = "desk.exec.>"

# Heartbeats and risk ------------------------------------------------------------------------------
HEARTBEAT = "desk.hb.{strategy_id}"
HEARTBEAT_ALL = "desk.hb.*"
RISK_HALT = "desk.risk.halt"
RISK_RESUME = "desk.risk.resume"
RISK_STATUS = "desk.risk.status"

# Ledger queries -----------------------------------------------------------------------------------
LEDGER_POSITIONS = "desk.ledger.positions"
LEDGER_ORDERS = "desk.ledger.orders"
LEDGER_FILLS = "desk.ledger.fills"
LEDGER_PNL = "desk.ledger.pnl"
LEDGER_LEADERBOARD = "desk.ledger.leaderboard"
LEDGER_EQUITY = "desk.ledger.equity"
#: A strategy's own books: ``<query subject>.<strategy_id>`` (positions, orders, pnl). The ledger answers
#: them for that strategy only, whatever the query asks; strategies may publish only their own.
LEDGER_OWN_KINDS = (LEDGER_POSITIONS, LEDGER_ORDERS, LEDGER_PNL)

# Orchestrator control -----------------------------------------------------------------------------
CTL_DEPLOY = "desk.ctl.strategy.deploy"
CTL_START = "desk.ctl.strategy.start"
CTL_STOP = "desk.ctl.strategy.stop"
CTL_RESTART = "desk.ctl.strategy.restart"
CTL_STATUS = "desk.ctl.strategy.status"
CTL_LIST = "desk.ctl.strategy.list"
CTL_LOGS = "desk.ctl.strategy.logs"
#: Deploy from anywhere: an upload in chunks, its commit (a new stored version), back to the previous one.
CTL_UPLOAD = "desk.ctl.strategy.upload"
CTL_COMMIT = "desk.ctl.strategy.commit"
CTL_ROLLBACK = "desk.ctl.strategy.rollback"
#: The operator's member administration (only the admin user may publish these).
CTL_MEMBER_ADD = "desk.ctl.member.add"
CTL_MEMBER_REMOVE = "desk.ctl.member.remove"
CTL_MEMBER_LIST = "desk.ctl.member.list"
#: A member's own control subjects, ``desk.ctl.m.<member>.<op>``: only that member's NATS user may
#: publish them (server-enforced), so the orchestrator knows the member from the subject it got.
MEMBER_CTL = "desk.ctl.m.{member}.{op}"
MEMBER_CTL_PREFIX = "desk.ctl.m."
MEMBER_OPS = ("deploy", "start", "stop", "restart", "status", "logs", "upload", "commit", "rollback", "halt", "resume")

# JetStream ----------------------------------------------------------------------------------------
STREAM_EXECUTIONS = "EXECUTIONS"
STREAM_ORDERS = "ORDERS"
LEDGER_DURABLE = "ledger"
ROUTER_DURABLE_PREFIX = "router"

# KV buckets ---------------------------------------------------------------------------------------
KV_PRICES = "DESK_PRICES"  # key = symbol, value = Trade (last price)
KV_STRATEGIES = "DESK_STRATEGIES"  # key = strategy_id, value = StrategySpec
KV_RISK = "DESK_RISK"  # key = "halt._global" / "halt.<strategy_id>", value = HaltRequest
KV_ORDER_IDS = "DESK_ORDER_IDS"  # key = "<strategy_id>.<client_order_id>", value = OrderAck
KV_LEASES = "DESK_LEASES"  # key = lease name ("gateway-sim", "marketdata"...), value = its holder (JSON)

# Object store -------------------------------------------------------------------------------------
OBJ_CODE = "DESK_CODE"  # "<strategy_id>/<version>" = the uploaded folder (tar); "<strategy_id>/current" = JSON

# Validation ---------------------------------------------------------------------------------------
STRATEGY_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
#: A member with a login (one subject token, as strategy ids; config.json user_id must equal it).
MEMBER_LOGIN_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
# No "." in symbols: a symbol is one subject token (md.bar.<SYMBOL>). Class shares are written
# without it (BRKB). Nothing translates to Alpaca's dotted form (BRK.B): the Alpaca broker and feed
# pass symbols through as they are.
SYMBOL_RE = re.compile(r"^[A-Z][A-Z0-9]{0,15}$")
CLIENT_ORDER_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
VENUE_RE = re.compile(r"^[a-z0-9_-]{1,16}$")


def token(subject: str, index: int) -> str:
    """The subject's token at ``index`` (negative counts from the end); "" when absent."""
    parts = subject.split(".")
    try:
        return parts[index]
    except IndexError:
        return ""


def md_bar(symbol: str) -> str:
    return MD_BAR.format(symbol=symbol)


def md_trade(symbol: str) -> str:
    return MD_TRADE.format(symbol=symbol)


def md_quote(symbol: str) -> str:
    return MD_QUOTE.format(symbol=symbol)


def ledger_own(query_subject: str, strategy_id: str) -> str:
    """The subject of one strategy's own ledger query, e.g. ``desk.ledger.positions.alpha``."""
    return f"{query_subject}.{strategy_id}"


def order_submit(strategy_id: str) -> str:
    return ORDER_SUBMIT.format(strategy_id=strategy_id)


def order_cancel(strategy_id: str) -> str:
    return ORDER_CANCEL.format(strategy_id=strategy_id)


def broker_orders(venue: str) -> str:
    return BROKER_ORDERS.format(venue=venue)


def broker_positions(venue: str) -> str:
    """The venue account's positions (micro endpoint of streaming gateways: alpaca)."""
    return f"desk.broker.{venue}.positions"


def execution(strategy_id: str) -> str:
    return EXEC.format(strategy_id=strategy_id)


def heartbeat(strategy_id: str) -> str:
    return HEARTBEAT.format(strategy_id=strategy_id)


def order_id_key(strategy_id: str, client_order_id: str) -> str:
    return f"{strategy_id}.{client_order_id}"


def halt_key(strategy_id: str) -> str:
    # "_global" cannot collide with a strategy id: ids start with a letter or digit.
    return f"halt.{strategy_id}" if strategy_id else "halt._global"


def member_ctl(member: str, op: str) -> str:
    """A member's own control subject, e.g. ``desk.ctl.m.alice.stop``."""
    return MEMBER_CTL.format(member=member, op=op)


def member_of(subject: str) -> str | None:
    """The member of a ``desk.ctl.m.<member>.<op>`` subject (as the server delivered it); None otherwise."""
    if not subject.startswith(MEMBER_CTL_PREFIX):
        return None
    parts = subject.split(".")
    if len(parts) != 5 or not MEMBER_LOGIN_RE.match(parts[3]):
        return None
    return parts[3]
