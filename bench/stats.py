"""Statistics and the report of a bench run. Pure: no I/O, no clock (unit-tested).

A :class:`Figure` is one measured desk number beside its bare limit; ``ratio`` is desk / bare, and
``met`` checks it against its :class:`Target`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

TargetKind = Literal["max", "min", "ratio_max", "ratio_min", "ratio_near"]


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(ordered[low])
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Summary:
    """Latency distribution of one series (same unit as the samples)."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    max: float


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        raise ValueError("summary of no values")
    return Summary(
        n=len(values),
        p50=percentile(values, 50),
        p90=percentile(values, 90),
        p99=percentile(values, 99),
        mean=sum(values) / len(values),
        max=float(max(values)),
    )


def ratio(desk: float | None, bare: float | None) -> float | None:
    """desk / bare; ``None`` when either is missing or the bare figure is zero."""
    if desk is None or bare is None or bare == 0:
        return None
    return desk / bare


@dataclass(frozen=True)
class Target:
    """``max``/``min``: a bound on the figure; ``ratio_max``/``ratio_min``: a bound on desk / bare;
    ``ratio_near``: desk / bare within ``1 ± value`` (two counts that must agree)."""

    kind: TargetKind
    value: float

    def met(self, figure: float | None, ratio_: float | None) -> bool | None:
        subject = ratio_ if self.kind.startswith("ratio") else figure
        if subject is None:
            return None
        if self.kind == "ratio_near":
            return abs(subject - 1) <= self.value + 1e-12
        return subject <= self.value if self.kind.endswith("max") else subject >= self.value

    def describe(self, unit: str) -> str:
        if self.kind == "ratio_near":
            return f"within {self.value * 100:.3g} % of bare"
        sign = "<=" if self.kind.endswith("max") else ">="
        if self.kind.startswith("ratio"):
            return f"{sign} {self.value:g}x bare"
        return f"{sign} {self.value:g} {unit}"


@dataclass
class Figure:
    """One row of the report."""

    section: str
    name: str
    unit: str
    value: float | None
    bare: float | None = None
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        return ratio(self.value, self.bare)

    @property
    def met(self) -> bool | None:
        return self.target.met(self.value, self.ratio) if self.target else None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        data["target"] = (
            {"kind": self.target.kind, "value": self.target.value, "text": self.target.describe(self.unit)}
            if self.target
            else None
        )
        return data


def fmt_number(value: float | None) -> str:
    """Compact human number: 3 significant digits, thousands separated; '-' for missing."""
    if value is None:
        return "-"
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render_table(figures: Iterable[Figure]) -> str:
    """The table ``make bench`` prints: figure, bare limit, ratio, target, met."""
    header = ("figure", "unit", "desk", "bare", "ratio", "target", "met")
    rows: list[tuple[str, ...]] = []
    for f in figures:
        met = {True: "yes", False: "NO", None: ""}[f.met]
        rows.append(
            (
                f"{f.section}: {f.name}",
                f.unit,
                fmt_number(f.value),
                fmt_number(f.bare),
                fmt_ratio(f.ratio),
                f.target.describe(f.unit) if f.target else "",
                met,
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(row[2:5], widths[2:5], strict=True)]
        cells += [row[5].ljust(widths[5]), row[6]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def report_json(figures: Iterable[Figure], machine: dict[str, Any], notes: Sequence[str], **meta: Any) -> str:
    return json.dumps(
        {"machine": machine, **meta, "figures": [f.as_dict() for f in figures], "notes": list(notes)},
        indent=2,
        default=str,
    )
