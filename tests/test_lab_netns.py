"""The lab in real network namespaces on this host (root): NAT behaviours, conntrack
timeouts, link changes, rate limits, regions, teardown. Checked from outside with ping,
iperf3 and small python3 UDP scripts run through `Lab.netns_argv`.

Two labs, each shared by its checks (they run on 2 cores in CI). Delay checks need the
kernel's sch_netem and skip without it (this host's kernel has none; the guest's has).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patchbay_vm_tasks.simcore import model as m
from patchbay_vm_tasks.simrunner.lab import NETNS_DIR, Lab, LabError

pytestmark = pytest.mark.netns

if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"):
    pytest.skip("needs root, ip and nft", allow_module_level=True)

PREFIX = f"lt{os.getpid() % 100000}"

# Bind a UDP port, send to each HOST:PORT, then print what arrives within WAIT seconds.
# Waits scale with PATCHBAY_TEST_TIME_SCALE: these tests also run in the emulated guest
# (where the kernel has netem), and each python3 there takes about a second to start.
SCALE = float(os.environ.get("PATCHBAY_TEST_TIME_SCALE", "1"))

NAT_CLIENT = r"""
import json, socket, sys, time
port, wait, dests = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
for d in dests:
    host, p = d.rsplit(":", 1)
    s.sendto(b"hello", (host, int(p)))
s.settimeout(0.1)
got, end = [], time.monotonic() + wait
while time.monotonic() < end:
    try:
        data, addr = s.recvfrom(2048)
        got.append([data.decode(), addr[0], addr[1]])
    except socket.timeout:
        pass
print(json.dumps(got), flush=True)
"""

# Receive one datagram on PORT and print the sender "ip port".
OBSERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(float(sys.argv[2]))
print("ready", flush=True)
try:
    data, addr = s.recvfrom(2048)
    print(addr[0], addr[1], flush=True)
except socket.timeout:
    print("timeout", flush=True)
"""

# Send one datagram to HOST PORT.
SEND = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"unsolicited", (sys.argv[1], int(sys.argv[2])))
"""

NAT_ROUTERS = {
    "home": m.Nat.HOME,
    "fullcone": m.Nat.FULL_CONE,
    "corp": m.Nat.CORPORATE,
    "cloud": m.Nat.CLOUD_NAT,
}


def _dev(name: str, *gateways: str, **impair: m.LinkCondition) -> m.Device:
    ifaces = tuple(
        m.Interface(f"eth{n}", gw, impair=impair.get(f"eth{n}")) for n, gw in enumerate(gateways)
    )
    return m.Device(name, ifaces, "eth0")


def nat_topology() -> m.Topology:
    routers = [m.Router("dc"), m.Router("isp", nat=m.Nat.CGNAT)]
    routers += [m.Router(name, nat=nat) for name, nat in NAT_ROUTERS.items()]
    routers.append(m.Router("cghome", nat=m.Nat.HOME, upstream="isp"))
    ds = m.IpSupport.DUAL_STACK
    routers += [m.Router("v6a", ip_support=ds), m.Router("v6b", ip_support=ds)]
    routers.append(m.Router("pubsub", upstream="dc"))  # a public router behind a public one
    devices = [
        _dev("multi", "dc", "home"),
        _dev("pub1", "dc"),
        _dev("pub2", "dc"),
        _dev("pub3", "dc"),
        _dev("behind-cghome", "cghome"),
        _dev("six-a", "v6a"),
        _dev("six-b", "v6b"),
        _dev("behind-pubsub", "pubsub"),
        _dev("fullcone-peer", "fullcone"),
    ]
    devices += [_dev(f"behind-{name}", name) for name in NAT_ROUTERS]
    return m.Topology(tuple(routers), tuple(sorted(devices, key=lambda d: d.name)))


@pytest.fixture(scope="module")
def events() -> list[tuple[str, dict]]:
    return []


def root_links() -> set[str]:
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    return {line.split(":")[1].strip().split("@")[0] for line in out.splitlines()}


ROOT_BEFORE: set[str] = set()


@pytest.fixture(scope="module")
def lab(events: list[tuple[str, dict]]) -> Iterator[Lab]:
    lab = Lab(nat_topology(), f"{PREFIX}a", lambda k, f: events.append((k, f)), label="nat")
    try:
        ROOT_BEFORE.update(root_links())
        lab.build()
        yield lab
    finally:
        lab.teardown()


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("udp")
    out = {}
    for name, text in (("client", NAT_CLIENT), ("observer", OBSERVER), ("send", SEND)):
        (d / f"{name}.py").write_text(text)
        out[name] = str(d / f"{name}.py")
    return out


def run_in(
    lab: Lab, node: str, *argv: str, timeout: float = 20 * SCALE
) -> subprocess.CompletedProcess:
    return subprocess.run(
        lab.netns_argv(node) + list(argv), capture_output=True, text=True, timeout=timeout
    )


def popen_in(lab: Lab, node: str, *argv: str) -> subprocess.Popen:
    return subprocess.Popen(
        lab.netns_argv(node) + list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_until(cond, what: str, timeout: float = 20 * SCALE, every: float = 0.05) -> None:
    """Poll `cond` until it holds; fail naming `what` after `timeout` (liveness only)."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


