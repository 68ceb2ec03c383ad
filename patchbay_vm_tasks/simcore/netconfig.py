"""The commands that build a lab, as text and argv: `ip -batch` lines, sysctls, nftables
rulesets and tc. Pure: nothing here runs anything (`simrunner.lab` does).

Layout (every name below lives inside the lab's own namespaces, never the machine's):
- lab root `{prefix}-ix`: bridge `br-ix` with the IX gateway, one port `r<N>u` per
  IX router, forwarding on, return routes to the public LANs.
- router `{prefix}-<name>`: uplink `ix` (on the IX) or `wan` (port `r<N>u` on the
  upstream's `br-lan`), LAN bridge `br-lan` with the gateway, one port `d<K>` per device
  interface; NAT as nftables in the router's namespace.
- device `{prefix}-<name>`: one veth per interface, named as the interface.
Every veth is created directly inside its two namespaces (`link add ... netns A type veth
peer ... netns B`), so nothing ever appears in the root namespace. Names are unique per lab
and at most 15 characters.

Regions (the Rust runner ignores them; we apply them): the delay between two regions is
added where traffic crosses the IX, on the egress of each top router's `ix` uplink. That
uplink gets a `prio` root qdisc with one band per distinct delay value toward other
regions; band 1 (unclassified: IX gateway, same region, no region, ARP/NDP) has no delay,
each other band holds a `netem delay D` and u32 filters send packets there by destination
(the other top router's uplink address and the public LANs behind it). Router A -> B packets
thus wait delay(A->B) on A's side and B -> A packets delay(B->A) on B's side: one-way delay
holds each way, RTT = delay(A->B) + delay(B->A). Device link conditions sit on the devices'
own interfaces, so both compose.
"""

from __future__ import annotations

from . import model
from .addressing import IX_BRIDGE, LAN_BRIDGE, LabPlan, RegionLink, RouterPlan

# udp, udp_stream, tcp_established seconds per NAT mode (RUNNER-FACTS section 2).
CONNTRACK_TIMEOUTS: dict[model.Nat, tuple[int, int, int]] = {
    model.Nat.HOME: (30, 300, 7200),
    model.Nat.FULL_CONE: (30, 300, 7200),
    model.Nat.CORPORATE: (30, 120, 3600),
    model.Nat.CLOUD_NAT: (30, 350, 3600),
}

FORWARD = "net/ipv4/ip_forward"
FORWARD_V6 = "net/ipv6/conf/all/forwarding"
KEEP_V6_ON_DOWN = "net/ipv6/conf/all/keep_addr_on_down"

PRIO_MAX_BANDS = 16  # kernel limit of the prio qdisc


def root_batch(plan: LabPlan) -> list[str]:
    """`ip -batch` lines run from the caller's namespace: create the lab's namespaces and
    every veth pair directly inside them (nothing is left in the caller's namespace)."""
    lines = [f"netns add {ns}" for ns in plan.namespaces]
    for r in plan.routers:
        upstream_ns = plan.root_ns if r.upstream is None else plan.router(r.upstream).ns
        lines.append(
            f"link add name {r.uplink} netns {r.ns} type veth"
            f" peer name {r.uplink_peer} netns {upstream_ns}"
        )
    for d in plan.devices:
        for i in d.interfaces:
            router_ns = plan.router(i.router).ns
            lines.append(
                f"link add name {i.name} netns {d.ns} type veth"
                f" peer name {i.peer} netns {router_ns}"
            )
    return lines


def delete_batch(namespaces: list[str] | tuple[str, ...]) -> list[str]:
    return [f"netns del {ns}" for ns in namespaces]


def _addr(ip: str, plen: int, dev: str, v6: bool) -> str:
    # nodad: the address is usable at once instead of after duplicate detection (~1-2 s).
    return f"addr add {ip}/{plen} dev {dev}" + (" nodad" if v6 else "")


