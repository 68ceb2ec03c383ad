"""The keys a sim file may hold, table by table (SIM-FORMAT.md, RUNNER-FACTS.md).

A key outside these sets is unknown: an error with `strict=True` (sim.check), a warning
otherwise, since the Rust runner silently ignores it.
"""

from __future__ import annotations

from . import model

TOP_KEYS = frozenset(
    {"extends", "sim", "binary", "prepare", "step-template", "step-group", "step"}
    | {"router", "device", "region"}
)
TOPOLOGY_KEYS = frozenset({"router", "device", "region"})
SIM_KEYS = frozenset({"name", "topology", "binaries"})
EXTENDS_KEYS = frozenset({"file"})
BINARY_KEYS = frozenset(
    {"name", "mode", "path", "url", "repo", "commit", "example", "bin", "features"}
    | {"all-features", "all_features"}
)
PREPARE_KEYS = frozenset({"mode", "features", "all-features", "examples", "bins"})
ROUTER_KEYS = frozenset({"name", "nat", "upstream", "region", "ip_support", "nat_v6"})
# IPv6 router-advertisement knobs of the Rust lab: known, but nothing to do without IPv6.
ROUTER_IGNORED_KEYS = frozenset({"ra_enabled", "ra_interval_secs", "ra_lifetime_secs"})
DEVICE_KEYS = frozenset({"count", "default_via"})
IFACE_KEYS = frozenset({"gateway", "impair"})
REGION_KEYS = frozenset({"latencies"})
CONDITION_KEYS = frozenset(
    {"rate_kbit", "loss_pct", "latency_ms", "jitter_ms", "reorder_pct", "duplicate_pct"}
    | {"corrupt_pct"}
)
CAPTURE_KEYS = frozenset({"pipe", "regex", "match", "pick"})
RESULT_KEYS = frozenset({"duration", "up_bytes", "down_bytes", "latency_ms"})

COMMON_STEP_KEYS = frozenset({"action", "kind", "id", "device", "env", "requires", "timeout"})
PROCESS_KEYS = frozenset({"cmd", "args", "parser", "captures", "results"})
A = model.Action
ACTION_KEYS: dict[model.Action, frozenset[str]] = {
    A.RUN: PROCESS_KEYS,
    A.SPAWN: PROCESS_KEYS | {"ready_after"},
    A.WAIT_FOR: frozenset(),
    A.WAIT: frozenset({"duration"}),
    A.SET_LINK_CONDITION: frozenset({"interface", "condition", "impair"}),
    A.LINK_DOWN: frozenset({"interface"}),
    A.LINK_UP: frozenset({"interface"}),
    A.SET_DEFAULT_ROUTE: frozenset({"to"}),
    A.GEN_CERTS: frozenset({"cn", "san"}),
    A.GEN_FILE: frozenset({"content"}),
    A.ASSERT: frozenset({"check", "checks"}),
}
STEP_KEYS = COMMON_STEP_KEYS.union(*ACTION_KEYS.values())
# What a step with `use = TEMPLATE` may lay on top of the template.
USE_KEYS = frozenset(
    {"use", "vars", "id", "device", "env", "args", "requires", "results", "timeout", "captures"}
)
GROUP_USE_KEYS = frozenset({"use", "vars"})
ACTION_ALIASES = {"set-impair": "set-link-condition"}
# Actions whose step runs on a device, and those where the device is optional.
DEVICE_ACTIONS = frozenset(
    {A.RUN, A.SPAWN, A.SET_LINK_CONDITION, A.LINK_DOWN, A.LINK_UP, A.SET_DEFAULT_ROUTE}
)
OPTIONAL_DEVICE_ACTIONS = frozenset({A.GEN_CERTS, A.GEN_FILE})