def listening(lab: Lab, node: str, port: int) -> bool:
    """A TCP socket listens on `port` in the node's namespace."""
    out = run_in(lab, node, "ss", "-Hltn", f"sport = :{port}").stdout
    return bool(out.strip())


def runs_in(lab: Lab, node: str, proc: subprocess.Popen, comm: str) -> bool:
    """`proc` has entered the node's namespace and become `comm` (`ip netns exec` execs)."""
    try:
        ns = os.readlink(f"/proc/{proc.pid}/ns/net")
        name = Path(f"/proc/{proc.pid}/comm").read_text().strip()
    except OSError:
        return False
    return ns == f"net:[{os.stat(f'{NETNS_DIR}/{lab.ns_of(node)}').st_ino}]" and name == comm


def pings(lab: Lab, src: str, dst_ip: str, count: int = 3) -> bool:
    """Any reply out of `count` (ping exits 0 then): the first packet after a link comes
    up may be lost to neighbour discovery on a loaded machine."""
    return (
        run_in(lab, src, "ping", "-c", str(count), "-i", "0.2", "-W", "1", dst_ip).returncode == 0
    )


def start_observers(lab: Lab, scripts: dict[str, str], peers: dict[str, int]) -> dict:
    procs = {}
    for dev, port in peers.items():
        p = popen_in(lab, dev, sys.executable, scripts["observer"], str(port), str(4 * SCALE))
        assert p.stdout.readline().strip() == "ready"
        procs[dev] = p
    return procs


def nat_probe(lab: Lab, scripts: dict[str, str], src: str, senders: tuple[str, ...]) -> dict:
    """`src` sends from one port to pub1 and pub2; `senders` then send to the mapping pub1
    saw. Returns the (ip, port) each peer saw and what came back to `src`."""
    observers = start_observers(lab, scripts, {"pub1": 5001, "pub2": 5002})
    dests = [f"{lab.ip_of('pub1')}:5001", f"{lab.ip_of('pub2')}:5002"]
    client = popen_in(
        lab, src, sys.executable, scripts["client"], "40000", str(1.5 * SCALE), *dests
    )
    seen = {}
    for dev, p in observers.items():
        out = p.communicate(timeout=10 * SCALE)[0].split()
        seen[dev] = (out[0], int(out[1])) if len(out) == 2 else None
    for sender in senders:
        ip, port = seen["pub1"]
        assert run_in(lab, sender, sys.executable, scripts["send"], ip, str(port)).returncode == 0
    got = json.loads(client.communicate(timeout=10 * SCALE)[0])
    return {"seen": seen, "got": got}


