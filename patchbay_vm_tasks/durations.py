"""Durations a user types, in flags and settings: one grammar for all of them.

`300` (seconds), `1.5m`, `500ms`, `90s`, `10m`, `1h`, `1d`: a number (ASCII digits, an
optional fraction) and an optional unit, more than zero and at most a week. Sim files
keep the Rust runner's own grammar (simcore/durations.py); what goes to the runner and
to coreutils' `timeout` is written in theirs.
"""

from __future__ import annotations

import re

from .errors import UsageError

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)?")
_UNIT_SECONDS = {"ms": 0.001, None: 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_SECONDS = 7 * 86400
EXAMPLES = "300, 500ms, 90s, 1.5m, 10m or 1h"


def parse(text: object, what: str) -> float:
    """Seconds in a user's duration; UsageError naming `what` (a flag, a variable)."""
    shown = repr(text) if len(repr(text)) <= 40 else repr(text)[:37] + "...'"
    m = _DURATION.fullmatch(text.strip()) if isinstance(text, str) else None
    if m is None:
        raise UsageError(f"{what}: expected a duration such as {EXAMPLES}, got {shown}")
    seconds = float(m[1]) * _UNIT_SECONDS[m[2]]
    if seconds <= 0:
        raise UsageError(f"{what}: must be more than zero, got {shown}")
    if seconds > MAX_SECONDS:
        raise UsageError(f"{what}: {shown} is over the limit of {MAX_SECONDS // 86400} days")
    return seconds


def for_runner(seconds: float) -> str:
    """The runner's spelling (whole ms, s or m; RUNNER-FACTS 4), rounded up to a ms."""
    ms = max(1, -(-round(seconds * 1_000_000) // 1000))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def for_timeout(seconds: float) -> str:
    """coreutils `timeout`'s spelling: seconds, with a fraction where there is one."""
    return f"{seconds:g}s" if "e" not in f"{seconds:g}" else f"{seconds:.3f}s"