def namespace_batches(plan: LabPlan) -> dict[str, list[str]]:
    """`ip -n NS -batch` lines per namespace: bridges, addresses, links up, routes."""
    out: dict[str, list[str]] = {}
    root = ["link set lo up", f"link add {IX_BRIDGE} type bridge"]
    root.append(_addr(plan.ix_gw, 24, IX_BRIDGE, False))
    if any(r.has_v6 for r in plan.routers):
        root.append(_addr(plan.ix_gw_v6, 64, IX_BRIDGE, True))
    root.append(f"link set {IX_BRIDGE} up")
    for r in plan.routers:
        if r.upstream is None:
            root.append(f"link set {r.uplink_peer} master {IX_BRIDGE} up")
    for cidr, via in plan.root_routes:
        root.append(f"route add {cidr} via {via}")
    out[plan.root_ns] = root

    for r in plan.routers:
        lines = ["link set lo up", f"link add {LAN_BRIDGE} type bridge"]
        if r.downstream_cidr:
            lines.append(_addr(r.downstream_gw, 24, LAN_BRIDGE, False))
        if r.downstream_cidr_v6:
            lines.append(_addr(r.downstream_gw_v6, 64, LAN_BRIDGE, True))
        lines.append(f"link set {LAN_BRIDGE} up")
        for sub in plan.routers:
            if sub.upstream == r.name:
                lines.append(f"link set {sub.uplink_peer} master {LAN_BRIDGE} up")
        for d in plan.devices:
            for i in d.interfaces:
                if i.router == r.name:
                    lines.append(f"link set {i.peer} master {LAN_BRIDGE} up")
        if r.uplink_ip:
            lines.append(_addr(r.uplink_ip, 24, r.uplink, False))
        if r.uplink_ip_v6:
            lines.append(_addr(r.uplink_ip_v6, 64, r.uplink, True))
        lines.append(f"link set {r.uplink} up")
        if r.uplink_gw:
            lines.append(f"route add default via {r.uplink_gw} dev {r.uplink}")
        if r.uplink_gw_v6:
            lines.append(f"route add default via {r.uplink_gw_v6} dev {r.uplink}")
        for cidr, via in r.routes:
            lines.append(f"route add {cidr} via {via}")
        out[r.ns] = lines

    for d in plan.devices:
        lines = ["link set lo up"]
        for i in d.interfaces:
            if i.ip:
                lines.append(_addr(i.ip, i.prefix_len, i.name, False))
            if i.ip_v6:
                lines.append(_addr(i.ip_v6, i.prefix_len_v6, i.name, True))
            lines.append(f"link set {i.name} up")
        lines.extend(default_route_lines(plan, d.name, d.default_via))
        out[d.ns] = lines
    return out


def default_route_lines(plan: LabPlan, device: str, iface: str) -> list[str]:
    """`ip -batch` lines that point the device's default route(s) at `iface`."""
    i = plan.device(device).iface(iface)
    lines = []
    if i.gateway:
        lines.append(f"route replace default via {i.gateway} dev {i.name}")
    if i.gateway_v6:
        lines.append(f"route replace default via {i.gateway_v6} dev {i.name}")
    return lines


def sysctls(plan: LabPlan) -> dict[str, dict[str, str]]:
    """/proc/sys paths (relative) per namespace, set before NAT rules; conntrack timeouts
    are separate (`conntrack_sysctls`) because they exist only once conntrack is loaded."""
    has_v6 = any(r.has_v6 for r in plan.routers)
    out: dict[str, dict[str, str]] = {plan.root_ns: {FORWARD: "1"}}
    if has_v6:
        out[plan.root_ns][FORWARD_V6] = "1"
    for r in plan.routers:
        s = {FORWARD: "1"}
        if r.has_v6:
            s[FORWARD_V6] = "1"
            s[KEEP_V6_ON_DOWN] = "1"
        out[r.ns] = s
    for d in plan.devices:
        if any(i.ip_v6 for i in d.interfaces):
            # Keep IPv6 addresses over link-down/link-up, as IPv4 keeps them.
            out[d.ns] = {KEEP_V6_ON_DOWN: "1"}
    return out


def conntrack_sysctls(nat: model.Nat | None) -> dict[str, str]:
    if nat not in CONNTRACK_TIMEOUTS:
        return {}
    udp, stream, tcp = CONNTRACK_TIMEOUTS[nat]
    return {
        "net/netfilter/nf_conntrack_udp_timeout": str(udp),
        "net/netfilter/nf_conntrack_udp_timeout_stream": str(stream),
        "net/netfilter/nf_conntrack_tcp_timeout_established": str(tcp),
    }