def test_build_events_and_state(lab: Lab, events: list[tuple[str, dict]]) -> None:
    kinds = [k for k, _ in events]
    assert kinds[:2] == ["lab_created", "ix_created"]
    assert events[0][1] == {"lab_prefix": f"{PREFIX}a", "label": "nat"}
    assert kinds.count("router_added") == 10 and kinds.count("device_added") == 13
    state = lab.state()
    assert state["routers"]["cghome"]["upstream"] == "isp"
    # NAT LANs by build order: cloud, corp, fullcone, home, isp -> isp is 10.0.5.0/24.
    assert state["routers"]["cghome"]["uplink_ip"] == "10.0.5.2"
    assert state["devices"]["multi"]["interfaces"][1]["router"] == "home"
    assert lab.env["NETSIM_IP_PUB1"] == lab.ip_of("pub1")
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}a-ix" in listed


def test_the_machines_namespace_is_untouched(lab: Lab) -> None:
    ours = re.compile(r"^(br-ix|br-lan|r\d+u|d\d+|eth\d+|ix|wan)$")
    assert not [name for name in root_links() - ROOT_BEFORE if ours.match(name)]


def test_every_nat_mode_reaches_a_public_device(lab: Lab) -> None:
    target = lab.ip_of("pub1")
    for name in [*NAT_ROUTERS, "cghome"]:
        assert pings(lab, f"behind-{name}", target), name


def test_public_router_behind_another_is_reachable(lab: Lab) -> None:
    target = lab.ip_of("behind-pubsub")
    assert target.startswith("198.18.")
    assert pings(lab, "behind-home", target)  # from behind a NAT, across the IX
    assert pings(lab, "pub1", target)  # from the upstream's own LAN


def test_mapping_and_filtering_per_nat_mode(lab: Lab, scripts: dict[str, str]) -> None:
    results = {name: nat_probe(lab, scripts, f"behind-{name}", ("pub3",)) for name in NAT_ROUTERS}
    # Full-cone also hairpins: a LAN neighbour reaching the mapping through the WAN address.
    results["fullcone"] = nat_probe(lab, scripts, "behind-fullcone", ("pub3", "fullcone-peer"))
    wan = {name: lab.state()["routers"][name]["uplink_ip"] for name in NAT_ROUTERS}
    for name, r in results.items():
        assert r["seen"]["pub1"][0] == wan[name], name
        assert r["seen"]["pub2"][0] == wan[name], name
    # Endpoint-independent mapping: the same external port for both peers.
    for name in ("home", "fullcone"):
        assert results[name]["seen"]["pub1"][1] == results[name]["seen"]["pub2"][1], name
    # Endpoint-dependent (masquerade random): a port per destination.
    for name in ("corp", "cloud"):
        assert results[name]["seen"]["pub1"][1] != results[name]["seen"]["pub2"][1], name
    # Unsolicited inbound to the mapping: delivered only by full-cone.
    # The sender's own address shows (hairpinned packets come from the LAN gateway).
    fc_gw = lab.state()["routers"]["fullcone"]["downstream_gw"]
    got = sorted((g[0], g[1]) for g in results["fullcone"]["got"])
    assert got == sorted([("unsolicited", lab.ip_of("pub3")), ("unsolicited", fc_gw)])
    for name in ("home", "corp", "cloud"):
        assert results[name]["got"] == [], name


def test_cgnat_public_peer_sees_the_isp_address(lab: Lab, scripts: dict[str, str]) -> None:
    r = nat_probe(lab, scripts, "behind-cghome", ())
    assert r["seen"]["pub1"][0] == lab.state()["routers"]["isp"]["uplink_ip"]


def test_conntrack_timeouts_per_mode(lab: Lab) -> None:
    expected = {"home": "30 300 7200", "fullcone": "30 300 7200"}
    expected |= {"corp": "30 120 3600", "cloud": "30 350 3600", "cghome": "30 300 7200"}
    keys = [
        "net.netfilter.nf_conntrack_udp_timeout",
        "net.netfilter.nf_conntrack_udp_timeout_stream",
        "net.netfilter.nf_conntrack_tcp_timeout_established",
    ]
    for router, want in expected.items():
        out = run_in(lab, router, "sysctl", "-n", *keys).stdout.split()
        assert " ".join(out) == want, router


