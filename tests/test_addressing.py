"""The address plan against the Rust runner's rules (RUNNER-FACTS section 1), topologies
built by hand: the corpus shapes, cgnat with a home router behind it, dual-stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks.simcore import addressing as a
from patchbay_vm_tasks.simcore import model as m


def dev(name: str, *gateways: str, default: str = "eth0") -> m.Device:
    ifaces = tuple(m.Interface(f"eth{n}", gw) for n, gw in enumerate(gateways))
    return m.Device(name, ifaces, default)


def topo(routers: list[m.Router], devices: list[m.Device], regions=None) -> m.Topology:
    return m.Topology(tuple(routers), tuple(devices), regions or {})


ONE_TO_TEN = topo(
    [m.Router("dc")],
    [dev(f"fetcher-{i}", "dc") for i in range(10)] + [dev("provider", "dc")],
)
ONE_TO_ONE_NAT = topo(
    [
        m.Router("dc"),
        m.Router("lan-provider", nat=m.Nat.HOME),
        m.Router("lan-fetcher", nat=m.Nat.HOME),
    ],
    [dev("fetcher", "lan-fetcher"), dev("provider", "lan-provider"), dev("relay", "dc")],
)
NAT_SWITCH = topo(
    [
        m.Router("dc"),
        m.Router("lan-provider", nat=m.Nat.HOME),
        m.Router("lan-fetcher", nat=m.Nat.HOME),
        m.Router("lan-fetcher2", nat=m.Nat.HOME),
    ],
    [
        dev("fetcher", "lan-fetcher", "lan-fetcher2"),
        dev("provider", "lan-provider"),
        dev("relay", "dc"),
    ],
)
CGNAT = topo(
    [m.Router("home", nat=m.Nat.HOME, upstream="isp"), m.Router("isp", nat=m.Nat.CGNAT)],
    [dev("laptop", "home"), dev("modem-user", "isp")],
)
MIXED = topo(
    [
        m.Router("d", nat=m.Nat.CORPORATE),
        m.Router("c"),
        m.Router("b", nat=m.Nat.HOME),
        m.Router("a"),
    ],
    [],
)
DUAL = topo(
    [
        m.Router("dc", ip_support=m.IpSupport.DUAL_STACK),
        m.Router("v4"),
        m.Router("home", nat=m.Nat.HOME, ip_support=m.IpSupport.DUAL_STACK, nat_v6="masquerade"),
        m.Router("v6", ip_support=m.IpSupport.V6_ONLY),
    ],
    [dev("server", "dc"), dev("phone", "home"), dev("six", "v6"), dev("four", "v4")],
)

# (topology, {node: {field: value}}): routers by name, devices as "dev.iface" -> (ip, ip_v6).
CASES = [
    (
        "1to10-public",
        ONE_TO_TEN,
        {
            "dc": dict(uplink="ix", uplink_ip="198.18.0.10", uplink_gw="198.18.0.1",
                       downstream_cidr="198.18.1.0/24", downstream_gw="198.18.1.1"),
            "fetcher-0.eth0": ("198.18.1.2", None),
            "fetcher-9.eth0": ("198.18.1.11", None),
            "provider.eth0": ("198.18.1.12", None),
        },
    ),
    (
        "1to1-nat",
        ONE_TO_ONE_NAT,
        {
            "dc": dict(uplink_ip="198.18.0.10", downstream_cidr="198.18.1.0/24"),
            "lan-fetcher": dict(uplink_ip="198.18.0.11", downstream_cidr="10.0.1.0/24"),
            "lan-provider": dict(uplink_ip="198.18.0.12", downstream_cidr="10.0.2.0/24"),
            "fetcher.eth0": ("10.0.1.2", None),
            "provider.eth0": ("10.0.2.2", None),
            "relay.eth0": ("198.18.1.2", None),
        },
    ),
    (
        "1to1-nat-switch",
        NAT_SWITCH,
        {
            "lan-fetcher2": dict(uplink_ip="198.18.0.12", downstream_cidr="10.0.2.0/24"),
            "lan-provider": dict(uplink_ip="198.18.0.13", downstream_cidr="10.0.3.0/24"),
            "fetcher.eth0": ("10.0.1.2", None),
            "fetcher.eth1": ("10.0.2.2", None),
            "provider.eth0": ("10.0.3.2", None),
        },
    ),
    (
        "cgnat + home behind it",
        CGNAT,
        {
            "isp": dict(uplink="ix", uplink_ip="198.18.0.10", downstream_cidr="10.0.1.0/24",
                        index=0, top="isp"),
            # Routers first: home's wan takes .2 before the isp's own device.
            "home": dict(uplink="wan", uplink_ip="10.0.1.2", uplink_gw="10.0.1.1",
                         downstream_cidr="10.0.2.0/24", downstream_gw="10.0.2.1",
                         index=1, top="isp"),
            "modem-user.eth0": ("10.0.1.3", None),
            "laptop.eth0": ("10.0.2.2", None),
        },
    ),
    (
        "public and NAT counters are separate",
        MIXED,
        {
            "a": dict(index=0, uplink_ip="198.18.0.10", downstream_cidr="198.18.1.0/24"),
            "b": dict(index=1, uplink_ip="198.18.0.11", downstream_cidr="10.0.1.0/24"),
            "c": dict(index=2, uplink_ip="198.18.0.12", downstream_cidr="198.18.2.0/24"),
            "d": dict(index=3, uplink_ip="198.18.0.13", downstream_cidr="10.0.2.0/24"),
        },
    ),
    (
        "dual-stack",
        DUAL,
        {
            "dc": dict(uplink_ip="198.18.0.10", uplink_ip_v6="2001:db8::10",
                       uplink_gw_v6="2001:db8::1", downstream_cidr_v6="2001:db8:1:1::/64",
                       downstream_gw_v6="2001:db8:1:1::1"),
            "home": dict(uplink_ip="198.18.0.11", uplink_ip_v6="2001:db8::11",
                         downstream_cidr="10.0.1.0/24", downstream_cidr_v6="fd10:0:1::/64"),
            "v4": dict(uplink_ip="198.18.0.12", uplink_ip_v6=None, downstream_cidr_v6=None),
            "v6": dict(uplink_ip=None, uplink_gw=None, uplink_ip_v6="2001:db8::12",
                       downstream_cidr=None, downstream_cidr_v6="2001:db8:1:2::/64"),
            "server.eth0": ("198.18.1.2", "2001:db8:1:1::2"),
            "phone.eth0": ("10.0.1.2", "fd10:0:1::2"),
            "four.eth0": ("198.18.2.2", None),
            "six.eth0": (None, "2001:db8:1:2::2"),
        },
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "topology", "expected"), CASES, ids=[c[0] for c in CASES])
def test_addresses_follow_the_rust_rules(name: str, topology: m.Topology, expected: dict) -> None:
    plan = a.plan_lab(topology, "pb1")
    for node, want in expected.items():
        if "." in node:
            d, i = node.split(".")
            iface = plan.device(d).iface(i)
            assert (iface.ip, iface.ip_v6) == want, node
        else:
            r = plan.router(node)
            assert {k: getattr(r, k) for k in want} == want, node


def test_build_order_is_topological_batches_by_name() -> None:
    t = topo(
        [m.Router("a", upstream="z"), m.Router("z"), m.Router("b"), m.Router("c", upstream="a")],
        [],
    )
    plan = a.plan_lab(t, "pb1")
    assert [r.name for r in plan.routers] == ["b", "z", "a", "c"]
    assert plan.router("a").uplink_ip == "198.18.2.2"  # z's LAN (z is the second public)
    assert plan.router("c").uplink_ip == "198.18.3.2"
    assert plan.router("c").top == "z"


def test_root_return_routes_and_routes_to_public_routers_behind_others() -> None:
    t = topo(
        [
            m.Router("top"),
            m.Router("pub-sub", upstream="top"),
            m.Router("nat", nat=m.Nat.HOME),
            m.Router("behind-nat", upstream="nat"),
        ],
        [],
    )
    plan = a.plan_lab(t, "pb1")
    # Rust: each IX-attached public router's /24 via its IX address (NAT LANs: none).
    top, sub = plan.router("top"), plan.router("pub-sub")
    assert (top.downstream_cidr, top.uplink_ip) in plan.root_routes
    # Do better: a public router behind a public one is reachable from the IX.
    assert (sub.downstream_cidr, top.uplink_ip) in plan.root_routes
    assert top.routes == ((sub.downstream_cidr, sub.uplink_ip),)
    # Behind a NAT: only the NAT router learns the route (its address hides the LAN).
    bn = plan.router("behind-nat")
    assert plan.router("nat").routes == ((bn.downstream_cidr, bn.uplink_ip),)
    assert all(cidr != bn.downstream_cidr for cidr, _ in plan.root_routes)
    assert len(plan.root_routes) == 2


def test_env_names_and_default_interface() -> None:
    t = topo(
        [m.Router("dc"), m.Router("lan", nat=m.Nat.HOME)],
        [
            m.Device(
                "relay.x-1",
                (m.Interface("eth0", "dc"), m.Interface("wlan0", "lan")),
                default_via="wlan0",
            )
        ],
    )
    plan = a.plan_lab(t, "pb1")
    assert plan.env == {
        "NETSIM_IP_RELAY_X_1": "10.0.1.2",
        "NETSIM_IP_RELAY_X_1_ETH0": "198.18.1.2",
        "NETSIM_IP_RELAY_X_1_WLAN0": "10.0.1.2",
    }
    assert a.plan_lab(DUAL, "pb1").env["NETSIM_IP_SIX"] == "2001:db8:1:2::2"
    assert a.plan_lab(DUAL, "pb1").env["NETSIM_IP6_SERVER"] == "2001:db8:1:1::2"


def test_names_of_namespaces_and_veths() -> None:
    plan = a.plan_lab(NAT_SWITCH, "pb3f2a")
    assert plan.root_ns == "pb3f2a-ix"
    assert plan.namespaces[:2] == ("pb3f2a-ix", "pb3f2a-dc")
    assert plan.device("fetcher").ns == "pb3f2a-fetcher"
    peers = [r.uplink_peer for r in plan.routers]
    peers += [i.peer for d in plan.devices for i in d.interfaces]
    assert len(set(peers)) == len(peers)
    assert all(len(p) <= 15 for p in peers)
    assert plan.router("lan-fetcher").devices == ("fetcher",)


def test_region_links_take_each_direction_from_its_own_entry() -> None:
    t = topo(
        [
            m.Router("eu1", region="eu"),
            m.Router("eu2", region="eu"),
            m.Router("us1", region="us"),
            m.Router("as1", region="asia"),
            m.Router("none"),
            m.Router("home", nat=m.Nat.HOME, upstream="us1"),
        ],
        [],
        {"eu": {"us": 20, "asia": 60}, "us": {"eu": 25}},
    )
    plan = a.plan_lab(t, "pb1")
    links = {(x.a, x.b): (x.delay_ab_ms, x.delay_ba_ms) for x in plan.region_links}
    assert links == {
        ("as1", "eu1"): (60, 60),
        ("as1", "eu2"): (60, 60),
        ("eu1", "us1"): (20, 25),
        ("eu2", "us1"): (20, 25),
    }
    # A router behind another is in its top router's region.
    assert a.region_of_top(plan, "home") == "us"
    # us1 is fifth in build order (as1, eu1, eu2, none, us1), all public.
    assert plan.destinations("us1") == ("198.18.0.14/32", "198.18.5.0/24")


@pytest.mark.parametrize(
    ("routers", "devices", "message"),
    [
        ([m.Router("a", upstream="nope")], [], "upstream 'nope' is not a router"),
        ([m.Router("a", upstream="b"), m.Router("b", upstream="a")], [], "cycle"),
        ([m.Router("a")], [dev("d", "nope")], "gateway 'nope' is not a router"),
        ([m.Router("a")], [dev("a", "a")], "clashes"),
        ([m.Router("ix")], [], "clashes with the lab root"),
        ([m.Router("a")], [dev("d", "a", default="eth7")], "default_via 'eth7'"),
        ([m.Router("a"), m.Router("a")], [], "declared twice"),
    ],
)
def test_bad_topologies(routers: list, devices: list, message: str) -> None:
    with pytest.raises(a.PlanError, match=message):
        a.plan_lab(topo(routers, devices), "pb1")


def test_the_corpus_topologies_plan(corpus_dir: Path) -> None:
    from patchbay_vm_tasks.simcore import reader

    sims = sorted((corpus_dir / "sims").glob("*.toml"))
    assert sims
    for path in sims:
        sim = reader.load_sim(path, strict=False)
        plan = a.plan_lab(sim.topology, "pb1")
        assert plan.routers[0].uplink_ip == "198.18.0.10", path.name
        if sim.name == "iroh-1to10-public":
            assert len(plan.namespaces) == 13  # lab root + dc + 11 devices
            assert plan.env["NETSIM_IP_PROVIDER"] == "198.18.1.12"
