"""The text the lab runs: ip batches, nft rulesets per NAT mode (RUNNER-FACTS section 2),
tc argv per link condition preset (section 3), region delays, sysctls."""

from __future__ import annotations

import pytest

from patchbay_vm_tasks.simcore import addressing as a
from patchbay_vm_tasks.simcore import model as m
from patchbay_vm_tasks.simcore import netconfig as n


def plan_of(*routers: m.Router, devices=(), regions=None) -> a.LabPlan:
    return a.plan_lab(m.Topology(tuple(routers), tuple(devices), regions or {}), "pb1")


def ruleset(nat: m.Nat) -> str:
    return n.nat_ruleset(plan_of(m.Router("r", nat=nat)).router("r"))


EIM_MAP = "type inet_service : ipv4_addr . inet_service"
UPDATE = (
    'oif "ix" meta l4proto udp update @fullcone { udp sport timeout 300s : ip saddr . udp sport }'
)
FILTER = ['iif "ix" ct state established,related accept', 'iif "ix" drop']

# mode: (statements that must be there, statements that must not)
NAT_CASES = {
    m.Nat.HOME: (
        [EIM_MAP, "timeout 300s", 'iif "ix" meta l4proto udp dnat to udp dport map @fullcone',
         "priority srcnat", UPDATE, 'oif "ix" snat to 198.18.0.10', *FILTER],
        ["masquerade", "ip daddr"],
    ),
    m.Nat.FULL_CONE: (
        [EIM_MAP, "ip daddr 198.18.0.10 meta l4proto udp dnat to udp dport map @fullcone",
         "ip saddr 10.0.1.0/24 ct status dnat masquerade", UPDATE, 'oif "ix" snat to 198.18.0.10'],
        ["table ip filter", "drop", "random"],
    ),
    m.Nat.CORPORATE: (
        ['oif "ix" masquerade random', "priority 100", *FILTER],
        ["fullcone", "snat", "dnat"],
    ),
    m.Nat.CLOUD_NAT: (
        ['oif "ix" masquerade random', *FILTER],
        ["fullcone", "snat", "dnat"],
    ),
    m.Nat.CGNAT: (
        ['oif "ix" masquerade'],
        ["random", "fullcone", "table ip filter", "prerouting"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("nat", list(NAT_CASES), ids=lambda x: x.value)
def test_nat_ruleset_per_mode(nat: m.Nat) -> None:
    text = ruleset(nat)
    must, must_not = NAT_CASES[nat]
    for stmt in must:
        assert stmt in text, stmt
    for stmt in must_not:
        assert stmt not in text, stmt


def test_corporate_prerouting_is_empty() -> None:
    text = ruleset(m.Nat.CORPORATE)
    pre = text.split("chain prerouting {")[1].split("}")[0]
    assert pre.strip() == "type nat hook prerouting priority dstnat; policy accept;"


def test_no_nat_no_rules_and_sub_router_uses_wan() -> None:
    plan = plan_of(
        m.Router("isp", nat=m.Nat.CGNAT), m.Router("home", nat=m.Nat.HOME, upstream="isp")
    )
    assert n.nat_ruleset(plan_of(m.Router("dc")).router("dc")) is None
    home = n.nat_ruleset(plan.router("home"))
    assert 'oif "wan" snat to 10.0.1.2' in home and 'iif "wan" drop' in home


def test_v6_masquerade_table() -> None:
    r = m.Router("r", nat=m.Nat.HOME, ip_support=m.IpSupport.DUAL_STACK, nat_v6="masquerade")
    text = n.nat_ruleset(plan_of(r).router("r"))
    assert "table ip6 nat" in text and "table ip nat" in text


@pytest.mark.parametrize(
    ("nat", "values"),
    [
        (m.Nat.HOME, ("30", "300", "7200")),
        (m.Nat.FULL_CONE, ("30", "300", "7200")),
        (m.Nat.CORPORATE, ("30", "120", "3600")),
        (m.Nat.CLOUD_NAT, ("30", "350", "3600")),
        (m.Nat.CGNAT, None),
        (None, None),
    ],
)
def test_conntrack_timeouts(nat: m.Nat | None, values: tuple | None) -> None:
    got = n.conntrack_sysctls(nat)
    if values is None:
        assert got == {}
    else:
        assert got == {
            "net/netfilter/nf_conntrack_udp_timeout": values[0],
            "net/netfilter/nf_conntrack_udp_timeout_stream": values[1],
            "net/netfilter/nf_conntrack_tcp_timeout_established": values[2],
        }


P = {  # the presets as the reader makes them (RUNNER-FACTS section 3)
    "lan": m.LinkCondition(preset="lan"),
    "wifi": m.LinkCondition(5, 2, 0.1, preset="wifi"),
    "wifi-bad": m.LinkCondition(40, 15, 2, 20000, preset="wifi-bad"),
    "mobile-4g": m.LinkCondition(25, 8, 0.5, preset="mobile-4g"),
    "mobile-3g": m.LinkCondition(100, 30, 2, 2000, preset="mobile-3g"),
    "satellite": m.LinkCondition(40, 7, 1, preset="satellite"),
    "satellite-geo": m.LinkCondition(300, 20, 0.5, 25000, preset="satellite-geo"),
}
ROOT = ["tc", "qdisc", "add", "dev", "eth0", "root", "handle", "1:"]
TBF = ["tc", "qdisc", "add", "dev", "eth0", "parent", "1:1", "handle", "10:", "tbf"]
LIMITS = ["burst", "32kbit", "latency", "400ms"]

TC_CASES = [
    ("lan", P["lan"], []),
    ("wifi", P["wifi"], [ROOT + ["netem", "delay", "5ms", "2ms", "loss", "0.100%"]]),
    ("wifi-bad", P["wifi-bad"], [
        ROOT + ["netem", "delay", "40ms", "15ms", "loss", "2.000%"],
        TBF + ["rate", "20000kbit", *LIMITS],
    ]),
    ("mobile-4g", P["mobile-4g"], [ROOT + ["netem", "delay", "25ms", "8ms", "loss", "0.500%"]]),
    ("mobile-3g", P["mobile-3g"], [
        ROOT + ["netem", "delay", "100ms", "30ms", "loss", "2.000%"],
        TBF + ["rate", "2000kbit", *LIMITS],
    ]),
    ("satellite", P["satellite"], [ROOT + ["netem", "delay", "40ms", "7ms", "loss", "1.000%"]]),
    ("satellite-geo", P["satellite-geo"], [
        ROOT + ["netem", "delay", "300ms", "20ms", "loss", "0.500%"],
        TBF + ["rate", "25000kbit", *LIMITS],
    ]),
    ("all netem knobs", m.LinkCondition(latency_ms=2.5, reorder_pct=1, duplicate_pct=0.5,
                                         corrupt_pct=0.1), [
        ROOT + ["netem", "delay", "2.5ms", "reorder", "1.000%", "duplicate", "0.500%",
                "corrupt", "0.100%"],
    ]),
    ("jitter only", m.LinkCondition(jitter_ms=3), [ROOT + ["netem", "delay", "0ms", "3ms"]]),
    ("rate only: tbf as root", m.LinkCondition(rate_kbit=2000), [
        ROOT + ["tbf", "rate", "2000kbit", *LIMITS],
    ]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "cond", "argvs"), TC_CASES, ids=[c[0] for c in TC_CASES])
def test_tc_argv_per_condition(name: str, cond: m.LinkCondition, argvs: list) -> None:
    assert n.link_condition_argv("eth0", cond, replace=False) == argvs
    delete = ["tc", "qdisc", "del", "dev", "eth0", "root"]
    assert n.link_condition_argv("eth0", cond, replace=True) == [delete, *argvs]


def test_clearing_only_deletes_and_batch_lines_drop_the_tool() -> None:
    assert n.link_condition_argv("eth1", None) == [["tc", "qdisc", "del", "dev", "eth1", "root"]]
    assert n.link_condition_argv("eth1", None, replace=False) == []
    assert n.batch_lines(n.link_condition_argv("eth1", P["wifi"], replace=False)) == [
        "qdisc add dev eth1 root handle 1: netem delay 5ms 2ms loss 0.100%"
    ]


def test_condition_state_spells_presets_as_the_viewer() -> None:
    assert n.condition_state(P["mobile-4g"]) == "mobile_4g"
    assert n.condition_state(P["wifi-bad"]) == "wifi_bad"
    assert n.condition_state(None) is None
    assert n.condition_state(m.LinkCondition(latency_ms=100))["latency_ms"] == 100


def test_region_tc_one_netem_band_per_delay() -> None:
    plan = plan_of(
        m.Router("eu", region="eu"),
        m.Router("eu-home", region="eu", nat=m.Nat.HOME),
        m.Router("us", region="us"),
        m.Router("asia", region="asia", nat=m.Nat.CORPORATE),
        m.Router("plain"),
        regions={"eu": {"us": 20, "asia": 60}, "us": {"eu": 25}},
    )
    # Build order: asia .10 (10.0.1), eu .11 (198.18.1), eu-home .12 (10.0.2), plain .13, us .14
    assert n.region_tc_lines(plan, "eu") == [
        "qdisc add dev ix root handle 1: prio bands 3 priomap" + " 0" * 16,
        "qdisc add dev ix parent 1:2 handle 20: netem delay 20ms limit 100000",
        "filter add dev ix parent 1: protocol ip prio 1 u32 match ip dst 198.18.0.14/32 flowid 1:2",
        "filter add dev ix parent 1: protocol ip prio 1 u32 match ip dst 198.18.3.0/24 flowid 1:2",
        "qdisc add dev ix parent 1:3 handle 30: netem delay 60ms limit 100000",
        "filter add dev ix parent 1: protocol ip prio 1 u32 match ip dst 198.18.0.10/32 flowid 1:3",
    ]
    us = n.region_tc_lines(plan, "us")
    assert "netem delay 25ms" in us[1]  # us -> eu: us's own entry
    assert any("198.18.0.12/32 flowid 1:2" in line for line in us)  # eu-home (NAT): its WAN
    assert n.region_tc_lines(plan, "plain") == []  # no region: no delay


def test_region_tc_v6_destinations() -> None:
    ds = m.IpSupport.DUAL_STACK
    plan = plan_of(
        m.Router("a", region="x", ip_support=ds),
        m.Router("b", region="y", ip_support=ds),
        regions={"x": {"y": 10}},
    )
    lines = n.region_tc_lines(plan, "a")
    assert "protocol ipv6 prio 2 u32 match ip6 dst 2001:db8::11/128 flowid 1:2" in lines[-2]
    assert "match ip6 dst 2001:db8:1:2::/64 flowid 1:2" in lines[-1]


def test_root_batch_creates_veths_inside_the_lab_only() -> None:
    plan = plan_of(
        m.Router("isp", nat=m.Nat.CGNAT),
        m.Router("home", nat=m.Nat.HOME, upstream="isp"),
        devices=[m.Device("pc", (m.Interface("eth0", "home"),), "eth0")],
    )
    lines = n.root_batch(plan)
    assert lines[:4] == [
        "netns add pb1-ix",
        "netns add pb1-isp",
        "netns add pb1-home",
        "netns add pb1-pc",
    ]
    assert lines[4:] == [
        "link add name ix netns pb1-isp type veth peer name r0u netns pb1-ix",
        "link add name wan netns pb1-home type veth peer name r1u netns pb1-isp",
        "link add name eth0 netns pb1-pc type veth peer name d0 netns pb1-home",
    ]
    assert all(" netns " in line for line in lines[4:])  # never left in the caller's namespace


def test_namespace_batches() -> None:
    plan = plan_of(
        m.Router("isp", nat=m.Nat.CGNAT),
        m.Router("home", nat=m.Nat.HOME, upstream="isp"),
        m.Router("dc"),
        devices=[m.Device("pc", (m.Interface("eth0", "home"),), "eth0")],
    )
    b = n.namespace_batches(plan)
    assert b["pb1-ix"] == [
        "link set lo up",
        "link add br-ix type bridge",
        "addr add 198.18.0.1/24 dev br-ix",
        "link set br-ix up",
        "link set r0u master br-ix up",
        "link set r1u master br-ix up",
        "route add 198.18.1.0/24 via 198.18.0.10",
    ]
    assert "link set r2u master br-lan up" in b["pb1-isp"]
    assert b["pb1-home"][-3:] == [
        "addr add 10.0.1.2/24 dev wan",
        "link set wan up",
        "route add default via 10.0.1.1 dev wan",
    ]
    assert b["pb1-pc"] == [
        "link set lo up",
        "addr add 10.0.2.2/24 dev eth0",
        "link set eth0 up",
        "route replace default via 10.0.2.1 dev eth0",
    ]


def test_sysctls_forwarding_and_v6_address_keeping() -> None:
    ds = m.IpSupport.DUAL_STACK
    plan = plan_of(
        m.Router("dc", ip_support=ds),
        m.Router("v4"),
        devices=[
            m.Device("six", (m.Interface("eth0", "dc"),), "eth0"),
            m.Device("four", (m.Interface("eth0", "v4"),), "eth0"),
        ],
    )
    s = n.sysctls(plan)
    assert s["pb1-ix"] == {n.FORWARD: "1", n.FORWARD_V6: "1"}
    assert s["pb1-dc"] == {n.FORWARD: "1", n.FORWARD_V6: "1", n.KEEP_V6_ON_DOWN: "1"}
    assert s["pb1-v4"] == {n.FORWARD: "1"}
    assert s["pb1-six"] == {n.KEEP_V6_ON_DOWN: "1"}
    assert "pb1-four" not in s


def test_every_ip_line_is_one_the_netlink_client_understands() -> None:
    from patchbay_vm_tasks.simrunner import rtnl

    ds = m.IpSupport.DUAL_STACK
    plan = plan_of(
        m.Router("isp", nat=m.Nat.CGNAT, ip_support=ds),
        m.Router("home", nat=m.Nat.HOME, upstream="isp", ip_support=ds),
        m.Router("dc", ip_support=ds),
        m.Router("pub-sub", upstream="dc"),
        devices=[
            m.Device("pc", (m.Interface("eth0", "home"), m.Interface("eth1", "dc")), "eth1"),
            m.Device("srv", (m.Interface("eth0", "pub-sub"),), "eth0"),
        ],
    )
    lines = [line for b in n.namespace_batches(plan).values() for line in b]
    lines += n.default_route_lines(plan, "pc", "eth0")
    ops = {rtnl.parse(line)[0] for line in lines}
    assert ops == {"link_set", "bridge_add", "addr_add", "route"}
    assert rtnl.parse("addr add fd10:0:1::2/64 dev eth0 nodad") == (
        "addr_add",
        ("fd10:0:1::2/64", "eth0", True),
    )
    assert rtnl.parse("route add 198.18.2.0/24 via 198.18.0.11") == (
        "route",
        ("198.18.2.0/24", "198.18.0.11", None, False),
    )
    with pytest.raises(rtnl.RtnlError, match="not a line"):
        rtnl.parse("link set eth0 mtu 1400")
