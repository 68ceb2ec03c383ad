"""`sim.compare`: two invocations (BASE and HEAD) side by side, per sim and step, with
the change and its percent, and thresholds that a change must not cross.

Pure: data in (`rundata.Group`s, thresholds), data out (`Comparison`, text, JSON). The
tries of a `--repeat` are taken together: each metric's median over the tries that have
it (a single try's value is its own median), and the output says how many tries each side
had.

Metrics, per sim: status (passes of tries), pass rate, runtime; per step: duration,
throughput down and up (Mbit/s, from the bytes and the duration), latency, the bytes, and
any other number a runner's results hold.
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .rundata import Group

# metric key -> (label, digits shown)
METRIC_LABELS: dict[str, tuple[str, int]] = {
    "pass_rate": ("pass rate %", 1),
    "runtime_s": ("runtime s", 3),
    "duration_s": ("duration s", 3),
    "down_mbit_s": ("down Mbit/s", 1),
    "up_mbit_s": ("up Mbit/s", 1),
    "latency_ms": ("latency ms", 2),
    "down_bytes": ("down bytes", 0),
    "up_bytes": ("up bytes", 0),
}
STEP_ORDER = ("duration_s", "down_mbit_s", "up_mbit_s", "latency_ms", "down_bytes", "up_bytes")

# --threshold names -> the metrics they watch.
THRESHOLD_METRICS: dict[str, tuple[str, ...]] = {
    "throughput": ("down_mbit_s", "up_mbit_s"),
    "down_throughput": ("down_mbit_s",),
    "up_throughput": ("up_mbit_s",),
    "latency": ("latency_ms",),
    "duration": ("duration_s",),
    "runtime": ("runtime_s",),
    "pass_rate": ("pass_rate",),
    "down_bytes": ("down_bytes",),
    "up_bytes": ("up_bytes",),
}
_THRESHOLD = re.compile(r"(?P<name>[a-z_]+)=(?P<sign>[+-])(?P<pct>[0-9]{1,6}(?:\.[0-9]{1,6})?)%")


class ThresholdError(ValueError):
    """A --threshold value that is not METRIC=+N% or METRIC=-N%, or names no metric."""


@dataclass(frozen=True)
class Threshold:
    """`throughput=-10%`: crossed when a watched metric falls by 10 % or more;
    `latency=+20%`: when it rises by 20 % or more."""

    name: str
    percent: float  # signed: the direction that counts as worse

    @property
    def text(self) -> str:
        return f"{self.name}={self.percent:+g}%"

    @property
    def metrics(self) -> tuple[str, ...]:
        return THRESHOLD_METRICS[self.name]

    def crossed_by(self, pct: float | None, base: float, head: float) -> bool:
        if pct is None:  # base 0: any move in the watched direction counts
            return (head - base) * self.percent > 0
        return pct <= self.percent if self.percent < 0 else pct >= self.percent


def parse_threshold(text: str) -> Threshold:
    """`METRIC=+N%` or `METRIC=-N%`; ThresholdError for anything else."""
    name = text.strip().partition("=")[0]
    if re.fullmatch(r"[a-z_]{1,40}", name) and name not in THRESHOLD_METRICS:
        raise ThresholdError(
            f"--threshold {text!r}: unknown metric {name!r}; known: " + ", ".join(THRESHOLD_METRICS)
        )
    m = _THRESHOLD.fullmatch(text.strip())
    if not m:
        raise ThresholdError(
            f"--threshold {text!r}: expected METRIC=-N% or METRIC=+N% "
            f"(the sign says which way is worse), e.g. throughput=-10% or latency=+20%"
        )
    pct = float(m["pct"])
    if pct == 0:
        raise ThresholdError(f"--threshold {text!r}: give a change bigger than 0%")
    return Threshold(m["name"], -pct if m["sign"] == "-" else pct)


def parse_thresholds(values: Iterable[str]) -> list[Threshold]:
    return [parse_threshold(v) for v in values]


# ── statistics over tries ──────────────────────────────────────────────────────


@dataclass(frozen=True)
class Stat:
    """A metric over the tries that have it."""

    n: int
    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        if not values:
            return None
        return cls(len(values), statistics.median(values), min(values), max(values))

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "median": self.median, "min": self.min, "max": self.max}


@dataclass
class SimSide:
    """One sim on one side: how its tries went and its metrics over them."""

    tries: int
    passes: int
    runtime: list[float] = field(default_factory=list)
    steps: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    @property
    def failures(self) -> int:
        return self.tries - self.passes

    @property
    def pass_rate(self) -> float:
        return self.passes / self.tries if self.tries else 0.0

    def status(self) -> str:
        if self.tries == 1:
            return "ok" if self.passes else "error"
        return f"{self.passes}/{self.tries} ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tries": self.tries,
            "passes": self.passes,
            "failures": self.failures,
            "pass_rate": self.pass_rate,
            "status": self.status(),
        }


def sim_sides(group: Group) -> dict[str, SimSide]:
    """Per sim of the group: tries, passes, runtimes and step metrics of every try."""
    out: dict[str, SimSide] = {}
    for run in group.runs:
        for name, sim in run.sims.items():
            side = out.setdefault(name, SimSide(0, 0))
            side.tries += 1
            side.passes += sim.passed
            if sim.runtime_s is not None:
                side.runtime.append(sim.runtime_s)
            for step, metrics in sim.steps.items():
                into = side.steps.setdefault(step, {})
                for key, value in metrics.items():
                    into.setdefault(key, []).append(value)
    return out


# ── the comparison ─────────────────────────────────────────────────────────────


def change_pct(base: float, head: float) -> float | None:
    """(head - base) / |base| in percent; None when base is 0."""
    if base == 0:
        return 0.0 if head == 0 else None
    return (head - base) / abs(base) * 100


@dataclass
class Row:
    """One metric of one sim (step None) or one step, on both sides."""

    sim: str
    step: str | None
    metric: str
    base: Stat | None
    head: Stat | None

    @property
    def change(self) -> float | None:
        if self.base is None or self.head is None:
            return None
        return self.head.median - self.base.median

    @property
    def pct(self) -> float | None:
        if self.base is None or self.head is None:
            return None
        return change_pct(self.base.median, self.head.median)

    def as_dict(self) -> dict[str, Any]:
        return {
            "sim": self.sim,
            "step": self.step,
            "metric": self.metric,
            "base": self.base.as_dict() if self.base else None,
            "head": self.head.as_dict() if self.head else None,
            "change": self.change,
            "change_pct": self.pct,
        }


@dataclass
class Crossing:
    threshold: Threshold
    row: Row
    why: str  # "-80.0%" or "missing in head"

    def text(self) -> str:
        where = self.row.sim + (f" step {self.row.step}" if self.row.step else "")
        label = METRIC_LABELS.get(self.row.metric, (self.row.metric, 3))[0]
        base = fmt_value(self.row.metric, self.row.base.median if self.row.base else None)
        head = fmt_value(self.row.metric, self.row.head.median if self.row.head else None)
        return f"{self.threshold.text} crossed by {where}: {label} {base} -> {head} ({self.why})"

    def as_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold.text, "why": self.why, **self.row.as_dict()}


@dataclass
class Comparison:
    base: Group
    head: Group
    sims: dict[str, tuple[SimSide | None, SimSide | None]]
    rows: list[Row]
    crossings: list[Crossing]

    @property
    def medians(self) -> bool:
        return self.base.tries > 1 or self.head.tries > 1

    def only_in(self, side: str) -> list[str]:
        i = 0 if side == "base" else 1
        return [
            name for name, pair in self.sims.items() if pair[i] is not None and pair[1 - i] is None
        ]

    def as_dict(self) -> dict[str, Any]:
        def side(g: Group) -> dict[str, Any]:
            return {
                "label": g.label,
                "tries": g.tries,
                "folders": g.folders(),
                "where": [r.where for r in g.runs],
            }

        sims = []
        for name, (b, h) in self.sims.items():
            sims.append(
                {
                    "sim": name,
                    "in": "both" if b and h else "base" if b else "head",
                    "base": b.as_dict() if b else None,
                    "head": h.as_dict() if h else None,
                    "rows": [r.as_dict() for r in self.rows if r.sim == name],
                }
            )
        return {
            "base": side(self.base),
            "head": side(self.head),
            "medians": self.medians,
            "sims": sims,
            "only_in_base": self.only_in("base"),
            "only_in_head": self.only_in("head"),
            "thresholds_crossed": [c.as_dict() for c in self.crossings],
        }


def metric_order(keys: Iterable[str]) -> list[str]:
    keys = set(keys)
    return [k for k in STEP_ORDER if k in keys] + sorted(keys - set(STEP_ORDER))


def compare(base: Group, head: Group, thresholds: Sequence[Threshold] = ()) -> Comparison:
    """BASE and HEAD side by side; sims in HEAD's order, then those only in BASE."""
    b_sims, h_sims = sim_sides(base), sim_sides(head)
    names = list(h_sims) + [n for n in b_sims if n not in h_sims]
    sims = {n: (b_sims.get(n), h_sims.get(n)) for n in names}
    rows: list[Row] = []
    for name, (b, h) in sims.items():
        if b is None or h is None:
            continue
        rows.append(
            Row(name, None, "pass_rate", Stat.of([b.pass_rate * 100]), Stat.of([h.pass_rate * 100]))
        )
        rows.append(Row(name, None, "runtime_s", Stat.of(b.runtime), Stat.of(h.runtime)))
        steps = list(h.steps) + [s for s in b.steps if s not in h.steps]
        for step in steps:
            bm, hm = b.steps.get(step, {}), h.steps.get(step, {})
            for metric in metric_order([*bm, *hm]):
                rows.append(
                    Row(
                        name, step, metric, Stat.of(bm.get(metric, [])), Stat.of(hm.get(metric, []))
                    )
                )
    crossings = []
    for t in thresholds:
        for row in rows:
            if row.metric not in t.metrics or row.base is None:
                continue
            if row.head is None:
                crossings.append(Crossing(t, row, "missing in head"))
            elif t.crossed_by(row.pct, row.base.median, row.head.median):
                pct = row.pct
                crossings.append(
                    Crossing(t, row, "n/a: base is 0" if pct is None else f"{pct:+.1f}%")
                )
    return Comparison(base, head, sims, rows, crossings)