def test_dual_stack_v6_across_the_ix_and_over_link_down_up(lab: Lab) -> None:
    b6 = lab.state()["devices"]["six-b"]["interfaces"][0]["ip_v6"]
    assert b6 == lab.env["NETSIM_IP6_SIX_B"]
    assert pings(lab, "six-a", b6)
    lab.link_down("six-a", "eth0")
    lab.link_up("six-a", "eth0")
    assert pings(lab, "six-a", b6, count=2)  # address kept, default route back


def test_link_down_up_and_default_route(lab: Lab, events: list[tuple[str, dict]]) -> None:
    target = lab.ip_of("pub1")
    assert pings(lab, "multi", target)
    lab.link_down("multi", "eth0")
    assert not pings(lab, "multi", target)
    lab.link_up("multi", "eth0")
    assert pings(lab, "multi", target)  # the default route came back
    assert events[-2:] == [
        ("link_down", {"device": "multi", "iface": "eth0"}),
        ("link_up", {"device": "multi", "iface": "eth0"}),
    ]
    lab.set_default_route("multi", "eth1")
    assert lab.current_default("multi") == "eth1"
    assert lab.state()["devices"]["multi"]["default_via"] == "eth1"
    lab.link_down("multi", "eth0")
    routes = run_in(lab, "multi", "ip", "route", "show", "default").stdout
    assert "dev eth1" in routes
    assert pings(lab, "multi", target)  # now through the home NAT
    lab.link_up("multi", "eth0")  # not the default: the route stays on eth1
    assert "dev eth1" in run_in(lab, "multi", "ip", "route", "show", "default").stdout
    lab.set_default_route("multi", "eth0")


def test_rate_limit_measured_by_iperf3(lab: Lab, events: list[tuple[str, dict]]) -> None:
    if not shutil.which("iperf3"):
        pytest.skip("iperf3 not installed")
    lab.set_link_condition("pub1", None, m.LinkCondition(rate_kbit=2000))
    assert events[-1] == (
        "link_condition_changed",
        {"device": "pub1", "iface": "eth0", "condition": _limits(rate_kbit=2000)},
    )
    server = popen_in(lab, "pub2", "iperf3", "-s", "-1", "-p", "5201")
    try:
        wait_until(lambda: listening(lab, "pub2", 5201), "iperf3 to listen in pub2")
        out = run_in(lab, "pub1", "iperf3", "-c", lab.ip_of("pub2"), "-p", "5201", "-t", "2", "-J")
        assert out.returncode == 0, out.stdout[-500:]
        bps = json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]
        assert 1e6 < bps < 4e6, bps
    finally:
        server.kill()
        server.wait()
    lab.set_link_condition("pub1", None, None)
    assert lab.state()["devices"]["pub1"]["interfaces"][0]["link_condition"] is None
    qdisc = run_in(lab, "pub1", "tc", "qdisc", "show", "dev", "eth0").stdout
    assert "tbf" not in qdisc


def test_tc_error_becomes_lab_error(lab: Lab) -> None:
    with pytest.raises(LabError, match="loss"):
        lab.set_link_condition("pub3", "eth0", m.LinkCondition(loss_pct=200))
    lab.set_link_condition("pub3", "eth0", None)  # the lab stays usable


def test_teardown_leaves_nothing(lab: Lab, scripts: dict[str, str]) -> None:
    sleeper = popen_in(lab, "pub2", "sleep", "600")
    wait_until(lambda: runs_in(lab, "pub2", sleeper, "sleep"), "the sleeper to run in pub2")
    lab.teardown()
    # Killed by the teardown (not left to end by itself in 600 s, nor failing to start).
    assert sleeper.wait(timeout=30) == -signal.SIGKILL
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}a-" not in listed
    lab.teardown()  # idempotent


