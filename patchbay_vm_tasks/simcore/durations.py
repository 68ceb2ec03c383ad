"""Sim durations: `"<n>ms"`, `"<n>s"`, `"<n>m"` with a whole number n (RUNNER-FACTS 4).

The Rust runner takes exactly these (`parse_duration` in its steps.rs): a bare number,
a fraction or another unit is an error there, so it is one here too.
"""

from __future__ import annotations

import re

_DURATION_RE = re.compile(r"\s*([0-9]+)\s*(ms|s|m)\s*")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0}
_HINT = 'write a whole number with ms, s or m, such as "500ms", "2s" or "1m"'


def parse_duration(text: object) -> float:
    """Seconds in a duration string; ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        raise ValueError(f"a duration must be a string, got {text!r}; {_HINT}")
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"bad duration {text!r}; {_HINT}")
    return int(m[1]) * _SECONDS_PER_UNIT[m[2]]