def nat_ruleset(router: RouterPlan) -> str | None:
    """The nftables ruleset of a router (RUNNER-FACTS section 2), None without NAT."""
    parts = []
    v4 = _nat_v4(router)
    if v4:
        parts.append(v4)
    if router.nat_v6 == "masquerade" and router.uplink_ip_v6:
        parts.append(
            "table ip6 nat {\n"
            "    chain postrouting {\n"
            "        type nat hook postrouting priority 100; policy accept;\n"
            f'        oif "{router.uplink}" masquerade\n'
            "    }\n"
            "}\n"
        )
    return "".join(parts) or None


def _nat_v4(router: RouterPlan) -> str | None:
    nat, wan, wan_ip = router.nat, router.uplink, router.uplink_ip
    if nat is None or wan_ip is None:
        return None
    if nat is model.Nat.CGNAT:
        return (
            "table ip nat {\n"
            "    chain postrouting {\n"
            "        type nat hook postrouting priority 100; policy accept;\n"
            f'        oif "{wan}" masquerade\n'
            "    }\n"
            "}\n"
        )
    eim = nat in (model.Nat.HOME, model.Nat.FULL_CONE)
    hairpin = nat is model.Nat.FULL_CONE
    lines = ["table ip nat {"]
    if eim:
        lines += [
            "    map fullcone {",
            "        type inet_service : ipv4_addr . inet_service",
            "        flags dynamic,timeout",
            "        timeout 300s",
            "        size 65536",
            "    }",
        ]
    lines += [
        "    chain prerouting {",
        "        type nat hook prerouting priority dstnat; policy accept;",
    ]
    if eim:
        match = f"ip daddr {wan_ip}" if hairpin else f'iif "{wan}"'
        lines.append(f"        {match} meta l4proto udp dnat to udp dport map @fullcone")
    lines += [
        "    }",
        "    chain postrouting {",
        f"        type nat hook postrouting priority {'srcnat' if eim else '100'}; policy accept;",
    ]
    if hairpin and router.downstream_cidr:
        # Do better than Rust's bare `ct status dnat masquerade`, which also rewrote the
        # source of every inbound packet to the LAN gateway (peers saw 10.0.N.1, not the
        # sender): masquerade only hairpinned packets, those from the router's own LAN.
        lines.append(f"        ip saddr {router.downstream_cidr} ct status dnat masquerade")
    if eim:
        lines += [
            f'        oif "{wan}" meta l4proto udp update @fullcone'
            " { udp sport timeout 300s : ip saddr . udp sport }",
            f'        oif "{wan}" snat to {wan_ip}',
        ]
    else:
        lines.append(f'        oif "{wan}" masquerade random')
    lines += ["    }", "}"]
    if nat is not model.Nat.FULL_CONE:
        lines += [
            "table ip filter {",
            "    chain forward {",
            "        type filter hook forward priority 0; policy accept;",
            f'        iif "{wan}" ct state established,related accept',
            f'        iif "{wan}" drop',
            "    }",
            "}",
        ]
    return "\n".join(lines) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def netem_args(cond: model.LinkCondition) -> list[str]:
    """netem parameters (Rust's order and formats: delay [jitter], loss, reorder, ...)."""
    args: list[str] = []
    if cond.latency_ms or cond.jitter_ms:
        args += ["delay", f"{_num(cond.latency_ms)}ms"]
        if cond.jitter_ms:
            args.append(f"{_num(cond.jitter_ms)}ms")
    for name, pct in (
        ("loss", cond.loss_pct),
        ("reorder", cond.reorder_pct),
        ("duplicate", cond.duplicate_pct),
        ("corrupt", cond.corrupt_pct),
    ):
        if pct:
            args += [name, f"{pct:.3f}%"]
    return args