# ── text ───────────────────────────────────────────────────────────────────────


def fmt_value(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    digits = METRIC_LABELS.get(metric, (metric, 3))[1]
    return f"{value:.{digits}f}"


def _fmt_change(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    digits = METRIC_LABELS.get(metric, (metric, 3))[1]
    return f"{value:+.{digits}f}"


def _fmt_pct(row: Row) -> str:
    if row.base is None or row.head is None:
        return "-"
    pct = row.pct
    return "n/a" if pct is None else f"{pct:+.1f}%"


def _side_line(role: str, g: Group) -> str:
    tries = "1 try" if g.tries == 1 else f"{g.tries} tries"
    where = g.runs[0].where if g.tries == 1 else ", ".join(g.folders())
    return f"{role}: {g.label} ({tries}: {where})" if g.tries > 1 else f"{role}: {where} ({tries})"


def text_table(rows: list[list[str]], numeric_from: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [
            c.ljust(widths[i]) if i < numeric_from else c.rjust(widths[i]) for i, c in enumerate(r)
        ]
        out.append("  ".join(cells).rstrip())
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def format_text(c: Comparison) -> str:
    lines = [_side_line("base", c.base), _side_line("head", c.head)]
    if c.medians:
        lines.append(
            f"values are medians over the tries ({c.base.tries} in base, {c.head.tries} in head); "
            "n: how many tries had the value"
        )
    table = [["sim", "step", "metric", "base", "head", "change", "%"]]
    if c.medians:
        table[0][3:5] = ["base (n)", "head (n)"]

    def cell(metric: str, s: Stat | None) -> str:
        text = fmt_value(metric, s.median if s else None)
        # The pass rate is one number of all the tries: no count of tries that had it.
        return f"{text} ({s.n})" if c.medians and s and metric != "pass_rate" else text

    for name, (b, h) in c.sims.items():
        if b is None or h is None:
            continue
        table.append([name, "", "status", b.status(), h.status(), "", ""])
        for row in (r for r in c.rows if r.sim == name):
            if row.metric == "pass_rate" and b.tries == 1 and h.tries == 1:
                continue  # the status says it
            label = METRIC_LABELS.get(row.metric, (row.metric, 3))[0]
            table.append(
                [
                    name,
                    row.step or "",
                    label,
                    cell(row.metric, row.base),
                    cell(row.metric, row.head),
                    _fmt_change(row.metric, row.change),
                    _fmt_pct(row),
                ]
            )
    if len(table) > 1:
        lines += text_table(table, 3)
    else:
        lines.append("no sim ran on both sides")
    for side in ("base", "head"):
        only = c.only_in(side)
        if only:
            lines.append(f"only in {side}: " + ", ".join(only))
    for crossing in c.crossings:
        lines.append("THRESHOLD " + crossing.text())
    return "\n".join(lines)
