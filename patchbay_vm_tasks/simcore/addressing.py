"""The address plan of a lab: who gets which address, in which order (RUNNER-FACTS section 1).

Pure: from a `model.Topology` and a namespace prefix, `plan_lab` returns a `LabPlan` with
every namespace, interface, address and route the builtin runner creates, so that the
same topology always gets the Rust runner's addresses.

IPv4 (as the Rust runner):
- IX `198.18.0.0/24`, gateway `198.18.0.1` in the lab root namespace.
- Routers in topological batches (routers without `upstream` first), by name within a
  batch. An IX router's uplink `ix` takes `198.18.0.10`, `.11`, ...; a router with
  `upstream = X` gets uplink `wan` with the next host address on X's LAN.
- LANs: public routers `198.18.N.0/24`, NAT routers `10.0.N.0/24` (separate counters,
  N from 1), gateway `.1`, hosts from `.2` (sub-router uplinks first, then devices by
  name, interfaces by name).

IPv6 (dual-stack / v6-only routers; the Rust library's pools, as its `Lab` allocates them):
- IX `2001:db8::/64`, gateway `2001:db8::1`; v6 IX routers take `2001:db8::10`, `::11`,
  ... (hex host part, its own counter: v4-only routers do not consume one).
- LANs: public `2001:db8:1:N::/64`, NAT `fd10:0:N::/64` (own counters, v6 routers only),
  gateway `::1`, hosts from `::2` with a per-LAN counter of their own.
- A device interface gets the address families of its router.

Environment: `NETSIM_IP_<DEV>` (default interface) and `NETSIM_IP_<DEV>_<IFACE>` hold the
IPv4 address, or the IPv6 one on a v6-only LAN; dual-stack devices also get
`NETSIM_IP6_<DEV>` with the IPv6 address of the default interface.

Routes beyond the Rust runner (do better, addresses unchanged): a public router behind
another router is reachable: its first upstream gets a route to its LAN via its uplink
address, and so on up while the upstreams are public, up to the lab root.

Regions: delay applies between IX-attached ("top") routers, where traffic crosses the IX.
A router behind another one is placed in its top router's region for this purpose.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from . import model

IX_CIDR = "198.18.0.0/24"
IX_GW = "198.18.0.1"
IX_CIDR_V6 = "2001:db8::/64"
IX_GW_V6 = "2001:db8::1"
IX_FIRST_HOST = 10
IX_FIRST_HOST_V6 = 0x10
IX_BRIDGE = "br-ix"
LAN_BRIDGE = "br-lan"
ROOT_NODE = "ix"  # the lab root namespace is f"{prefix}-ix"


class PlanError(ValueError):
    """A topology that cannot be laid out (unknown upstream, cycle, name clash, pool full)."""


@dataclass(frozen=True)
class IfacePlan:
    device: str
    name: str  # the interface name inside the device namespace
    router: str
    peer: str  # the veth end in the router namespace, enslaved to its LAN bridge
    ip: str | None  # IPv4 address, no prefix length
    ip_v6: str | None
    gateway: str | None  # the router's LAN gateway
    gateway_v6: str | None
    prefix_len: int = 24
    prefix_len_v6: int = 64
    impair: model.LinkCondition | None = None


@dataclass(frozen=True)
class DevicePlan:
    name: str
    ns: str
    default_via: str
    interfaces: tuple[IfacePlan, ...]

    def iface(self, name: str) -> IfacePlan:
        for i in self.interfaces:
            if i.name == name:
                return i
        raise KeyError(f"device {self.name!r} has no interface {name!r}")


@dataclass(frozen=True)
class RouterPlan:
    name: str
    ns: str
    index: int  # position in build order
    nat: model.Nat | None
    nat_v6: str | None
    upstream: str | None
    region: str | None  # as declared
    top: str  # the IX-attached router this one hangs under (itself when on the IX)
    ip_support: model.IpSupport
    uplink: str  # "ix" or "wan"
    uplink_peer: str  # the veth end in the upstream's namespace (lab root or upstream router)
    uplink_ip: str | None
    uplink_ip_v6: str | None
    uplink_gw: str | None
    uplink_gw_v6: str | None
    downstream_cidr: str | None
    downstream_gw: str | None
    downstream_cidr_v6: str | None
    downstream_gw_v6: str | None
    devices: tuple[str, ...] = ()  # devices with an interface on this router's LAN
    routes: tuple[tuple[str, str], ...] = ()  # (cidr, via) for public routers behind this one

    @property
    def has_v4(self) -> bool:
        return self.ip_support is not model.IpSupport.V6_ONLY

    @property
    def has_v6(self) -> bool:
        return self.ip_support is not model.IpSupport.V4_ONLY

    @property
    def public(self) -> bool:
        return self.nat is None


@dataclass(frozen=True)
class RegionLink:
    """Added one-way delays between two top routers of different regions (a < b by name)."""

    a: str
    b: str
    region_a: str
    region_b: str
    delay_ab_ms: float
    delay_ba_ms: float


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    root_ns: str
    routers: tuple[RouterPlan, ...]  # build order
    devices: tuple[DevicePlan, ...]  # build order (by name, counts expanded in place)
    root_routes: tuple[tuple[str, str], ...]  # (cidr, via) in the lab root namespace
    region_links: tuple[RegionLink, ...]
    regions: dict[str, dict[str, float]]
    env: dict[str, str] = field(default_factory=dict)
    ix_bridge: str = IX_BRIDGE
    ix_cidr: str = IX_CIDR
    ix_gw: str = IX_GW
    ix_cidr_v6: str = IX_CIDR_V6
    ix_gw_v6: str = IX_GW_V6

    def router(self, name: str) -> RouterPlan:
        for r in self.routers:
            if r.name == name:
                return r
        raise KeyError(f"no router {name!r}")

    def device(self, name: str) -> DevicePlan:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(f"no device {name!r}")

    @property
    def namespaces(self) -> tuple[str, ...]:
        """Every namespace of the lab, lab root first."""
        return (
            self.root_ns,
            *(r.ns for r in self.routers),
            *(d.ns for d in self.devices),
        )

    def destinations(self, router: str, v6: bool = False) -> tuple[str, ...]:
        """Addresses behind top router `router` as seen from the IX: its uplink address
        and the LANs of the public routers reachable through it (CIDR strings)."""
        r = self.router(router)
        out: list[str] = []
        ip = r.uplink_ip_v6 if v6 else r.uplink_ip
        if ip:
            out.append(f"{ip}/{128 if v6 else 32}")
        reachable = {cidr for cidr, _ in self.root_routes}
        for sub in self.routers:
            if sub.top != router:
                continue
            cidr = sub.downstream_cidr_v6 if v6 else sub.downstream_cidr
            if cidr and cidr in reachable:
                out.append(cidr)
        return tuple(out)


def env_key(name: str) -> str:
    """`NETSIM_IP_` suffix of a name: upper-cased, non-alphanumerics as `_`."""
    return re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def build_order(routers: tuple[model.Router, ...]) -> list[model.Router]:
    """Topological batches (no upstream first), sorted by name within each batch.

    A router's batch is its depth: the number of upstream hops to the IX (a router is
    placed as soon as its upstream is). Each router's depth is found once, so the order
    costs n log n, where placing batch after batch rescanned every router (quadratic)."""
    by_name: dict[str, model.Router] = {}
    for r in routers:
        if r.name in by_name:
            raise PlanError(f"router {r.name!r} declared twice")
        by_name[r.name] = r
    for r in routers:
        if r.upstream is not None and r.upstream not in by_name:
            raise PlanError(f"router {r.name!r}: upstream {r.upstream!r} is not a router")
    depth: dict[str, int] = {}
    for r in by_name.values():
        chain: list[str] = []
        on_chain: set[str] = set()
        cur: str | None = r.name
        while cur is not None and cur not in depth:
            if cur in on_chain:
                left = sorted(set(by_name) - set(depth))
                raise PlanError(f"routers {left} form an upstream cycle")
            chain.append(cur)
            on_chain.add(cur)
            cur = by_name[cur].upstream
        base = -1 if cur is None else depth[cur]
        for offset, name in enumerate(reversed(chain), start=1):
            depth[name] = base + offset
    return sorted(by_name.values(), key=lambda r: (depth[r.name], r.name))


class _Lan:
    """Host allocation on one router LAN (v4 and v6 counters are separate, as in Rust)."""

    def __init__(self, owner: str, cidr: str | None, cidr_v6: str | None) -> None:
        self.owner = owner
        self.net = ipaddress.ip_network(cidr) if cidr else None
        self.net6 = ipaddress.ip_network(cidr_v6) if cidr_v6 else None
        self.next = 2
        self.next6 = 2

    def take(self, v4: bool, v6: bool) -> tuple[str | None, str | None]:
        ip = ip6 = None
        if v4 and self.net is not None:
            if self.next >= self.net.num_addresses - 1:
                raise PlanError(f"LAN of router {self.owner!r} ({self.net}) is full")
            ip = str(self.net.network_address + self.next)
            self.next += 1
        if v6 and self.net6 is not None:
            ip6 = str(self.net6.network_address + self.next6)
            self.next6 += 1
        return ip, ip6


def _region_delay(regions: dict[str, dict[str, float]], src: str, dst: str) -> float:
    """One-way delay src -> dst: src's own entry first, else dst's entry for src."""
    if src == dst:
        return 0.0
    if dst in regions.get(src, {}):
        return float(regions[src][dst])
    return float(regions.get(dst, {}).get(src, 0.0))


def plan_lab(topology: model.Topology, prefix: str) -> LabPlan:
    """Lay out `topology` with namespaces named `{prefix}-{node}` (RUNNER-FACTS section 1)."""
    routers = build_order(topology.routers)
    root_ns = f"{prefix}-{ROOT_NODE}"
    _check_names(routers, topology.devices, prefix, root_ns)

    ix_next, ix_next6 = IX_FIRST_HOST, IX_FIRST_HOST_V6
    public_n = private_n = public6_n = private6_n = 1
    ix_net = ipaddress.ip_network(IX_CIDR)
    ix_net6 = ipaddress.ip_network(IX_CIDR_V6)
    lans: dict[str, _Lan] = {}
    planned: dict[str, dict] = {}

    for index, r in enumerate(routers):
        if r.nat_v6 in ("nat64", "nptv6"):
            raise PlanError(f"router {r.name!r}: nat_v6 = {r.nat_v6!r} is not supported yet")
        has_v4 = r.ip_support is not model.IpSupport.V6_ONLY
        has_v6 = r.ip_support is not model.IpSupport.V4_ONLY
        if r.upstream is None:
            ip = ip6 = None
            if has_v4:
                if ix_next > 254:
                    raise PlanError("IX address pool exhausted")
                ip = str(ix_net.network_address + ix_next)
                ix_next += 1
            if has_v6:
                ip6 = str(ix_net6.network_address + ix_next6)
                ix_next6 += 1
            gw, gw6 = (IX_GW if has_v4 else None), (IX_GW_V6 if has_v6 else None)
            uplink, top = "ix", r.name
        else:
            up = lans[r.upstream]
            ip, ip6 = up.take(has_v4, has_v6)
            if has_v4 and ip is None:
                raise PlanError(f"router {r.name!r} needs IPv4 but {r.upstream!r} has none")
            if has_v6 and ip6 is None:
                raise PlanError(f"router {r.name!r} needs IPv6 but {r.upstream!r} has none")
            gw = str(up.net.network_address + 1) if ip else None
            gw6 = str(up.net6.network_address + 1) if ip6 else None
            uplink, top = "wan", planned[r.upstream]["top"]
        cidr = cidr6 = None
        if has_v4:
            if r.nat is None:
                cidr, public_n = f"198.18.{public_n}.0/24", public_n + 1
            else:
                cidr, private_n = f"10.0.{private_n}.0/24", private_n + 1
            if public_n > 255 or private_n > 256:
                raise PlanError("LAN address pool exhausted")
        if has_v6:
            if r.nat is None:
                cidr6, public6_n = f"2001:db8:1:{public6_n:x}::/64", public6_n + 1
            else:
                cidr6, private6_n = f"fd10:0:{private6_n:x}::/64", private6_n + 1
        lans[r.name] = _Lan(r.name, cidr, cidr6)
        planned[r.name] = dict(
            name=r.name,
            ns=f"{prefix}-{r.name}",
            index=index,
            nat=r.nat,
            nat_v6=r.nat_v6,
            upstream=r.upstream,
            region=r.region,
            top=top,
            ip_support=r.ip_support,
            uplink=uplink,
            uplink_peer=f"r{index}u",
            uplink_ip=ip,
            uplink_ip_v6=ip6,
            uplink_gw=gw,
            uplink_gw_v6=gw6,
            downstream_cidr=cidr,
            downstream_gw=_host(cidr, 1),
            downstream_cidr_v6=cidr6,
            downstream_gw_v6=_host(cidr6, 1),
        )

    devices: list[DevicePlan] = []
    on_router: dict[str, list[str]] = {r.name: [] for r in routers}
    peer_n = 0
    for d in topology.devices:
        if not d.interfaces:
            raise PlanError(f"device {d.name!r} has no interface")
        names = [i.name for i in d.interfaces]
        if d.default_via not in names:
            raise PlanError(
                f"device {d.name!r}: default_via {d.default_via!r} is not one of {names}"
            )
        ifaces = []
        for i in d.interfaces:
            if i.gateway not in lans:
                raise PlanError(
                    f"device {d.name!r}.{i.name}: gateway {i.gateway!r} is not a router"
                )
            if len(i.name) > 15:
                raise PlanError(f"device {d.name!r}: interface name {i.name!r} is over 15 chars")
            rp = planned[i.gateway]
            ip, ip6 = lans[i.gateway].take(True, True)
            ifaces.append(
                IfacePlan(
                    device=d.name,
                    name=i.name,
                    router=i.gateway,
                    peer=f"d{peer_n}",
                    ip=ip,
                    ip_v6=ip6,
                    gateway=rp["downstream_gw"] if ip else None,
                    gateway_v6=rp["downstream_gw_v6"] if ip6 else None,
                    impair=i.impair,
                )
            )
            peer_n += 1
            if d.name not in on_router[i.gateway]:
                on_router[i.gateway].append(d.name)
        devices.append(DevicePlan(d.name, f"{prefix}-{d.name}", d.default_via, tuple(ifaces)))

    root_routes, extra = _public_routes(routers, planned)
    router_plans = tuple(
        RouterPlan(
            **planned[r.name],
            devices=tuple(on_router[r.name]),
            routes=tuple(extra.get(r.name, ())),
        )
        for r in routers
    )
    plan = LabPlan(
        prefix=prefix,
        root_ns=root_ns,
        routers=router_plans,
        devices=tuple(devices),
        root_routes=tuple(root_routes),
        region_links=_region_links(router_plans, topology.regions),
        regions={k: dict(v) for k, v in topology.regions.items()},
    )
    return _with_env(plan)


def _host(cidr: str | None, n: int) -> str | None:
    return str(ipaddress.ip_network(cidr).network_address + n) if cidr else None


def _check_names(
    routers: list[model.Router], devices: tuple[model.Device, ...], prefix: str, root_ns: str
) -> None:
    seen = {root_ns: "the lab root"}
    for kind, name in [("router", r.name) for r in routers] + [("device", d.name) for d in devices]:
        ns = f"{prefix}-{name}"
        if ns in seen:
            raise PlanError(f"{kind} {name!r} clashes with {seen[ns]} (namespace {ns})")
        seen[ns] = f"{kind} {name!r}"


def _public_routes(
    routers: list[model.Router], planned: dict[str, dict]
) -> tuple[list[tuple[str, str]], dict[str, list[tuple[str, str]]]]:
    """Root return routes for IX-attached public routers (as Rust), plus routes that make
    public routers behind other routers reachable (do better)."""
    root: list[tuple[str, str]] = []
    extra: dict[str, list[tuple[str, str]]] = {}
    for r in routers:
        p = planned[r.name]
        if r.nat is not None:
            continue
        for cidr_key, ip_key in (
            ("downstream_cidr", "uplink_ip"),
            ("downstream_cidr_v6", "uplink_ip_v6"),
        ):
            cidr, via = p[cidr_key], p[ip_key]
            if not cidr or not via:
                continue
            hop = p
            while True:
                if hop["upstream"] is None:
                    root.append((cidr, via))
                    break
                up = planned[hop["upstream"]]
                extra.setdefault(up["name"], []).append((cidr, via))
                if up["nat"] is not None or not up[ip_key]:
                    break  # a NAT upstream hides the LAN behind its own address
                hop, via = up, up[ip_key]
    return root, extra


def _region_links(
    routers: tuple[RouterPlan, ...], regions: dict[str, dict[str, float]]
) -> tuple[RegionLink, ...]:
    tops = sorted((r for r in routers if r.upstream is None and r.region), key=lambda r: r.name)
    links = []
    for i, a in enumerate(tops):
        for b in tops[i + 1 :]:
            if a.region == b.region:
                continue
            ab = _region_delay(regions, a.region, b.region)
            ba = _region_delay(regions, b.region, a.region)
            if ab or ba:
                links.append(RegionLink(a.name, b.name, a.region, b.region, ab, ba))
    return tuple(links)


def region_of_top(plan: LabPlan, router: str) -> str | None:
    """The region used for delays of `router`: its top router's region."""
    return plan.router(plan.router(router).top).region


def _with_env(plan: LabPlan) -> LabPlan:
    env: dict[str, str] = {}
    for d in plan.devices:
        key = env_key(d.name)
        for i in d.interfaces:
            ip = i.ip or i.ip_v6
            if ip:
                env[f"NETSIM_IP_{key}_{env_key(i.name)}"] = ip
            if i.name == d.default_via and ip:
                env[f"NETSIM_IP_{key}"] = ip
            if i.name == d.default_via and i.ip and i.ip_v6:
                env[f"NETSIM_IP6_{key}"] = i.ip_v6
    plan.env.update(env)
    return plan