def link_condition_argv(
    dev: str, cond: model.LinkCondition | None, replace: bool = True
) -> list[list[str]]:
    """tc argv lists that put `cond` on `dev` (egress), as the Rust runner: delete the root
    qdisc (when `replace`, i.e. one of ours is there), netem as root handle 1:, tbf under
    it when rate > 0. `cond` None only deletes.

    Two differences, same behaviour: a condition with nothing for netem (only a rate) gets
    tbf as the root, and one with nothing at all (`lan`) gets no qdisc; so rate limits and
    `lan` also work on kernels without sch_netem."""
    cmds: list[list[str]] = []
    if replace:
        cmds.append(["tc", "qdisc", "del", "dev", dev, "root"])
    if cond is None:
        return cmds
    netem = netem_args(cond)
    rate = int(cond.rate_kbit) if cond.rate_kbit and cond.rate_kbit > 0 else 0
    tbf = ["tbf", "rate", f"{rate}kbit", "burst", "32kbit", "latency", "400ms"]
    if netem:
        cmds.append(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", "netem", *netem])
        if rate:
            cmds.append(["tc", "qdisc", "add", "dev", dev, "parent", "1:1", "handle", "10:", *tbf])
    elif rate:
        cmds.append(["tc", "qdisc", "add", "dev", dev, "root", "handle", "1:", *tbf])
    return cmds


def batch_lines(argvs: list[list[str]]) -> list[str]:
    """argv lists of one tool (`tc ...`) as `-batch` lines (without the tool name)."""
    return [" ".join(a[1:]) for a in argvs]


def region_delays(plan: LabPlan, router: str) -> list[tuple[float, tuple[str, ...]]]:
    """(delay ms, destination CIDRs) for the egress of top router `router`, by delay."""
    by_delay: dict[float, list[str]] = {}
    for link in plan.region_links:
        if link.a == router:
            other, delay = link.b, link.delay_ab_ms
        elif link.b == router:
            other, delay = link.a, link.delay_ba_ms
        else:
            continue
        if delay <= 0:
            continue
        dsts = by_delay.setdefault(delay, [])
        dsts += plan.destinations(other) + plan.destinations(other, v6=True)
    return sorted((d, tuple(c)) for d, c in by_delay.items())


def region_tc_lines(plan: LabPlan, router: str) -> list[str]:
    """`tc -batch` lines for the region delays on top router `router`'s `ix` egress."""
    delays = region_delays(plan, router)
    if not delays:
        return []
    if len(delays) + 1 > PRIO_MAX_BANDS:
        raise ValueError(f"router {router!r}: more than {PRIO_MAX_BANDS - 1} distinct delays")
    dev = plan.router(router).uplink
    bands = len(delays) + 1
    lines = [f"qdisc add dev {dev} root handle 1: prio bands {bands} priomap" + " 0" * 16]
    for n, (delay, cidrs) in enumerate(delays, start=2):
        lines.append(
            f"qdisc add dev {dev} parent 1:{n} handle {n}0:"
            f" netem delay {_num(delay)}ms limit 100000"
        )
        for cidr in cidrs:
            if ":" in cidr:
                lines.append(
                    f"filter add dev {dev} parent 1: protocol ipv6 prio 2 u32"
                    f" match ip6 dst {cidr} flowid 1:{n}"
                )
            else:
                lines.append(
                    f"filter add dev {dev} parent 1: protocol ip prio 1 u32"
                    f" match ip dst {cidr} flowid 1:{n}"
                )
    return lines


def condition_state(cond: model.LinkCondition | None) -> object:
    """A link condition as state.json / events show it: the preset name (as the viewer
    spells it) or the limits table."""
    if cond is None:
        return None
    presets = {
        "lan": "lan",
        "wifi": "wifi",
        "wifi-bad": "wifi_bad",
        "mobile": "mobile_4g",
        "mobile-4g": "mobile_4g",
        "mobile-3g": "mobile_3g",
        "satellite": "satellite",
        "satellite-geo": "satellite_geo",
    }
    if cond.preset in presets:
        return presets[cond.preset]
    return limits_state(cond)


def limits_state(cond: model.LinkCondition) -> dict[str, float]:
    return {
        "rate_kbit": cond.rate_kbit,
        "loss_pct": cond.loss_pct,
        "latency_ms": cond.latency_ms,
        "jitter_ms": cond.jitter_ms,
        "reorder_pct": cond.reorder_pct,
        "duplicate_pct": cond.duplicate_pct,
        "corrupt_pct": cond.corrupt_pct,
    }


def region_link_state(link: RegionLink) -> dict[str, object]:
    return {
        "a": link.a,
        "b": link.b,
        "condition": limits_state(model.LinkCondition(latency_ms=link.delay_ab_ms)),
        "broken": False,
        "regions": [link.region_a, link.region_b],
        "latency_ms": {
            f"{link.a}->{link.b}": link.delay_ab_ms,
            f"{link.b}->{link.a}": link.delay_ba_ms,
        },
    }
