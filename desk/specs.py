"""What makes a :class:`StrategySpec` usable by the whole desk: one pure rule for everyone.

The orchestrator refuses, at deploy, a spec that another service would refuse or misread later;
the order router (and the ledger) can apply the same rule when they read ``DESK_STRATEGIES``, so
"deployed" and "the router knows it" never disagree. :func:`spec_problems` lists every problem
(empty list = valid); :func:`validate_spec` raises a :class:`SpecError` naming them.

The rules:

* ``strategy_id`` and ``member_id`` are well formed (the subjects and the books are keyed by them);
* the serialized spec is at most :data:`MAX_SPEC_BYTES`. Every service decodes it with
  :func:`desk.bus.codec.decode`, which refuses anything over ``MAX_MESSAGE_BYTES``; a spec is also
  carried inside ``StrategyList`` replies with the others, so it must stay well under that bound
  (16 KiB: a quarter of it). A config.json with a 100 KB ``env`` used to deploy as "running" while
  the router could not decode its spec, and every order of it was refused UNKNOWN_STRATEGY;
* ``initial_cash``, ``risk.max_order_notional`` and ``risk.max_position_notional`` are empty (the
  desk's default) or finite decimals > 0: :meth:`desk.core.risk.Limits.resolve` would
  silently replace anything else with the default, so a "-5" or "0" or "lots" the member wrote
  would be traded as if it were not there;
* ``symbols`` are tickers the subjects accept (``AAPL``), without duplicates;
* ``env`` names are environment variable names, never broker keys (``ALPACA_*``);
* ``runtime`` is empty, ``process`` or ``docker``; ``resources`` look like the docker runtime expects.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from desk.bus import codec, subjects
from desk.bus.decimals import ABSURD, fmt
from desk.bus.errors import DeskError
from desk.v1 import strategy_pb2

#: The largest serialized StrategySpec the desk accepts (see the module docstring).
MAX_SPEC_BYTES = codec.MAX_MESSAGE_BYTES // 4
RUNTIMES = ("process", "docker")
MEMBER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Never in a strategy's environment: broker keys stay with the broker gateway.
FORBIDDEN_ENV_PREFIXES = ("ALPACA_",)
#: A site (another machine's Docker engine, services.orchestrator.sites): a plain word.
SITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,23}$")
MEMORY_RE = re.compile(r"^[1-9][0-9]*[kmg]?$")
MAX_CPUS = Decimal(64)
PIDS_RANGE = (8, 4096)


class SpecError(DeskError):
    """A spec the desk cannot use; ``problems`` lists each reason."""

    def __init__(self, strategy_id: str, problems: list[str]) -> None:
        who = f"strategy {strategy_id!r}" if strategy_id else "strategy spec"
        super().__init__("INVALID_STRATEGY", f"{who} cannot be deployed: " + "; ".join(problems))
        self.problems = problems


def _amount(field: str, text: str) -> str | None:
    """A problem with an optional positive decimal ("" = the desk's default), or None."""
    if text == "":
        return None
    try:
        value = Decimal(text)
    except (InvalidOperation, ValueError):
        return f"{field} {text!r} is not a decimal number"
    if not value.is_finite():
        return f"{field} must be a finite number, got {text!r}"
    if value <= 0:
        return f"{field} must be positive, got {text} (leave it out to use the desk's default)"
    if value > ABSURD:
        return f"{field} {text} is larger than the limit {fmt(ABSURD)}"
    return None


def spec_problems(spec: strategy_pb2.StrategySpec) -> list[str]:
    """Every reason ``spec`` cannot be used by the desk; an empty list when it can."""
    problems: list[str] = []
    if not subjects.STRATEGY_ID_RE.match(spec.strategy_id):
        problems.append(
            f"strategy id {spec.strategy_id!r} is not valid: use 1-32 characters of a-z, 0-9, _ and -, "
            "starting with a letter or digit"
        )
    if not MEMBER_ID_RE.match(spec.member_id):
        problems.append(f"user_id {spec.member_id!r} must be 1-64 letters, digits, '_', '.', '@' or '-'")
    size = spec.ByteSize()
    if size > MAX_SPEC_BYTES:
        biggest = max(
            (
                ("env", sum(len(k) + len(v) for k, v in spec.env.items())),
                ("description", len(spec.description)),
                ("name", len(spec.name)),
                ("symbols", sum(len(s) for s in spec.symbols)),
            ),
            key=lambda item: item[1],
        )
        problems.append(
            f"its spec is {size} bytes, more than the {MAX_SPEC_BYTES} the desk accepts (most of it in "
            f"{biggest[0]}, {biggest[1]} bytes); keep large data in files next to strategy.py, not in config.json"
        )
    for field, text in (
        ("initial_cash", spec.initial_cash),
        ("risk.max_order_notional", spec.risk.max_order_notional),
        ("risk.max_position_notional", spec.risk.max_position_notional),
    ):
        problem = _amount(field, text)
        if problem:
            problems.append(problem)
    bad_symbols = [s for s in spec.symbols if not subjects.SYMBOL_RE.match(s)]
    if bad_symbols:
        problems.append(f"symbols {bad_symbols!r} are not valid symbols (upper-case tickers like AAPL)")
    if len(set(spec.symbols)) != len(spec.symbols):
        problems.append("symbols lists a symbol more than once")
    bad_names = sorted(k for k in spec.env if not ENV_NAME_RE.match(k))
    if bad_names:
        problems.append(f"env keys {bad_names!r} are not valid environment variable names")
    broker = sorted(k for k in spec.env if k.upper().startswith(FORBIDDEN_ENV_PREFIXES))
    if broker:
        problems.append(f"env {broker!r}: broker keys are not allowed in a strategy's environment")
    if spec.runtime not in ("", *RUNTIMES):
        problems.append(f"runtime {spec.runtime!r} is not one of {', '.join(RUNTIMES)}")
    if spec.site and not SITE_RE.match(spec.site):
        problems.append(f"site {spec.site[:40]!r} is not a site name (1-24 characters of a-z, 0-9 and -)")
    if spec.site and spec.runtime not in ("", "docker"):
        problems.append(f"site {spec.site} needs the docker runtime, not {spec.runtime}")
    resources = spec.resources
    if resources.memory and not MEMORY_RE.match(resources.memory):
        problems.append(f'resources.memory must look like "256m" or "1g", got {resources.memory!r}')
    if resources.cpus:
        problem = _amount("resources.cpus", resources.cpus)
        if problem:
            problems.append(problem)
        elif Decimal(resources.cpus) > MAX_CPUS:
            problems.append(f"resources.cpus {resources.cpus} is more than a machine has")
    if resources.pids and not PIDS_RANGE[0] <= resources.pids <= PIDS_RANGE[1]:
        problems.append(f"resources.pids must be a whole number from 8 to 4096, got {resources.pids}")
    return problems


def validate_spec(spec: strategy_pb2.StrategySpec) -> None:
    """Raise :class:`SpecError` (a DeskError, code INVALID_STRATEGY) naming every problem of ``spec``."""
    problems = spec_problems(spec)
    if problems:
        raise SpecError(spec.strategy_id, problems)
