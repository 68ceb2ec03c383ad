"""The topology of a sim: routers, devices and their interfaces, regions; inline in the
sim or in a `topos/NAME.toml` file (SIM-FORMAT "Topology", RUNNER-FACTS 1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import model
from .conditions import read_condition
from .format_keys import (
    DEVICE_KEYS,
    IFACE_KEYS,
    REGION_KEYS,
    ROUTER_IGNORED_KEYS,
    ROUTER_KEYS,
    TOPOLOGY_KEYS,
)
from .limits import (
    IFACE_NAME_MAX_LEN,
    MAX_DELAY_MS,
    MAX_DEVICES,
    MAX_INTERFACES,
    MAX_ROUTERS,
    NAME_MAX_LEN,
    RESERVED_IFACE_NAMES,
    check_name,
    shorten,
)
from .tables import TableReader
from .tomlfiles import is_file, places_near, show_path

SimError = model.SimError

NAT_MODES = {"none": None, **{m.value: m for m in model.Nat}}
IP_SUPPORT = {"v4-only": model.IpSupport.V4_ONLY, "dual-stack": model.IpSupport.DUAL_STACK}
NAT_V6_REFUSED = ("nptv6", "masquerade", "nat64")
NOT_YET = "not supported by the builtin runner yet"


def read_topology(
    tr: TableReader, data: dict[str, Any], sim_path: Path, shown: str
) -> tuple[model.Topology, str | None, dict[str, int]]:
    """(topology, its `[sim] topology` name or None, {counted device: count})."""
    ref = data.get("sim", {}).get("topology")
    if ref is None:
        topo, counts = _topology_from(tr, data, shown)
        return topo, None, counts
    ref = check_name(ref, shown, "sim.topology", "topology name")
    inline = sorted(k for k in TOPOLOGY_KEYS if k in data)
    if inline:
        raise SimError(
            shown,
            "sim.topology",
            f"is set to {ref!r}, so inline {', '.join(inline)} tables are not allowed; "
            "keep one of them",
        )
    candidates = places_near(sim_path.parent, Path("topos"))
    for folder in candidates:
        topo_file = folder / f"{ref}.toml"
        if is_file(topo_file):
            topo_shown = show_path(topo_file)
            topo_data = tr.read_file(topo_file, topo_shown, None)
            tr.check_keys(topo_data, TOPOLOGY_KEYS, topo_shown, "", "a topology file")
            topo, counts = _topology_from(tr, topo_data, topo_shown)
            return topo, ref, counts
    looked = ", ".join(str(c) for c in candidates)
    raise SimError(shown, "sim.topology", f"topos/{ref}.toml not found (looked in {looked})")


def _topology_from(
    tr: TableReader, data: dict[str, Any], path: str
) -> tuple[model.Topology, dict[str, int]]:
    routers = _routers(tr, data, path)
    router_names = {r.name for r in routers}
    devices, counts = _devices(tr, data, path, router_names)
    regions = _regions(tr, data, path)
    return model.Topology(tuple(routers), tuple(devices), regions), counts


def _routers(tr: TableReader, data: dict[str, Any], path: str) -> list[model.Router]:
    out: list[model.Router] = []
    by_name: dict[str, model.Router] = {}
    entries = tr.array_of_tables(data, "router", path)
    if len(entries) > MAX_ROUTERS:
        raise SimError(path, "router", f"{len(entries)} routers; at most {MAX_ROUTERS}")
    for i, entry in enumerate(entries):
        name = entry.get("name")
        if name is None or name == "":
            raise SimError(path, f"router[{i}].name", 'a router needs name = "..."')
        check_name(name, path, f"router[{i}].name", "router name")
        key = f"router.{name}"
        if name in by_name:
            raise SimError(path, f"{key}.name", f"two routers are named {name!r}")
        if name.startswith("region_"):
            raise SimError(path, f"{key}.name", "router names starting with region_ are reserved")
        tr.check_keys(entry, ROUTER_KEYS | ROUTER_IGNORED_KEYS, path, key, "[[router]]")
        ignored = sorted(k for k in entry if k in ROUTER_IGNORED_KEYS)
        if ignored:
            tr.warnings.append(
                f"{path}: {key}: {', '.join(ignored)} ignored (IPv6 router advertisements "
                "are not used by the builtin runner)"
            )
        nat_text = entry.get("nat", "none")
        if not isinstance(nat_text, str) or nat_text not in NAT_MODES:
            raise SimError(
                path,
                f"{key}.nat",
                f"unknown NAT mode {shorten(repr(nat_text))}; use one of {', '.join(NAT_MODES)}",
            )
        ip_text = entry.get("ip_support", "v4-only")
        if ip_text == "v6-only":
            raise SimError(path, f"{key}.ip_support", f"v6-only is {NOT_YET}")
        if not isinstance(ip_text, str) or ip_text not in IP_SUPPORT:
            raise SimError(
                path,
                f"{key}.ip_support",
                f"unknown value {shorten(repr(ip_text))}; use v4-only or dual-stack",
            )
        nat_v6 = entry.get("nat_v6", "none")
        if nat_v6 in NAT_V6_REFUSED:
            raise SimError(path, f"{key}.nat_v6", f"nat_v6 = {nat_v6!r} is {NOT_YET}")
        if nat_v6 != "none":
            raise SimError(
                path,
                f"{key}.nat_v6",
                f"unknown value {shorten(repr(nat_v6))}; use none "
                f"({', '.join(NAT_V6_REFUSED)}: {NOT_YET})",
            )
        upstream = tr.opt_string(entry, "upstream", path, key)
        region = entry.get("region")
        if region is not None:
            check_name(region, path, f"{key}.region", "region name")
        router = model.Router(
            name=name,
            nat=NAT_MODES[nat_text],
            upstream=upstream,
            region=region,
            ip_support=IP_SUPPORT[ip_text],
            nat_v6=None,
        )
        out.append(router)
        by_name[name] = router
    for r in out:
        if r.upstream is not None and r.upstream not in by_name:
            known = ", ".join(by_name)
            raise SimError(
                path,
                f"router.{r.name}.upstream",
                f"names no router: {shorten(repr(r.upstream))} (routers: {known})",
            )
    _refuse_cycles(out, by_name, path)
    return out


def _refuse_cycles(routers: list[model.Router], by_name: dict[str, model.Router], path: str):
    """An upstream cycle is a SimError naming it. Each router is walked once: a chain
    already known to reach the IX is not walked again (linear, where a walk from every
    router was cubic: 2,000 chained routers took 10 s)."""
    reaches_ix: set[str] = set()
    for r in routers:
        chain: list[str] = []
        on_chain: set[str] = set()
        cur: str | None = r.name
        while cur is not None and cur not in reaches_ix:
            if cur in on_chain:
                loop = [*chain[chain.index(cur) :], cur]
                raise SimError(
                    path, f"router.{cur}.upstream", f"upstream cycle: {' -> '.join(loop)}"
                )
            chain.append(cur)
            on_chain.add(cur)
            cur = by_name[cur].upstream
        reaches_ix.update(chain)


def _devices(
    tr: TableReader, data: dict[str, Any], path: str, routers: set[str]
) -> tuple[list[model.Device], dict[str, int]]:
    raw = tr.table(data.get("device", {}), path, "device")
    out: list[model.Device] = []
    counts: dict[str, int] = {}
    for name in raw:
        check_name(name, path, "device", "device name")
    for name in sorted(raw):
        key = f"device.{name}"
        table = tr.table(raw[name], path, key, "a table of interfaces ([device.NAME.IFACE])")
        if name in routers:
            raise SimError(path, key, f"{name!r} is a router's name too; rename one")
        # Interfaces are the table-valued keys; the scalars are device settings.
        ifnames = sorted(k for k, v in table.items() if isinstance(v, dict))
        tr.check_keys(
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
        if len(ifnames) > MAX_INTERFACES:
            raise SimError(path, key, f"{len(ifnames)} interfaces; at most {MAX_INTERFACES}")
        ifaces = tuple(_interface(tr, table[n], path, f"{key}.{n}", n, routers) for n in ifnames)
        default_via = table.get("default_via", ifnames[0])
        if not isinstance(default_via, str) or default_via not in ifnames:
            raise SimError(
                path,
                f"{key}.default_via",
                f"names no interface of {name}: {shorten(repr(default_via))} "
                f"(has {', '.join(ifnames)})",
            )
        if "count" in table:
            count = _count(table["count"], name, path, f"{key}.count", MAX_DEVICES - len(out))
            counts[name] = count
            names = [f"{name}-{i}" for i in range(count)]
        else:
            names = [name]
        if len(out) + len(names) > MAX_DEVICES:
            raise SimError(path, key, f"more than {MAX_DEVICES} devices (count expanded)")
        out += [model.Device(n, ifaces, default_via) for n in names]
    seen: set[str] = set()
    for d in out:
        if d.name in seen or d.name in routers:
            raise SimError(path, "device", f"two nodes are named {d.name!r} (count expands)")
        seen.add(d.name)
    return out, counts


def _count(count: Any, name: str, path: str, key: str, room: int) -> int:
    """A device's `count`: whole, at least 1, within the devices left (MAX_DEVICES), and
    short enough that `NAME-(count-1)` is still a name."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SimError(path, key, f"must be a whole number >= 1, got {shorten(repr(count))}")
    if count > room:
        raise SimError(
            path, key, f"{shorten(str(count))} is too many: a sim has at most {MAX_DEVICES} devices"
        )
    longest = f"{name}-{count - 1}"
    if len(longest) > NAME_MAX_LEN:
        raise SimError(
            path, key, f"makes the name {longest!r}, over {NAME_MAX_LEN} characters; shorten it"
        )
    return count