def _limits(**kw: float) -> dict:
    base = dict.fromkeys(
        ["rate_kbit", "loss_pct", "latency_ms", "jitter_ms", "reorder_pct", "duplicate_pct"], 0
    )
    return {**base, "corrupt_pct": 0, **kw}


def test_build_failures_clean_up_and_name_the_cause(monkeypatch: pytest.MonkeyPatch) -> None:
    from patchbay_vm_tasks.simcore import netconfig

    topology = m.Topology((m.Router("r", nat=m.Nat.HOME),), (_dev("d", "r"),))
    first = Lab(topology, f"{PREFIX}f", lambda k, f: None)
    first.build()
    try:
        second = Lab(topology, f"{PREFIX}f", lambda k, f: None)
        with pytest.raises(LabError, match="already exist"):
            second.build()
        second.teardown()  # not its namespaces: left alone
        assert run_in(first, "d", "true").returncode == 0  # the first lab is untouched
    finally:
        first.teardown()
    monkeypatch.setattr(netconfig, "nat_ruleset", lambda r: "table ip nat { bogus }\n")
    with pytest.raises(LabError, match="nft in router r"):
        Lab(topology, f"{PREFIX}g", lambda k, f: None).build()
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{PREFIX}f-" not in listed and f"{PREFIX}g-" not in listed


# ----- delays: need sch_netem -----


def _has_netem() -> bool:
    ns = f"{PREFIX}probe"
    subprocess.run(["ip", "netns", "add", ns], capture_output=True)
    try:
        r = subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
            capture_output=True,
        )
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def region_topology() -> m.Topology:
    routers = (
        m.Router("r-eu", region="eu"),
        m.Router("r-eu2", region="eu", nat=m.Nat.HOME),
        m.Router("r-us", region="us"),
        m.Router("r-asia", region="asia", nat=m.Nat.CORPORATE),
    )
    devices = (
        _dev("asia", "r-asia"),
        _dev("eu", "r-eu"),
        _dev("eu2", "r-eu2"),
        _dev("slow", "r-eu", eth0=m.LinkCondition(latency_ms=40, preset=None)),
        _dev("us", "r-us"),
    )
    regions = {"eu": {"us": 20, "asia": 60}, "us": {"asia": 40, "eu": 25}}
    return m.Topology(routers, devices, regions)


def min_rtt(lab: Lab, src: str, dst: str) -> float:
    """The floor of 4 pings: a delay shows there, scheduling noise (TCG) does not."""
    out = run_in(lab, src, "ping", "-c", "4", "-i", "0.2", "-W", "2", lab.ip_of(dst)).stdout
    return float(out.rsplit("=", 1)[1].split("/")[0])


def test_regions_and_impair_delay() -> None:
    if not _has_netem():
        pytest.skip("kernel without sch_netem (delay checks run in the guest)")
    lab = Lab(region_topology(), f"{PREFIX}r", lambda k, f: None)
    try:
        lab.build()
        # eu -> us 20 ms, us -> eu 25 ms (each direction its own entry).
        assert 40 <= min_rtt(lab, "eu", "us") <= 75
        # asia is behind a NAT: ping out from it. asia lists no latencies: the others' count.
        assert 115 <= min_rtt(lab, "asia", "eu") <= 160  # 60 + 60
        assert 75 <= min_rtt(lab, "asia", "us") <= 115  # 40 + 40
        assert min_rtt(lab, "eu2", "eu") < 10  # same region
        assert 40 <= min_rtt(lab, "slow", "eu") <= 70  # impair: egress latency once
        state = lab.state()
        assert {(link["a"], link["b"]) for link in state["region_links"]} == {
            ("r-asia", "r-eu"),
            ("r-asia", "r-eu2"),
            ("r-asia", "r-us"),
            ("r-eu", "r-us"),
            ("r-eu2", "r-us"),
        }
    finally:
        lab.teardown()
