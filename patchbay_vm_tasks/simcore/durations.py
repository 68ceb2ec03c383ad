"""Sim durations: `"<n>ms"`, `"<n>s"`, `"<n>m"` with a whole number n (RUNNER-FACTS 4).

The Rust runner takes exactly these (`parse_duration` in its steps.rs): a bare number,
a fraction or another unit is an error there, so it is one here too. Ours also refuses
more than `limits.MAX_DURATION_S` (a week), so that a 400-digit number is an error
message, not an OverflowError or a wait that never ends.
"""

from __future__ import annotations

import re

from .limits import MAX_DURATION_S, shorten

_DURATION_RE = re.compile(r"\s*([0-9]+)\s*(ms|s|m)\s*")
_SECONDS_PER_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0}
_HINT = 'write a whole number with ms, s or m, such as "500ms", "2s" or "1m"'
# More digits than any duration up to the limit has, in the smallest unit (ms).
_MAX_DIGITS = len(str(MAX_DURATION_S * 1000))


def parse_duration(text: object) -> float:
    """Seconds in a duration string; ValueError saying what is wrong otherwise."""
    if not isinstance(text, str):
        kind = {dict: "a table", list: "a list", bool: "a boolean"}.get(type(text))
        raise ValueError(f"a duration must be a string, got {kind or type(text).__name__}; {_HINT}")
    m = _DURATION_RE.fullmatch(text)
    if not m:
        raise ValueError(f"bad duration {shorten(repr(text))}; {_HINT}")
    digits = m[1].lstrip("0") or "0"
    seconds = int(digits) * _SECONDS_PER_UNIT[m[2]] if len(digits) <= _MAX_DIGITS else None
    if seconds is None or seconds > MAX_DURATION_S:
        raise ValueError(
            f"duration {shorten(repr(text))} is over the limit of {MAX_DURATION_S // 86400} days"
        )
    return seconds