def _interface(
    tr: TableReader, table: dict[str, Any], path: str, key: str, name: str, routers: set[str]
) -> model.Interface:
    check_name(name, path, key, "interface name", IFACE_NAME_MAX_LEN)
    if name in RESERVED_IFACE_NAMES:
        raise SimError(path, key, f"interface name {name!r} is taken (the loopback); rename it")
    tr.check_keys(table, IFACE_KEYS, path, key, "an interface")
    if "gateway" not in table:
        raise SimError(path, f"{key}.gateway", 'missing; add gateway = "ROUTER"')
    gateway = tr.string(table["gateway"], path, f"{key}.gateway")
    if gateway not in routers:
        known = ", ".join(sorted(routers)) or "none declared"
        raise SimError(
            path, f"{key}.gateway", f"names no router: {shorten(repr(gateway))} (routers: {known})"
        )
    impair = None
    if "impair" in table:
        impair = read_condition(tr, table["impair"], path, f"{key}.impair")
    return model.Interface(name, gateway, impair)


def _regions(tr: TableReader, data: dict[str, Any], path: str) -> dict[str, dict[str, float]]:
    raw = tr.table(data.get("region", {}), path, "region")
    out: dict[str, dict[str, float]] = {}
    for name, entry in raw.items():
        check_name(name, path, "region", "region name")
        key = f"region.{name}"
        entry = tr.table(entry, path, key)
        tr.check_keys(entry, REGION_KEYS, path, key, f"[region.{name}]")
        lat = tr.table(entry.get("latencies", {}), path, f"{key}.latencies")
        for other, ms in lat.items():
            check_name(other, path, f"{key}.latencies", "region name")
            if isinstance(ms, bool) or not isinstance(ms, int) or not 0 <= ms <= MAX_DELAY_MS:
                raise SimError(
                    path,
                    f"{key}.latencies.{other}",
                    f"must be whole milliseconds 0..{MAX_DELAY_MS}, got {shorten(repr(ms))}",
                )
        out[name] = {k: float(v) for k, v in lat.items()}
    return out
