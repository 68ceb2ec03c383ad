"""Link conditions: the named presets, reading one from a preset name or a table, and
the short text the plan shows (SIM-FORMAT "Link conditions", RUNNER-FACTS 3)."""

from __future__ import annotations

import math
from typing import Any

from . import model
from .format_keys import CONDITION_KEYS
from .limits import MAX_DELAY_MS, MAX_RATE_KBIT, shorten
from .tables import TableReader

SimError = model.SimError

# (latency ms, jitter ms, loss %, rate kbit) per preset, RUNNER-FACTS 3.
PRESETS: dict[str, model.LinkCondition] = {
    name: model.LinkCondition(lat, jit, loss, rate, preset=name)
    for name, (lat, jit, loss, rate) in {
        "lan": (0, 0, 0, 0),
        "wifi": (5, 2, 0.1, 0),
        "wifi-bad": (40, 15, 2, 20_000),
        "mobile-4g": (25, 8, 0.5, 0),
        "mobile-3g": (100, 30, 2, 2_000),
        "satellite": (40, 7, 1, 0),
        "satellite-geo": (300, 20, 0.5, 25_000),
    }.items()
}
PRESET_ALIASES = {"mobile": "mobile-4g"}


def read_condition(tr: TableReader, value: Any, path: str, key: str) -> model.LinkCondition:
    if isinstance(value, str):
        name = PRESET_ALIASES.get(value, value)
        if name not in PRESETS:
            raise SimError(
                path,
                key,
                f"unknown link condition preset {value!r}; use one of "
                f"{', '.join([*PRESETS, *PRESET_ALIASES])} or a table",
            )
        return PRESETS[name]
    table = tr.table(value, path, key, "a preset name or a table")
    tr.check_keys(table, CONDITION_KEYS, path, key, "a link condition")
    kw: dict[str, Any] = {}
    for k in sorted(CONDITION_KEYS & table.keys()):
        kw[k] = _limit(table[k], k, path, f"{key}.{k}")
    return model.LinkCondition(**kw)


def _limit(v: Any, k: str, path: str, key: str) -> int | float:
    """One number of a condition table: whole and bounded for rate, latency and jitter, a
    finite percentage for the rest (nan, inf and 1e400 would reach tc)."""
    if k.endswith("_pct"):
        ok = not isinstance(v, bool) and isinstance(v, int | float)
        if ok and (isinstance(v, int) or math.isfinite(v)) and 0 <= v <= 100:
            return v
        raise SimError(path, key, f"must be a percentage 0..100, got {shorten(repr(v))}")
    top = MAX_RATE_KBIT if k == "rate_kbit" else MAX_DELAY_MS
    if not isinstance(v, bool) and isinstance(v, int) and 0 <= v <= top:
        return v
    raise SimError(path, key, f"must be a whole number 0..{top}, got {shorten(repr(v))}")


def describe_condition(cond: model.LinkCondition | None) -> str:
    if cond is None:
        return "none"
    parts = [f"{cond.latency_ms:g}ms"]
    if cond.jitter_ms:
        parts.append(f"±{cond.jitter_ms:g}ms")
    if cond.loss_pct:
        parts.append(f"loss {cond.loss_pct:g}%")
    if cond.rate_kbit:
        parts.append(f"{cond.rate_kbit} kbit/s")
    for label, v in (
        ("reorder", cond.reorder_pct),
        ("dup", cond.duplicate_pct),
        ("corrupt", cond.corrupt_pct),
    ):
        if v:
            parts.append(f"{label} {v:g}%")
    text = " ".join(parts)
    return f"{cond.preset} ({text})" if cond.preset else text
