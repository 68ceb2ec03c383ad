"""Link conditions: the named presets, reading one from a preset name or a table, and
the short text the plan shows (SIM-FORMAT "Link conditions", RUNNER-FACTS 3)."""

from __future__ import annotations

from typing import Any

from . import model
from .format_keys import CONDITION_KEYS
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
    for k in CONDITION_KEYS & table.keys():
        v = table[k]
        whole = k in ("rate_kbit", "latency_ms", "jitter_ms")
        ok = not isinstance(v, bool) and isinstance(v, int if whole else (int, float))
        if not ok or v < 0 or (k.endswith("_pct") and v > 100):
            what = "a whole number >= 0" if whole else "a percentage 0..100"
            raise SimError(path, f"{key}.{k}", f"must be {what}, got {v!r}")
        kw[k] = v
    return model.LinkCondition(**kw)


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
