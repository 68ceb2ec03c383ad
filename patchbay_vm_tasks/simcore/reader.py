"""Read a patchbay sim file into `model.Sim`: one reader for the host and the guest.

The host uses it for `sim.check` and to stage the binaries a sim declares; the builtin
runner uses it in the guest. It follows SIM-FORMAT.md and what the Rust runner does
(RUNNER-FACTS.md): `[[extends]]`, `[sim]`, the topology (a `topos/` file or inline),
`[[binary]]`, `[[prepare]]`, step templates, step groups and counted devices are all
resolved here, so the runner only ever sees plain steps.

Errors are `model.SimError(path, key, message)` naming the file and the key, e.g.
`step[3].device` (step indexes count the file's `[[step]]` entries from 0) or
`device.client.eth0.gateway`. Unknown keys, which the Rust runner silently ignores,
are errors with `strict=True` (sim.check) and warnings in `Sim.warnings` otherwise.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import model
from .durations import parse_duration

SimError = model.SimError

# ── keys ────────────────────────────────────────────────────────────────────

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
BINARY_MODES = ("path", "fetch", "build", "target")
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

_COMMON_STEP_KEYS = frozenset({"action", "kind", "id", "device", "env", "requires", "timeout"})
_PROCESS_KEYS = frozenset({"cmd", "args", "parser", "captures", "results"})
A = model.Action
ACTION_KEYS: dict[model.Action, frozenset[str]] = {
    A.RUN: _PROCESS_KEYS,
    A.SPAWN: _PROCESS_KEYS | {"ready_after"},
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
STEP_KEYS = _COMMON_STEP_KEYS.union(*ACTION_KEYS.values())
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

NAT_MODES = {"none": None, **{m.value: m for m in model.Nat}}
IP_SUPPORT = {"v4-only": model.IpSupport.V4_ONLY, "dual-stack": model.IpSupport.DUAL_STACK}
NAT_V6_REFUSED = ("nptv6", "masquerade", "nat64")
NOT_YET = "not supported by the builtin runner yet"

WAIT_FOR_TIMEOUT_S = 300.0
LINUX_IFNAMSIZ = 15  # longest interface name Linux takes

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

_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")
_BRACE_RE = re.compile(r"\$\{([^${}]+)\}")
_GROUP_VAR_RE = re.compile(r"\$\{group\.([^{}]*)\}")
_CHECK_OPS = (" == ", " != ", " contains ", " matches ", " >= ")
_IFACE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


# ── small helpers ───────────────────────────────────────────────────────────


def show_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the cwd when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file; errors name the file, line and column (`file:L:C: ...`)."""
    path = Path(path)
    shown = show_path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SimError(shown, None, "not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise SimError(shown, None, f"cannot read it: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError only carries the position inside its message.
        msg = str(exc)
        m = _TOML_POS_RE.search(msg)
        if m:
            where, at = f"{shown}:{m[1]}:{m[2]}", f" (line {m[1]}, column {m[2]})"
        else:
            where, at = shown, " (at the end of the file)"
        reason = _TOML_END_RE.sub("", _TOML_POS_RE.sub("", msg))
        raise SimError(where, None, f"invalid TOML{at}: {reason}; fix the file") from None


def _did_you_mean(key: str, allowed: frozenset[str] | set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return f"; did you mean {close[0]!r}?" if close else ""


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def split_check(check: str) -> tuple[str, str, str] | None:
    """(lhs, op, rhs) of an assert check, searching the operators in the runner's order."""
    for op in _CHECK_OPS:
        i = check.find(op)
        if i >= 0:
            return check[:i].strip(), op.strip(), check[i + len(op) :].strip()
    return None


def parse_condition(value: Any, path: str = "<sim>", key: str = "impair") -> model.LinkCondition:
    """A link condition from a preset name or a table (SIM-FORMAT "Link conditions")."""
    return _Reader(strict=True)._condition(value, path, key)


def infer_binary_mode(entry: dict[str, Any], path: str = "<sim>", key: str = "binary") -> str:
    """Mode of a `[[binary]]` table: explicit, else path -> path, url -> fetch,
    repo/example/bin -> build; no source is an error."""
    mode = entry.get("mode")
    if mode is not None:
        if mode not in BINARY_MODES:
            raise SimError(
                path, f"{key}.mode", f"unknown mode {mode!r}; use one of {', '.join(BINARY_MODES)}"
            )
        return mode
    if entry.get("path"):
        return "path"
    if entry.get("url"):
        return "fetch"
    if entry.get("repo") or entry.get("example") or entry.get("bin"):
        return "build"
    raise SimError(path, key, "has no source; give it path, url, repo, example or bin")


# ── the reader ──────────────────────────────────────────────────────────────


@dataclass
class _Defs:
    """What a file and the files it extends declare; later entries win by name."""

    binaries: dict[str, model.Binary] = field(default_factory=dict)
    prepare: list[dict[str, Any]] = field(default_factory=list)
    templates: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict)
    groups: dict[str, tuple[list[dict[str, Any]], str]] = field(default_factory=dict)

    def update(self, other: _Defs) -> None:
        self.binaries.update(other.binaries)
        self.prepare += other.prepare
        self.templates.update(other.templates)
        self.groups.update(other.groups)


@dataclass
class _Raw:
    """One step table after templates and groups, before it is typed."""

    table: dict[str, Any]
    key: str  # for messages: "step[3]"
    origin: str  # "sims/x.toml step[3] (use = transfer-provider)"
    template: bool  # came through a template: `.cap` in results means `<id>.cap`


class _Reader:
    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.warnings: list[str] = []

    # -- unknown keys ---------------------------------------------------------

    def unknown(self, path: str, key: str, message: str) -> None:
        err = SimError(path, key, message)
        if self.strict:
            raise err
        self.warnings.append(str(err))

    def check_keys(
        self, table: dict[str, Any], allowed: frozenset[str], path: str, prefix: str, what: str
    ) -> None:
        for k in table:
            if k not in allowed:
                self.unknown(
                    path,
                    _join(prefix, k),
                    f"unknown key {k!r} in {what}{_did_you_mean(k, allowed)}",
                )

    # -- typed values ---------------------------------------------------------

    @staticmethod
    def table(value: Any, path: str, key: str, what: str = "a table") -> dict[str, Any]:
        if not isinstance(value, dict):
            raise SimError(path, key, f"must be {what}, got {_tname(value)}")
        return value

    @staticmethod
    def string(value: Any, path: str, key: str) -> str:
        if not isinstance(value, str):
            raise SimError(path, key, f"must be a string, got {_tname(value)}")
        return value

    def opt_string(self, table: dict[str, Any], name: str, path: str, prefix: str) -> str | None:
        value = table.get(name)
        return None if value is None else self.string(value, path, _join(prefix, name))

    @staticmethod
    def strings(value: Any, path: str, key: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise SimError(path, key, f"must be a list of strings, got {value!r}")
        return list(value)

    def string_table(self, value: Any, path: str, key: str) -> dict[str, str]:
        table = self.table(value, path, key)
        for k, v in table.items():
            self.string(v, path, _join(key, k))
        return dict(table)

    @staticmethod
    def duration(value: Any, path: str, key: str) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise SimError(path, key, str(exc)) from None

    @staticmethod
    def array_of_tables(data: dict[str, Any], name: str, path: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if isinstance(value, dict):
            raise SimError(path, name, f"write [[{name}]] (an array of tables), not [{name}]")
        if not isinstance(value, list):
            raise SimError(path, name, f"write [[{name}]] (an array of tables)")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise SimError(path, f"{name}[{i}]", f"must be a table, got {_tname(item)}")
        return value

    # -- files, extends, binaries -----------------------------------------------

    def find_ref(self, ref: Any, referrer: Path, path: str, key: str) -> Path:
        """A file named by `[[extends]]` or `[sim] binaries`: next to the referring file,
        then one folder up, then in the cwd."""
        ref = self.string(ref, path, key)
        if not ref:
            raise SimError(path, key, "is empty; name a TOML file")
        rel = Path(ref).expanduser()
        if rel.is_absolute():
            candidates = [rel]
        else:
            here = referrer.parent
            candidates = [here / rel, here.parent / rel, Path.cwd() / rel]
        for cand in candidates:
            if cand.is_file():
                return cand.resolve()
        looked = ", ".join(str(c.parent) for c in candidates)
        raise SimError(path, key, f"{ref!r} not found (looked in {looked}); fix the file name")

    def collect(self, path: Path, stack: tuple[Path, ...], full: bool) -> tuple[dict, _Defs]:
        """The file's TOML and what it and its extends declare. `full`: templates, groups
        and prepare too (binaries_of only needs the binaries)."""
        data = read_toml(path)
        shown = show_path(path)
        stack = (*stack, path)
        defs = _Defs()
        if full:
            self.check_keys(data, TOP_KEYS, shown, "", "a sim file")
            if len(stack) > 1:
                ignored = sorted(k for k in data if k in {"step", *TOPOLOGY_KEYS})
                if ignored:
                    self.warnings.append(
                        f"{shown}: {', '.join(ignored)} ignored: a file used by [[extends]] "
                        "gives binaries, prepare, step templates and step groups only"
                    )
        extends = data.get("extends", [])
        if isinstance(extends, dict):  # a single [extends] table
            extends = [extends]
        if not isinstance(extends, list):
            raise SimError(shown, "extends", 'write [[extends]] with file = "other.toml"')
        for i, ext in enumerate(extends):
            key = f"extends[{i}]"
            if not isinstance(ext, dict) or not isinstance(ext.get("file"), str):
                raise SimError(shown, key, 'an [[extends]] has no file = "other.toml"')
            if full:
                self.check_keys(ext, EXTENDS_KEYS, shown, key, "[[extends]]")
            sub = self.find_ref(ext["file"], path, shown, f"{key}.file")
            if sub in stack:
                chain = " -> ".join(show_path(p) for p in (*stack, sub))
                raise SimError(
                    shown, f"{key}.file", f"[[extends]] loop: {chain}; remove one of the extends"
                )
            # In order: a later extends wins over an earlier one.
            defs.update(self.collect(sub, stack, full)[1])
        sim = self.table(data.get("sim", {}), shown, "sim")
        if full:
            self.check_keys(sim, SIM_KEYS, shown, "sim", "[sim]")
        if sim.get("binaries") is not None:
            shared = self.find_ref(sim["binaries"], path, shown, "sim.binaries")
            defs.binaries.update(
                self.binaries_in(read_toml(shared), show_path(shared), str(shared))
            )
        defs.binaries.update(self.binaries_in(data, shown, str(path)))  # own entries win
        if full:
            defs.prepare += self.prepare_in(data, shown)
            defs.templates.update(self.templates_in(data, shown))
            defs.groups.update(self.groups_in(data, shown))
        return data, defs

    def binaries_in(self, data: dict[str, Any], path: str, origin: str) -> dict[str, model.Binary]:
        """`path`: the file as shown in messages; `origin`: its resolved path."""
        value = data.get("binary", [])
        if not isinstance(value, list):
            raise SimError(path, "binary", "use [[binary]] (an array of tables) for binaries")
        out: dict[str, model.Binary] = {}
        for i, entry in enumerate(value):
            b = dataclasses.replace(self.binary(entry, path, i), origin=origin)
            out[b.name] = b  # within one file the later entry wins, as in the runner
        return out

    def binary(self, entry: Any, path: str, index: int) -> model.Binary:
        if not isinstance(entry, dict):
            raise SimError(path, f"binary[{index}]", "each [[binary]] must be a table with a name")
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise SimError(
                path, f"binary[{index}]", 'a [[binary]] entry has no name; add name = "..."'
            )
        key = f"binary.{name}"
        self.check_keys(entry, BINARY_KEYS, path, key, "[[binary]]")
        mode = infer_binary_mode(entry, path, key)
        features = entry.get("features", [])
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise SimError(path, f"{key}.features", "features must be a list of strings")
        all_features = entry.get("all-features", entry.get("all_features", False))
        if not isinstance(all_features, bool):
            raise SimError(path, f"{key}.all-features", "all-features must be true or false")
        fields = {k: self.opt_string(entry, k, path, key) for k in _BINARY_STRINGS}
        if mode == "path" and not fields["path"]:
            raise SimError(path, key, 'mode = "path" needs path = "FILE"')
        if mode == "fetch" and not fields["url"]:
            raise SimError(path, key, 'mode = "fetch" needs url = "https://..."')
        repo = fields["repo"]
        return model.Binary(
            name=name,
            mode=mode,
            path=fields["path"],
            url=fields["url"],
            repo=repo,
            # SIM-FORMAT: commit defaults to main when a repo is given.
            commit=fields["commit"] or ("main" if repo else None),
            example=fields["example"],
            bin=fields["bin"],
            features=tuple(features),
            all_features=all_features,
            origin=path,
        )

    def prepare_in(self, data: dict[str, Any], path: str) -> list[dict[str, Any]]:
        value = data.get("prepare", [])
        entries = [value] if isinstance(value, dict) else value  # one table or an array
        if not isinstance(entries, list):
            raise SimError(path, "prepare", "write [[prepare]] (an array of tables)")
        out = []
        for i, entry in enumerate(entries):
            key = f"prepare[{i}]"
            entry = self.table(entry, path, key)
            self.check_keys(entry, PREPARE_KEYS, path, key, "[[prepare]]")
            if entry.get("mode", "build") != "build":
                raise SimError(path, f"{key}.mode", 'only mode = "build" exists')
            for k in ("features", "examples", "bins"):
                if k in entry:
                    self.strings(entry[k], path, f"{key}.{k}")
            if not isinstance(entry.get("all-features", False), bool):
                raise SimError(path, f"{key}.all-features", "must be true or false")
            out.append(dict(entry))
        return out

    def templates_in(self, data: dict[str, Any], path: str) -> dict[str, tuple[dict, str]]:
        out = {}
        for i, entry in enumerate(self.array_of_tables(data, "step-template", path)):
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise SimError(path, f"step-template[{i}].name", "a step template needs a name")
            key = f"step-template.{name}"
            self.check_keys(entry, STEP_KEYS | {"name"}, path, key, "[[step-template]]")
            out[name] = ({k: v for k, v in entry.items() if k != "name"}, path)
        return out

    def groups_in(self, data: dict[str, Any], path: str) -> dict[str, tuple[list[dict], str]]:
        out = {}
        for i, entry in enumerate(self.array_of_tables(data, "step-group", path)):
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise SimError(path, f"step-group[{i}].name", "a step group needs a name")
            key = f"step-group.{name}"
            self.check_keys(entry, frozenset({"name", "step"}), path, key, "[[step-group]]")
            steps = self.array_of_tables(entry, "step", path)
            for j, step in enumerate(steps):
                self.check_keys(
                    step, STEP_KEYS | USE_KEYS - {"vars"}, path, f"{key}.step[{j}]", "a group step"
                )
            out[name] = (steps, path)
        return out

    # -- topology -------------------------------------------------------------

    def topology(
        self, data: dict[str, Any], sim_path: Path, shown: str
    ) -> tuple[model.Topology, str | None, dict[str, int]]:
        """(topology, its `[sim] topology` name or None, {counted device: count})."""
        ref = data.get("sim", {}).get("topology")
        if ref is None:
            topo, counts = self.topology_from(data, shown)
            return topo, None, counts
        ref = self.string(ref, shown, "sim.topology")
        inline = sorted(k for k in TOPOLOGY_KEYS if k in data)
        if inline:
            raise SimError(
                shown,
                "sim.topology",
                f"is set to {ref!r}, so inline {', '.join(inline)} tables are not allowed; "
                "keep one of them",
            )
        here = sim_path.parent
        candidates = [here / "topos", here.parent / "topos", Path.cwd() / "topos"]
        for folder in candidates:
            topo_file = folder / f"{ref}.toml"
            if topo_file.is_file():
                topo_data = read_toml(topo_file)
                topo_shown = show_path(topo_file)
                self.check_keys(topo_data, TOPOLOGY_KEYS, topo_shown, "", "a topology file")
                topo, counts = self.topology_from(topo_data, topo_shown)
                return topo, ref, counts
        looked = ", ".join(str(c) for c in candidates)
        raise SimError(shown, "sim.topology", f"topos/{ref}.toml not found (looked in {looked})")

    def topology_from(
        self, data: dict[str, Any], path: str
    ) -> tuple[model.Topology, dict[str, int]]:
        routers = self.routers(data, path)
        router_names = {r.name for r in routers}
        devices, counts = self.devices(data, path, router_names)
        regions = self.regions(data, path)
        return model.Topology(tuple(routers), tuple(devices), regions), counts

    def routers(self, data: dict[str, Any], path: str) -> list[model.Router]:
        out: list[model.Router] = []
        entries = self.array_of_tables(data, "router", path)
        for i, entry in enumerate(entries):
            name = entry.get("name")
            if not isinstance(name, str) or not name:
                raise SimError(path, f"router[{i}].name", 'a router needs name = "..."')
            key = f"router.{name}"
            if any(r.name == name for r in out):
                raise SimError(path, f"{key}.name", f"two routers are named {name!r}")
            if name.startswith("region_"):
                raise SimError(
                    path, f"{key}.name", "router names starting with region_ are reserved"
                )
            self.check_keys(entry, ROUTER_KEYS | ROUTER_IGNORED_KEYS, path, key, "[[router]]")
            ignored = sorted(k for k in entry if k in ROUTER_IGNORED_KEYS)
            if ignored:
                self.warnings.append(
                    f"{path}: {key}: {', '.join(ignored)} ignored (IPv6 router advertisements "
                    "are not used by the builtin runner)"
                )
            nat_text = entry.get("nat", "none")
            if not isinstance(nat_text, str) or nat_text not in NAT_MODES:
                raise SimError(
                    path,
                    f"{key}.nat",
                    f"unknown NAT mode {nat_text!r}; use one of {', '.join(NAT_MODES)}",
                )
            ip_text = entry.get("ip_support", "v4-only")
            if ip_text == "v6-only":
                raise SimError(path, f"{key}.ip_support", f"v6-only is {NOT_YET}")
            if ip_text not in IP_SUPPORT:
                raise SimError(
                    path,
                    f"{key}.ip_support",
                    f"unknown value {ip_text!r}; use v4-only or dual-stack",
                )
            nat_v6 = entry.get("nat_v6", "none")
            if nat_v6 in NAT_V6_REFUSED:
                raise SimError(path, f"{key}.nat_v6", f"nat_v6 = {nat_v6!r} is {NOT_YET}")
            if nat_v6 != "none":
                raise SimError(
                    path,
                    f"{key}.nat_v6",
                    f"unknown value {nat_v6!r}; use none ({', '.join(NAT_V6_REFUSED)}: {NOT_YET})",
                )
            out.append(
                model.Router(
                    name=name,
                    nat=NAT_MODES[nat_text],
                    upstream=self.opt_string(entry, "upstream", path, key),
                    region=self.opt_string(entry, "region", path, key),
                    ip_support=IP_SUPPORT[ip_text],
                    nat_v6=None,
                )
            )
        by_name = {r.name: r for r in out}
        for r in out:
            if r.upstream is None:
                continue
            if r.upstream not in by_name:
                raise SimError(
                    path,
                    f"router.{r.name}.upstream",
                    f"names no router: {r.upstream!r} (routers: {', '.join(by_name)})",
                )
            seen, cur = [r.name], r.upstream
            while cur is not None:
                if cur in seen:
                    chain = " -> ".join([*seen, cur])
                    raise SimError(path, f"router.{r.name}.upstream", f"upstream cycle: {chain}")
                seen.append(cur)
                cur = by_name[cur].upstream
        return out

    def devices(
        self, data: dict[str, Any], path: str, routers: set[str]
    ) -> tuple[list[model.Device], dict[str, int]]:
        raw = self.table(data.get("device", {}), path, "device")
        out: list[model.Device] = []
        counts: dict[str, int] = {}
        for name in sorted(raw):
            key = f"device.{name}"
            table = self.table(raw[name], path, key, "a table of interfaces ([device.NAME.IFACE])")
            if name in routers:
                raise SimError(path, key, f"{name!r} is a router's name too; rename one")
            # Interfaces are the table-valued keys; the scalars are device settings.
            ifnames = sorted(k for k, v in table.items() if isinstance(v, dict))
            self.check_keys(
                {k: v for k, v in table.items() if not isinstance(v, dict)},
                DEVICE_KEYS,
                path,
                key,
                f"[device.{name}] (interfaces are tables: [device.{name}.eth0])",
            )
            if not ifnames:
                raise SimError(
                    path, key, f'has no interface; add [device.{name}.eth0] gateway = "ROUTER"'
                )
            ifaces = tuple(
                self.interface(table[n], path, f"{key}.{n}", n, routers) for n in ifnames
            )
            default_via = table.get("default_via", ifnames[0])
            if default_via not in ifnames:
                raise SimError(
                    path,
                    f"{key}.default_via",
                    f"names no interface of {name}: {default_via!r} (has {', '.join(ifnames)})",
                )
            if "count" in table:
                count = table["count"]
                if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                    raise SimError(
                        path, f"{key}.count", f"must be a whole number >= 1, got {count!r}"
                    )
                counts[name] = count
                names = [f"{name}-{i}" for i in range(count)]
            else:
                names = [name]
            out += [model.Device(n, ifaces, default_via) for n in names]
        seen: set[str] = set()
        for d in out:
            if d.name in seen or d.name in routers:
                raise SimError(path, "device", f"two nodes are named {d.name!r} (count expands)")
            seen.add(d.name)
        return out, counts

    def interface(
        self, table: dict[str, Any], path: str, key: str, name: str, routers: set[str]
    ) -> model.Interface:
        if len(name) > LINUX_IFNAMSIZ or not _IFACE_NAME_RE.fullmatch(name):
            raise SimError(
                path,
                key,
                f"bad interface name {name!r}: at most {LINUX_IFNAMSIZ} letters, digits, "
                "'.', '_' or '-' (a Linux interface name)",
            )
        self.check_keys(table, IFACE_KEYS, path, key, "an interface")
        if "gateway" not in table:
            raise SimError(path, f"{key}.gateway", 'missing; add gateway = "ROUTER"')
        gateway = self.string(table["gateway"], path, f"{key}.gateway")
        if gateway not in routers:
            known = ", ".join(sorted(routers)) or "none declared"
            raise SimError(
                path, f"{key}.gateway", f"names no router: {gateway!r} (routers: {known})"
            )
        impair = None
        if "impair" in table:
            impair = self._condition(table["impair"], path, f"{key}.impair")
        return model.Interface(name, gateway, impair)

    def regions(self, data: dict[str, Any], path: str) -> dict[str, dict[str, float]]:
        raw = self.table(data.get("region", {}), path, "region")
        out: dict[str, dict[str, float]] = {}
        for name, entry in raw.items():
            key = f"region.{name}"
            entry = self.table(entry, path, key)
            self.check_keys(entry, REGION_KEYS, path, key, f"[region.{name}]")
            lat = self.table(entry.get("latencies", {}), path, f"{key}.latencies")
            for other, ms in lat.items():
                if isinstance(ms, bool) or not isinstance(ms, int) or ms < 0:
                    raise SimError(
                        path, f"{key}.latencies.{other}", f"must be whole milliseconds, got {ms!r}"
                    )
            out[name] = {k: float(v) for k, v in lat.items()}
        return out

    def _condition(self, value: Any, path: str, key: str) -> model.LinkCondition:
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
        table = self.table(value, path, key, "a preset name or a table")
        self.check_keys(table, CONDITION_KEYS, path, key, "a link condition")
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

    # -- steps ----------------------------------------------------------------

    def expand(self, data: dict[str, Any], shown: str, defs: _Defs) -> list[_Raw]:
        """The `[[step]]` tables with templates and groups laid out, in order."""
        out: list[_Raw] = []
        for i, entry in enumerate(self.array_of_tables(data, "step", shown)):
            key = f"step[{i}]"
            if "use" not in entry:
                self.check_keys(entry, STEP_KEYS, shown, key, "[[step]]")
                out.append(_Raw(copy.deepcopy(entry), key, f"{shown} {key}", False))
                continue
            name = self.string(entry["use"], shown, f"{key}.use")
            if name in defs.groups:
                self.check_keys(entry, GROUP_USE_KEYS, shown, key, "a step that uses a group")
                gvars = self.string_table(entry.get("vars", {}), shown, f"{key}.vars")
                for j, gstep in enumerate(defs.groups[name][0]):
                    origin = f"{shown} {key} (use = {name}, its step {j})"
                    table = _substitute_group_vars(copy.deepcopy(gstep), gvars, shown, key, name)
                    _normalize_kind(table)
                    if "use" in table:
                        inner = self.string(table["use"], shown, f"{key}.use")
                        if inner in defs.groups:
                            raise SimError(
                                shown,
                                f"{key}.use",
                                f"group {name!r} uses group {inner!r}; groups do not nest",
                            )
                        table = self.use_template(table, inner, defs, shown, key, name)
                        out.append(_Raw(table, key, f"{origin} (use = {inner})", True))
                    else:
                        out.append(_Raw(table, key, origin, False))
            elif name in defs.templates:
                self.check_keys(entry, USE_KEYS, shown, key, "a step that uses a template")
                table = self.use_template(entry, name, defs, shown, key)
                out.append(_Raw(table, key, f"{shown} {key} (use = {name})", True))
            else:
                raise SimError(
                    shown,
                    f"{key}.use",
                    f"no step template or group named {name!r} (templates: "
                    f"{', '.join(sorted(defs.templates)) or 'none'}; groups: "
                    f"{', '.join(sorted(defs.groups)) or 'none'})",
                )
        return out

    def use_template(
        self,
        call: dict[str, Any],
        name: str,
        defs: _Defs,
        shown: str,
        key: str,
        group: str | None = None,
    ) -> dict[str, Any]:
        """The template's table with the call site's fields laid on top (SIM-FORMAT)."""
        if name not in defs.templates:
            where = f"group {group!r} uses" if group else "uses"
            raise SimError(shown, f"{key}.use", f"{where} no step template named {name!r}")
        tpl = copy.deepcopy(defs.templates[name][0])
        _normalize_kind(tpl)
        for k in ("id", "device", "timeout"):
            if k in call:
                tpl[k] = call[k]
        if "env" in call:
            env = self.table(tpl.get("env", {}), shown, f"{key}.env")
            tpl["env"] = {**env, **self.table(call["env"], shown, f"{key}.env")}
        # cmd + the template's own args + the call site's args.
        cmd = tpl.get("cmd", [])
        targs = tpl.pop("args", [])
        cargs = call.get("args", [])
        for k, v in (("cmd", cmd), ("args", targs), ("args", cargs)):
            self.strings(v, shown, f"{key}.{k}")
        if "cmd" in tpl or cargs or targs:
            tpl["cmd"] = [*cmd, *targs, *cargs]
        if "captures" in call:
            caps = self.table(tpl.get("captures", {}), shown, f"{key}.captures")
            tpl["captures"] = {**caps, **self.table(call["captures"], shown, f"{key}.captures")}
        if "requires" in call:
            before = self.strings(tpl.get("requires", []), shown, f"{key}.requires")
            added = self.strings(call["requires"], shown, f"{key}.requires")
            tpl["requires"] = before + [r for r in added if r not in before]
        if "results" in call:
            tpl["results"] = call["results"]
        return tpl

    def make_step(self, raw: _Raw, shown: str) -> model.Step:
        t, key = raw.table, raw.key
        action_text = t.get("action", t.get("kind"))
        if action_text is None:
            if "cmd" not in t:
                raise SimError(shown, f"{key}.action", 'missing; add action = "run" (or another)')
            action_text = "run"
        action_text = ACTION_ALIASES.get(action_text, action_text)
        try:
            action = model.Action(action_text)
        except ValueError:
            names = [a.value for a in model.Action] + list(ACTION_ALIASES)
            raise SimError(
                shown,
                f"{key}.action",
                f"unknown action {action_text!r}; use one of {', '.join(names)}"
                + _did_you_mean(str(action_text), frozenset(names)),
            ) from None
        allowed = _COMMON_STEP_KEYS | ACTION_KEYS[action]
        for k in t:
            if k not in allowed and k in STEP_KEYS:
                self.unknown(shown, f"{key}.{k}", f"{k!r} does not apply to a {action.value} step")
        step = model.Step(index=0, action=action, origin=raw.origin)
        step.id = self.opt_string(t, "id", shown, key)
        step.device = self.opt_string(t, "device", shown, key)
        step.env = self.string_table(t.get("env", {}), shown, f"{key}.env")
        step.requires = self.strings(t.get("requires", []), shown, f"{key}.requires")
        if "timeout" in t:
            step.timeout = self.duration(t["timeout"], shown, f"{key}.timeout")
        elif action is A.WAIT_FOR:
            step.timeout = WAIT_FOR_TIMEOUT_S

        def need(name: str) -> Any:
            if name not in t:
                raise SimError(shown, f"{key}.{name}", f"missing: a {action.value} step needs it")
            return t[name]

        if action in (A.RUN, A.SPAWN):
            step.cmd = self.strings(need("cmd"), shown, f"{key}.cmd")
            if not raw.template and "args" in t:
                step.cmd += self.strings(t["args"], shown, f"{key}.args")
            if not step.cmd:
                raise SimError(shown, f"{key}.cmd", "is empty; give the program and its arguments")
            parser = t.get("parser", "text")
            try:
                step.parser = model.Parser(parser)
            except ValueError:
                raise SimError(
                    shown, f"{key}.parser", f"unknown parser {parser!r}; use text, ndjson or json"
                ) from None
            caps = self.table(t.get("captures", {}), shown, f"{key}.captures")
            step.captures = {
                n: self.capture(n, c, shown, f"{key}.captures.{n}") for n, c in caps.items()
            }
            step.results = self.results(t.get("results", {}), shown, f"{key}.results")
            if "ready_after" in t:
                step.ready_after = self.duration(t["ready_after"], shown, f"{key}.ready_after")
        if action in (A.SPAWN, A.WAIT_FOR, A.GEN_CERTS, A.GEN_FILE) and not step.id:
            raise SimError(shown, f"{key}.id", f"missing: a {action.value} step needs an id")
        if action in DEVICE_ACTIONS and not step.device:
            raise SimError(shown, f"{key}.device", f"missing: a {action.value} step needs a device")
        if action is A.WAIT:
            step.duration = self.duration(need("duration"), shown, f"{key}.duration")
        elif action is A.SET_LINK_CONDITION:
            step.interface = self.opt_string(t, "interface", shown, key)
            cond = t.get("condition", t.get("impair"))
            ckey = f"{key}.{'condition' if 'condition' in t else 'impair'}"
            step.condition = None if cond is None else self._condition(cond, shown, ckey)
        elif action in (A.LINK_DOWN, A.LINK_UP):
            step.interface = self.string(need("interface"), shown, f"{key}.interface")
        elif action is A.SET_DEFAULT_ROUTE:
            step.to = self.string(need("to"), shown, f"{key}.to")
        elif action is A.GEN_CERTS:
            step.cn = self.opt_string(t, "cn", shown, key) or "patchbay"
            step.san = self.strings(t.get("san", []), shown, f"{key}.san")
        elif action is A.GEN_FILE:
            step.content = self.string(need("content"), shown, f"{key}.content")
        elif action is A.ASSERT:
            checks = []
            if "check" in t:
                checks.append(self.string(t["check"], shown, f"{key}.check"))
            checks += self.strings(t.get("checks", []), shown, f"{key}.checks")
            if not checks:
                raise SimError(shown, f"{key}.checks", "missing: an assert step needs check(s)")
            for c in checks:
                if split_check(c) is None:
                    raise SimError(
                        shown,
                        f"{key}.checks",
                        f"{c!r} has no operator; write 'step.capture OP value' with OP one of "
                        "==, !=, contains, matches, >=",
                    )
            step.checks = checks
        if raw.template:
            # In a template's results, `.cap` means `<id>.cap` (the runner's shorthand).
            step.results = {
                k: f"{step.key}{v}" if v.startswith(".") and "." not in v[1:] else v
                for k, v in step.results.items()
            }
        return step

    def capture(self, name: str, value: Any, path: str, key: str) -> model.Capture:
        table = self.table(value, path, key)
        self.check_keys(table, CAPTURE_KEYS, path, key, "a capture")
        pipe = table.get("pipe", "stdout")
        if pipe not in ("stdout", "stderr"):
            raise SimError(path, f"{key}.pipe", f"must be stdout or stderr, got {pipe!r}")
        regex = self.opt_string(table, "regex", path, key)
        if regex is not None:
            try:
                re.compile(regex)
            except re.error as exc:
                raise SimError(path, f"{key}.regex", f"bad regex {regex!r}: {exc}") from None
        match = None
        if "match" in table:
            match = dict(self.table(table["match"], path, f"{key}.match"))
        return model.Capture(
            name=name,
            pipe=pipe,
            regex=regex,
            match=match,
            pick=self.opt_string(table, "pick", path, key),
        )

    def results(self, value: Any, path: str, key: str) -> dict[str, str]:
        table = self.table(value, path, key)
        self.check_keys(table, RESULT_KEYS, path, key, "[step.results]")
        return {
            k: self.string(v, path, _join(key, k)) for k, v in table.items() if k in RESULT_KEYS
        }


_BINARY_STRINGS = ("path", "url", "repo", "commit", "example", "bin")


def _tname(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _normalize_kind(table: dict[str, Any]) -> None:
    # `kind` is accepted as the alias of `action` (templates and groups use it).
    if "action" not in table and "kind" in table:
        table["action"] = table["kind"]
    table.pop("kind", None)


def _substitute_group_vars(value: Any, gvars: dict[str, str], path: str, key: str, group: str):
    """`${group.k}` replaced in every string; other `${...}` stay for run time."""
    if isinstance(value, str):

        def repl(m: re.Match[str]) -> str:
            if m[1] not in gvars:
                have = ", ".join(sorted(gvars)) or "none"
                raise SimError(
                    path,
                    f"{key}.vars",
                    f"group {group!r} uses ${{group.{m[1]}}} but vars has no {m[1]!r} "
                    f"(given: {have})",
                )
            return gvars[m[1]]

        return _GROUP_VAR_RE.sub(repl, value)
    if isinstance(value, list):
        return [_substitute_group_vars(v, gvars, path, key, group) for v in value]
    if isinstance(value, dict):
        return {k: _substitute_group_vars(v, gvars, path, key, group) for k, v in value.items()}
    return value


def _expand_counts(steps: list[model.Step], keys: list[str], counts: dict[str, int]):
    """Copy steps aimed at a counted device once per instance (RUNNER-FACTS 4)."""
    out_steps: list[model.Step] = []
    out_keys: list[str] = []
    for step, key in zip(steps, keys, strict=True):
        n = counts.get(step.device or "")
        if n is not None:
            for i in range(n):
                old_key = step.key
                copy_ = dataclasses.replace(
                    step,
                    device=f"{step.device}-{i}",
                    id=f"{step.id}-{i}" if step.id else None,
                    env=dict(step.env),
                    captures=dict(step.captures),
                )
                # Do better than the Rust runner: results naming the step's own
                # captures follow the instance's new key.
                copy_.results = {
                    k: f"{copy_.key}.{v[len(old_key) + 1 :]}" if v.startswith(old_key + ".") else v
                    for k, v in step.results.items()
                }
                out_steps.append(copy_)
                out_keys.append(key)
            continue
        if step.action is A.WAIT_FOR and step.id in counts:
            for i in range(counts[step.id]):
                out_steps.append(dataclasses.replace(step, id=f"{step.id}-{i}"))
                out_keys.append(key)
            continue
        if step.action is A.ASSERT:
            checks = []
            for check in step.checks:
                lhs = (split_check(check) or (check, "", ""))[0]
                prefix = lhs.split(".", 1)[0] if "." in lhs else None
                if prefix in counts:
                    checks += [
                        check.replace(f"{prefix}.", f"{prefix}-{i}.", 1)
                        for i in range(counts[prefix])
                    ]
                else:
                    checks.append(check)
            step = dataclasses.replace(step, checks=checks)
        out_steps.append(step)
        out_keys.append(key)
    return out_steps, out_keys


def _validate_steps(
    steps: list[model.Step],
    keys: list[str],
    topology: model.Topology,
    binaries: set[str],
    path: str,
) -> None:
    devices = {d.name: d for d in topology.devices}
    routers = {r.name for r in topology.routers}
    defined: set[str] = set()
    for s in steps:
        if s.action in (A.RUN, A.SPAWN):
            defined |= {f"{s.key}.{c}" for c in s.captures}
        elif s.action is A.GEN_CERTS:
            defined |= {f"{s.id}.cert_pem_path", f"{s.id}.key_pem_path"}
        elif s.action is A.GEN_FILE:
            defined.add(f"{s.id}.path")
    spawned: set[str] = set()

    def from_(s: model.Step) -> str:
        # The origin's "(use = NAME, its step J)" part: where a template/group step came from.
        via = s.origin.rpartition("] ")[2] if s.origin.endswith(")") else ""
        return f" {via}" if via.startswith("(") else ""

    def need_capture(ref: str, s: model.Step, key: str, how: str) -> None:
        if ref not in defined:
            raise SimError(
                path,
                key,
                f"{how} {ref!r}, but no step defines that capture{from_(s)}; "
                "captures are <step id>.<name> of a run/spawn step's [captures], "
                "<id>.cert_pem_path/.key_pem_path of gen-certs, <id>.path of gen-file",
            )

    for s, key in zip(steps, keys, strict=True):
        if s.device is not None and (s.action in DEVICE_ACTIONS or s.device):
            dev = devices.get(s.device)
            if dev is None:
                known = ", ".join(devices) or "none"
                why = (
                    f"{s.device!r} is a router; steps run on devices"
                    if s.device in routers
                    else f"names no device: {s.device!r}"
                )
                raise SimError(path, f"{key}.device", f"{why} (devices: {known}){from_(s)}")
            ifnames = [i.name for i in dev.interfaces]
            for field_name in ("interface", "to"):
                iface = getattr(s, field_name)
                if iface is not None and iface not in ifnames:
                    raise SimError(
                        path,
                        f"{key}.{field_name}",
                        f"{s.device} has no interface {iface!r} (has {', '.join(ifnames)})",
                    )
        if s.action is A.WAIT_FOR and s.id not in spawned:
            raise SimError(
                path,
                f"{key}.id",
                f"no earlier spawn step has id {s.id!r} (spawned so far: "
                f"{', '.join(sorted(spawned)) or 'none'}){from_(s)}",
            )
        if s.action is A.SPAWN:
            spawned.add(s.id or "")
        for r in s.requires:
            need_capture(r, s, f"{key}.requires", "requires")
        for field_name, ref in s.results.items():
            need_capture(ref, s, f"{key}.results.{field_name}", "names")
        for check in s.checks:
            need_capture((split_check(check) or (check,))[0], s, f"{key}.checks", "checks")
        texts = [("cmd", t) for t in s.cmd] + [(f"env.{k}", v) for k, v in s.env.items()]
        texts += [("content", s.content)] + [("san", t) for t in s.san]
        for where, text in texts:
            for m in _BRACE_RE.finditer(text):
                ref = m[1]
                if ref.startswith("binary."):
                    if ref[len("binary.") :] not in binaries:
                        raise SimError(
                            path,
                            f"{key}.{where}",
                            f"${{{ref}}} names no declared binary (declared: "
                            f"{', '.join(sorted(binaries)) or 'none'}){from_(s)}",
                        )
                elif "." in ref:
                    need_capture(ref, s, f"{key}.{where}", f"uses ${{{ref}}}: capture")


# ── public functions ────────────────────────────────────────────────────────


def load_sim(path: Path | str, *, strict: bool, extra_binaries: tuple[str, ...] = ()) -> model.Sim:
    """Read, expand and check one sim file. `extra_binaries`: names given on the command
    line (`--binary`) that `${binary.NAME}` may use without a `[[binary]]` entry."""
    sim_path = Path(path).resolve()
    shown = show_path(sim_path)
    reader = _Reader(strict)
    data, defs = reader.collect(sim_path, (), full=True)
    sim_table = data.get("sim", {})
    name = sim_table.get("name") or sim_path.stem
    reader.string(name, shown, "sim.name")
    topology, topology_ref, counts = reader.topology(data, sim_path, shown)
    raws = reader.expand(data, shown, defs)
    steps = [reader.make_step(raw, shown) for raw in raws]
    steps, keys = _expand_counts(steps, [r.key for r in raws], counts)
    for i, step in enumerate(steps):
        step.index = i
    _validate_steps(steps, keys, topology, set(defs.binaries) | set(extra_binaries), shown)
    return model.Sim(
        name=name,
        path=str(path),
        topology=topology,
        topology_ref=topology_ref,
        binaries=defs.binaries,
        prepare=defs.prepare,
        steps=steps,
        warnings=reader.warnings,
    )


def binaries_of(path: Path | str) -> dict[str, model.Binary]:
    """The binaries one sim sees: extends (recursively, in order), `[sim] binaries`, then
    its own `[[binary]]` entries, later ones winning by name. Reads nothing else."""
    return _Reader(strict=False).collect(Path(path).resolve(), (), full=False)[1].binaries


# ── the plan ────────────────────────────────────────────────────────────────


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


def _step_detail(s: model.Step) -> str:
    if s.action in (A.RUN, A.SPAWN):
        extra = f" ready_after={s.ready_after:g}s" if s.ready_after else ""
        return f"cmd: {shlex.join(s.cmd)}{extra}"
    if s.action is A.WAIT:
        return f"duration={s.duration:g}s"
    if s.action is A.WAIT_FOR:
        return f"timeout={s.timeout:g}s"
    if s.action is A.SET_LINK_CONDITION:
        iface = s.interface or "(current default)"
        return f"interface={iface} condition={describe_condition(s.condition)}"
    if s.action in (A.LINK_DOWN, A.LINK_UP):
        return f"interface={s.interface}"
    if s.action is A.SET_DEFAULT_ROUTE:
        return f"to={s.to}"
    if s.action is A.GEN_CERTS:
        return f"cn={s.cn}" + (f" san={','.join(s.san)}" if s.san else "")
    if s.action is A.GEN_FILE:
        return f"content: {len(s.content)} chars"
    if s.action is A.ASSERT:
        return "checks: " + "; ".join(s.checks)
    return ""


def plan_text(sim: model.Sim) -> str:
    """The expanded plan that `sim.check` prints: topology, binaries, one line a step."""
    topo = sim.topology
    lines = [f"sim {sim.name}  ({show_path(sim.path)})"]
    lines.append(
        f"topology: {sim.topology_ref} (topos/{sim.topology_ref}.toml)"
        if sim.topology_ref
        else "topology: inline"
    )
    lines.append(f"routers ({len(topo.routers)}):")
    for r in topo.routers:
        bits = [f"nat={r.nat.value if r.nat else 'none'}", f"upstream={r.upstream or 'ix'}"]
        if r.region:
            bits.append(f"region={r.region}")
        if r.ip_support is not model.IpSupport.V4_ONLY:
            bits.append(f"ip={r.ip_support.value}")
        lines.append(f"  {r.name}  " + "  ".join(bits))
    lines.append(f"devices ({len(topo.devices)}):")
    for d in topo.devices:
        lines.append(f"  {d.name}  default_via={d.default_via}")
        for i in d.interfaces:
            impair = f"  impair={describe_condition(i.impair)}" if i.impair else ""
            lines.append(f"    {i.name} -> {i.gateway}{impair}")
    if topo.regions:
        lines.append("regions:")
        for name, lat in sorted(topo.regions.items()):
            pairs = ", ".join(f"{k}={v:g}ms" for k, v in sorted(lat.items()))
            lines.append(f"  {name}: {pairs or '-'}")
    lines.append(f"binaries ({len(sim.binaries)}):")
    for b in sim.binaries.values():
        src = [
            f"{k}={v}"
            for k, v in (
                ("path", b.path),
                ("url", b.url),
                ("repo", b.repo),
                ("commit", b.commit if b.repo else None),
                ("example", b.example),
                ("bin", b.bin),
            )
            if v
        ]
        if b.features:
            src.append(f"features={','.join(b.features)}")
        if b.all_features:
            src.append("all-features")
        lines.append(f"  {b.name}  {b.mode}  {' '.join(src)}  ({show_path(b.origin)})")
    lines.append(f"steps ({len(sim.steps)}):")
    width = len(str(max(len(sim.steps) - 1, 0)))
    for s in sim.steps:
        who = " ".join(x for x in (f"id={s.id}" if s.id else "", s.device and f"@{s.device}") if x)
        lines.append(f"  {s.index:>{width}}  {s.action.value}  {who}  {_step_detail(s)}".rstrip())
    for w in sim.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = [
    "PRESETS",
    "SimError",
    "binaries_of",
    "infer_binary_mode",
    "load_sim",
    "parse_condition",
    "plan_text",
    "read_toml",
    "show_path",
    "split_check",
]
