"""The sim reader (simcore/reader.py): corpus sims, expansion rules, and broken sims whose
errors must name the file and the offending key."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks.simcore import model, reader
from patchbay_vm_tasks.simcore.durations import parse_duration
from patchbay_vm_tasks.simcore.model import Action, LinkCondition, SimError

CORPUS_FILES = [
    "sims/iperf-1to1-public.toml",
    "sims/iperf-1to1-udp.toml",
    "sims/iroh-1to1-nat-switch.toml",
    "sims/iroh-1to1-nat.toml",
    "sims/iroh-1to1-public.toml",
    "sims/iroh-1to10-public.toml",
    "ui-fixtures/iperf-e2e.toml",
    "ui-fixtures/ping-e2e.toml",
]

TOPO = """
[[router]]
name = "dc"

[[router]]
name = "home"
nat  = "home"

[device.server.eth0]
gateway = "dc"

[device.client.eth0]
gateway = "home"
"""

SERVER_CLIENT = (
    TOPO
    + """
[[step]]
action = "spawn"
id     = "srv"
device = "server"
cmd    = ["iperf3", "-s", "-1"]

[[step]]
action = "run"
id     = "cli"
device = "client"
parser = "json"
cmd    = ["iperf3", "-c", "$NETSIM_IP_server", "-J"]
[step.captures.bytes]
pick = ".end.sum_received.bytes"
[step.results]
down_bytes = "cli.bytes"

[[step]]
action = "wait-for"
id     = "srv"
"""
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(
    tmp_path: Path, text: str, strict: bool = True, files: dict[str, str] | None = None
) -> model.Sim:
    for rel, body in (files or {}).items():
        write(tmp_path / rel, body)
    return reader.load_sim(write(tmp_path / "sims" / "s.toml", text), strict=strict)


# ── the corpus ───────────────────────────────────────────────────────────────


def test_corpus_list_is_complete(corpus_dir: Path) -> None:
    found = sorted(
        p.relative_to(corpus_dir).as_posix()
        for folder in ("sims", "ui-fixtures")
        for p in (corpus_dir / folder).glob("*.toml")
    )
    assert found == sorted(CORPUS_FILES)


@pytest.mark.parametrize("rel", CORPUS_FILES)
def test_corpus_loads_strict(corpus_dir: Path, rel: str) -> None:
    sim = reader.load_sim(corpus_dir / rel, strict=True)
    assert sim.warnings == []
    assert sim.steps and [s.index for s in sim.steps] == list(range(len(sim.steps)))
    names = [d.name for d in sim.topology.devices]
    assert all(s.device in names for s in sim.steps if s.device)
    assert reader.plan_text(sim).startswith(f"sim {sim.name}")


def test_corpus_1to10_counts(corpus_dir: Path) -> None:
    sim = reader.load_sim(corpus_dir / "sims/iroh-1to10-public.toml", strict=True)
    topo = sim.topology
    assert len(topo.routers) + len(topo.devices) == 12
    assert [d.name for d in topo.devices] == [f"fetcher-{i}" for i in range(10)] + ["provider"]
    assert sim.topology_ref == "1to10-public" and sim.topology_mode == "external"
    assert len(sim.steps) == 21
    waits = [s for s in sim.steps if s.action is Action.WAIT_FOR]
    assert [s.id for s in waits] == [f"fetcher-{i}" for i in range(10)]
    assert {s.timeout for s in waits} == {60.0}
    f3 = sim.steps[4]
    assert (f3.id, f3.device, f3.action) == ("fetcher-3", "fetcher-3", Action.SPAWN)
    assert f3.results == {"duration": "fetcher-3.duration", "down_bytes": "fetcher-3.size"}


def test_corpus_group_and_templates(corpus_dir: Path) -> None:
    sim = reader.load_sim(corpus_dir / "sims/iroh-1to1-nat.toml", strict=True)
    certs, cfg, relay, provider, fetcher, wait, check = sim.steps
    assert (certs.action, certs.id, certs.device, certs.cn) == (
        Action.GEN_CERTS,
        "relay-cert",
        "relay",
        "patchbay",
    )
    # ${${group.device}-cert.x} became ${relay-cert.x}, left for run time.
    assert 'manual_cert_path = "${relay-cert.cert_pem_path}"' in cfg.content
    assert (cfg.action, cfg.id) == (Action.GEN_FILE, "relay-cfg")
    assert relay.cmd == ["${binary.relay}", "--config-path", "${relay-cfg.path}"]
    assert relay.ready_after == 2.0 and relay.env == {"RUST_LOG": "iroh_relay=info"}
    assert relay.captures["ready"] == model.Capture("ready", "stderr", "relay: serving on")
    assert provider.requires == ["relay.ready"]
    assert provider.cmd[-2:] == ["--relay-url", "https://$NETSIM_IP_relay:3340"]
    assert provider.parser is model.Parser.NDJSON
    assert set(provider.captures) == {"endpoint_id", "direct_addr"}
    assert fetcher.cmd[:6] == ["${binary.transfer}", "--output", "json", "fetch", "--env", "dev"]
    assert fetcher.cmd[6] == "${provider.endpoint_id}"
    assert fetcher.captures["remote-addr"].match == {
        "kind": "ConnectionTypeChanged",
        "status": "Selected",
    }
    assert fetcher.results == {"duration": "fetcher.duration", "down_bytes": "fetcher.size"}
    assert (wait.id, wait.timeout) == ("fetcher", 45.0)
    assert check.checks == ["fetcher.size matches [0-9]+"]
    assert "group relay-setup" not in certs.origin and "use = relay-setup" in certs.origin
    assert set(sim.binaries) == {"transfer", "relay"}
    assert sim.binaries["relay"] == model.Binary("relay", "target", bin="iroh-relay")
    assert sim.prepare == [
        {"mode": "build", "all-features": True, "examples": ["transfer"], "bins": ["iroh-relay"]}
    ]


def test_corpus_nat_switch_topology(corpus_dir: Path) -> None:
    sim = reader.load_sim(corpus_dir / "sims/iroh-1to1-nat-switch.toml", strict=True)
    fetcher = next(d for d in sim.topology.devices if d.name == "fetcher")
    assert [(i.name, i.gateway) for i in fetcher.interfaces] == [
        ("eth0", "lan-fetcher"),
        ("eth1", "lan-fetcher2"),
    ]
    assert fetcher.default_via == "eth0"
    assert [r.nat for r in sim.topology.routers] == [None, *[model.Nat.HOME] * 3]
    route = next(s for s in sim.steps if s.action is Action.SET_DEFAULT_ROUTE)
    assert (route.device, route.to) == ("fetcher", "eth1")


def test_corpus_ui_fixtures(corpus_dir: Path) -> None:
    ping = reader.load_sim(corpus_dir / "ui-fixtures/ping-e2e.toml", strict=True)
    assert ping.topology_mode == "inline"
    sender = next(d for d in ping.topology.devices if d.name == "sender")
    assert sender.interfaces[0].impair == LinkCondition(latency_ms=100)
    iperf = reader.load_sim(corpus_dir / "ui-fixtures/iperf-e2e.toml", strict=True)
    assert iperf.steps[0].ready_after == 0.5
    assert iperf.steps[1].captures["duration"].pick == "end.sum_sent.seconds"


def test_binaries_of_corpus(corpus_dir: Path) -> None:
    bins = reader.binaries_of(corpus_dir / "sims/iroh-1to1-public.toml")
    assert bins == {
        "transfer": model.Binary("transfer", "target", example="transfer"),
        "relay": model.Binary("relay", "target", bin="iroh-relay"),
    }
    assert bins["relay"].origin.endswith("iroh-defaults.toml")
    assert reader.binaries_of(corpus_dir / "sims/iperf-1to1-udp.toml") == {}


# ── durations and link conditions ────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("0ms", 0.0), ("2s", 2.0), ("45s", 45.0), ("3m", 180.0), (" 2 s ", 2.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["2", "1.5s", "3h", "-1s", "s", "", "2 seconds", 2, None, True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match='"500ms", "2s" or "1m"'):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lan", (0, 0, 0, 0)),
        ("wifi", (5, 2, 0.1, 0)),
        ("wifi-bad", (40, 15, 2, 20_000)),
        ("mobile-4g", (25, 8, 0.5, 0)),
        ("mobile", (25, 8, 0.5, 0)),
        ("mobile-3g", (100, 30, 2, 2_000)),
        ("satellite", (40, 7, 1, 0)),
        ("satellite-geo", (300, 20, 0.5, 25_000)),
    ],
)
def test_presets(value: str, expected: tuple) -> None:
    cond = reader.parse_condition(value)
    assert (cond.latency_ms, cond.jitter_ms, cond.loss_pct, cond.rate_kbit) == expected
    assert cond.preset == ("mobile-4g" if value == "mobile" else value)


def test_condition_table() -> None:
    table = {"latency_ms": 20, "loss_pct": 1.5, "rate_kbit": 1000, "reorder_pct": 5}
    assert reader.parse_condition(table) == LinkCondition(20, 0, 1.5, 1000, 5)


@pytest.mark.parametrize(
    ("value", "key"),
    [
        ("dialup", "impair"),
        ({"latency": 5}, "impair.latency"),
        ({"latency_ms": 1.5}, "impair.latency_ms"),
        ({"loss_pct": 120}, "impair.loss_pct"),
        (3, "impair"),
    ],
)
def test_bad_conditions(value: object, key: str) -> None:
    with pytest.raises(SimError) as err:
        reader.parse_condition(value, "x.toml")
    assert err.value.key == key and err.value.path == "x.toml"


# ── expansion rules ──────────────────────────────────────────────────────────


def test_inline_defaults_and_order(tmp_path: Path) -> None:
    sim = load(tmp_path, '[sim]\nname = "s"\n' + SERVER_CLIENT)
    assert [d.name for d in sim.topology.devices] == ["client", "server"]
    assert [r.name for r in sim.topology.routers] == ["dc", "home"]
    assert sim.steps[2].timeout == 300.0  # wait-for default
    assert sim.steps[1].results == {"down_bytes": "cli.bytes"}


def test_name_defaults_to_file_stem(tmp_path: Path) -> None:
    assert load(tmp_path, SERVER_CLIENT).name == "s"


def test_default_via_and_interfaces_sorted(tmp_path: Path) -> None:
    text = TOPO.replace(
        '[device.client.eth0]\ngateway = "home"',
        '[device.client]\ndefault_via = "wlan0"\n[device.client.wlan0]\ngateway = "home"\n'
        'impair = "wifi"\n[device.client.eth1]\ngateway = "dc"\n[device.client.eth0]\n'
        'gateway = "home"',
    )
    client = load(tmp_path, text).topology.devices[0]
    assert [i.name for i in client.interfaces] == ["eth0", "eth1", "wlan0"]
    assert client.default_via == "wlan0"
    assert client.interfaces[2].impair == reader.PRESETS["wifi"]


def test_step_actions_and_aliases(tmp_path: Path) -> None:
    sim = load(
        tmp_path,
        TOPO
        + """
[[step]]
device = "client"
cmd    = ["true"]
args   = ["x"]

[[step]]
action = "set-impair"
device = "client"
impair = { latency_ms = 10 }

[[step]]
action    = "set-link-condition"
device    = "client"
interface = "eth0"

[[step]]
action   = "wait"
duration = "1m"

[[step]]
action = "gen-certs"
id     = "c"
san    = ["example.org", "10.0.0.1"]
""",
    )
    run, impair, clear, wait, certs = sim.steps
    assert (run.action, run.cmd, run.key) == (Action.RUN, ["true", "x"], "client")
    assert impair.action is Action.SET_LINK_CONDITION
    assert impair.interface is None  # the device's current default, at run time
    assert impair.condition == LinkCondition(latency_ms=10)
    assert (clear.interface, clear.condition) == ("eth0", None)
    assert wait.duration == 60.0
    assert (certs.cn, certs.san, certs.device) == ("patchbay", ["example.org", "10.0.0.1"], None)


def test_template_rules(tmp_path: Path) -> None:
    sim = load(
        tmp_path,
        TOPO
        + """
[[step-template]]
name    = "t"
kind    = "spawn"
cmd     = ["prog", "serve"]
env     = { A = "tpl", B = "tpl" }
timeout = "10s"
requires = []
[step-template.captures.port]
regex = "port (\\\\d+)"
[step-template.captures.addr]
regex = "addr (\\\\S+)"
[step-template.results]
duration   = ".port"
down_bytes = ".addr"

[[step]]
use     = "t"
id      = "one"
device  = "server"
env     = { B = "call", C = "call" }
args    = ["--fast"]
timeout = "20s"
[step.captures.addr]
regex = "address=(\\\\S+)"
[step.results]
latency_ms = "one.port"

[[step]]
use    = "t"
id     = "two"
device = "client"
requires = ["one.port"]
""",
    )
    one, two = sim.steps
    assert one.action is Action.SPAWN  # `kind` is the alias of `action`
    assert one.cmd == ["prog", "serve", "--fast"]
    assert one.env == {"A": "tpl", "B": "call", "C": "call"}
    assert one.timeout == 20.0
    assert one.captures["addr"].regex == "address=(\\S+)"  # call site wins
    assert one.captures["port"].regex == "port (\\d+)"
    assert one.results == {"latency_ms": "one.port"}  # results replace
    assert two.results == {"duration": "two.port", "down_bytes": "two.addr"}  # `.cap` = id.cap
    assert two.requires == ["one.port"] and two.timeout == 10.0


def test_own_template_wins_over_extends(tmp_path: Path) -> None:
    base = '[[step-template]]\nname = "t"\naction = "run"\ncmd = ["from-base"]\n'
    sim = load(
        tmp_path,
        '[[extends]]\nfile = "base.toml"\n'
        + TOPO
        + '[[step-template]]\nname = "t"\naction = "run"\ncmd = ["own"]\n'
        + '[[step]]\nuse = "t"\ndevice = "server"\n',
        files={"sims/base.toml": base},
    )
    assert sim.steps[0].cmd == ["own"]


def test_group_steps_may_use_templates(tmp_path: Path) -> None:
    sim = load(
        tmp_path,
        TOPO
        + """
[[step-template]]
name   = "srv"
action = "spawn"
cmd    = ["prog"]
[step-template.captures.ready]
regex = "ready"

[[step-group]]
name = "g"
[[step-group.step]]
use    = "srv"
id     = "${group.who}-srv"
device = "${group.who}"
[[step-group.step]]
kind   = "run"
device = "${group.who}"
cmd    = ["echo", "${${group.who}-srv.ready}"]

[[step]]
use  = "g"
vars = { who = "server" }
""",
    )
    spawn, run = sim.steps
    assert (spawn.id, spawn.device, spawn.cmd) == ("server-srv", "server", ["prog"])
    assert run.cmd == ["echo", "${server-srv.ready}"]
    assert run.action is Action.RUN


def test_counted_devices(tmp_path: Path) -> None:
    sim = load(
        tmp_path,
        """
[[router]]
name = "dc"
[device.srv.eth0]
gateway = "dc"
[device.peer]
count = 3
[device.peer.eth0]
gateway = "dc"

[[step]]
action = "spawn"
id     = "peer"
device = "peer"
cmd    = ["prog"]
[step.captures.size]
regex = "size (\\\\d+)"
[step.results]
down_bytes = "peer.size"

[[step]]
action = "run"
device = "peer"
cmd    = ["ping", "$NETSIM_IP_srv"]

[[step]]
action = "wait-for"
id     = "peer"

[[step]]
action = "assert"
checks = ["peer.size >= 1", "srv.x == 1"]
[[step]]
action = "spawn"
id = "srv"
device = "srv"
cmd = ["x"]
[step.captures.x]
regex = "x"
""",
    )
    names = [d.name for d in sim.topology.devices]
    assert names == ["peer-0", "peer-1", "peer-2", "srv"]
    spawns = sim.steps[0:3]
    assert [(s.id, s.device) for s in spawns] == [(f"peer-{i}", f"peer-{i}") for i in range(3)]
    assert spawns[2].results == {"down_bytes": "peer-2.size"}
    runs = sim.steps[3:6]
    assert [(s.id, s.device, s.key) for s in runs] == [
        (None, f"peer-{i}", f"peer-{i}") for i in range(3)
    ]
    assert [s.id for s in sim.steps[6:9]] == ["peer-0", "peer-1", "peer-2"]
    assert sim.steps[9].checks == [
        "peer-0.size >= 1",
        "peer-1.size >= 1",
        "peer-2.size >= 1",
        "srv.x == 1",
    ]
    assert [s.index for s in sim.steps] == list(range(11))


def test_router_options(tmp_path: Path) -> None:
    sim = load(
        tmp_path,
        """
[[router]]
name = "isp"
nat  = "cgnat"
region = "eu"
[[router]]
name     = "home"
nat      = "home"
upstream = "isp"
ip_support = "dual-stack"
nat_v6 = "none"
[[router]]
name = "dc"
nat  = "none"
region = "us"
[region.eu]
latencies = { us = 40 }
[device.d.eth0]
gateway = "home"
""",
    )
    isp, home, dc = sim.topology.routers
    assert (isp.nat, isp.region, home.upstream) == (model.Nat.CGNAT, "eu", "isp")
    assert home.ip_support is model.IpSupport.DUAL_STACK and dc.nat is None
    assert sim.topology.regions == {"eu": {"us": 40.0}}
    plan = reader.plan_text(sim)
    assert "home  nat=home  upstream=isp" in plan and "eu: us=40ms" in plan


def test_extra_binaries_allow_binary_refs(tmp_path: Path) -> None:
    text = TOPO + '[[step]]\ndevice = "server"\ncmd = ["${binary.tool}"]\n'
    with pytest.raises(SimError, match=r"\$\{binary.tool\} names no declared binary"):
        load(tmp_path, text)
    path = tmp_path / "sims" / "s.toml"
    assert reader.load_sim(path, strict=True, extra_binaries=("tool",)).steps[0].cmd


def test_plan_text_lines(tmp_path: Path, corpus_dir: Path) -> None:
    plan = reader.plan_text(reader.load_sim(corpus_dir / "sims/iroh-1to1-nat.toml", strict=True))
    assert "  lan-provider  nat=home  upstream=ix" in plan
    assert "    eth0 -> lan-fetcher" in plan
    assert "  relay  target  bin=iroh-relay" in plan
    assert "  2  spawn  id=relay @relay  cmd: '${binary.relay}' --config-path" in plan
    assert "  5  wait-for  id=fetcher  timeout=45s" in plan
    ping = reader.plan_text(reader.load_sim(corpus_dir / "ui-fixtures/ping-e2e.toml", strict=True))
    assert "eth0 -> dc  impair=100ms" in ping


# ── broken sims ──────────────────────────────────────────────────────────────

STEP_ON = '[[step]]\naction = "run"\ndevice = "{dev}"\ncmd = ["true"]\n'

BROKEN = {
    "missing-gateway": (
        '[[router]]\nname = "dc"\n[device.client.eth0]\nimpair = "wifi"\n',
        {},
        "device.client.eth0.gateway",
        "missing",
    ),
    "gateway-no-router": (
        '[[router]]\nname = "dc"\n[device.client.eth0]\ngateway = "dcc"\n',
        {},
        "device.client.eth0.gateway",
        "names no router: 'dcc'",
    ),
    "gateway-typo-key": (
        '[[router]]\nname = "dc"\n[device.client.eth0]\ngatway = "dc"\ngateway = "dc"\n',
        {},
        "device.client.eth0.gatway",
        "did you mean 'gateway'?",
    ),
    "unknown-device": (
        TOPO + STEP_ON.format(dev="clinet"),
        {},
        "step[0].device",
        "names no device: 'clinet'",
    ),
    "router-is-not-a-target": (
        TOPO + STEP_ON.format(dev="dc"),
        {},
        "step[0].device",
        "'dc' is a router",
    ),
    "undefined-capture-in-results": (
        TOPO + STEP_ON.format(dev="client") + '[step.results]\nduration = "cli.secs"\n',
        {},
        "step[0].results.duration",
        "'cli.secs', but no step defines that capture",
    ),
    "undefined-capture-in-requires": (
        TOPO + STEP_ON.format(dev="client") + 'requires = ["srv.ready"]\n',
        {},
        "step[0].requires",
        "no step defines that capture",
    ),
    "undefined-capture-in-cmd": (
        TOPO + '[[step]]\ndevice = "client"\ncmd = ["echo", "${srv.addr}"]\n',
        {},
        "step[0].cmd",
        "${srv.addr}",
    ),
    "undefined-capture-in-assert": (
        TOPO + '[[step]]\naction = "assert"\ncheck = "x.y == 1"\n',
        {},
        "step[0].checks",
        "'x.y'",
    ),
    "unknown-template": (
        TOPO + '[[step]]\nuse = "transfer"\ndevice = "client"\n',
        {},
        "step[0].use",
        "no step template or group named 'transfer'",
    ),
    "unknown-action": (
        TOPO + '[[step]]\naction = "spwan"\ndevice = "client"\ncmd = ["x"]\n',
        {},
        "step[0].action",
        "unknown action 'spwan'",
    ),
    "wait-for-unknown-spawn": (
        TOPO + '[[step]]\naction = "wait-for"\nid = "srv"\n',
        {},
        "step[0].id",
        "no earlier spawn step has id 'srv'",
    ),
    "extends-cycle": (
        '[[extends]]\nfile = "a.toml"\n' + TOPO,
        {
            "sims/a.toml": '[[extends]]\nfile = "b.toml"\n',
            "sims/b.toml": '[[extends]]\nfile = "a.toml"\n',
        },
        "extends[0].file",
        "[[extends]] loop: sims/s.toml -> sims/a.toml -> sims/b.toml -> sims/a.toml",
    ),
    "extends-missing": (
        '[[extends]]\nfile = "nope.toml"\n' + TOPO,
        {},
        "extends[0].file",
        "'nope.toml' not found",
    ),
    "v6-only": (
        TOPO.replace('nat  = "home"', 'nat  = "home"\nip_support = "v6-only"'),
        {},
        "router.home.ip_support",
        "v6-only is not supported by the builtin runner yet",
    ),
    "nat-v6-nptv6": (
        TOPO.replace('nat  = "home"', 'nat_v6 = "nptv6"'),
        {},
        "router.home.nat_v6",
        "'nptv6' is not supported by the builtin runner yet",
    ),
    "nat-v6-masquerade": (
        TOPO.replace('nat  = "home"', 'nat_v6 = "masquerade"'),
        {},
        "router.home.nat_v6",
        "not supported by the builtin runner yet",
    ),
    "nat-v6-nat64": (
        TOPO.replace('nat  = "home"', 'nat_v6 = "nat64"'),
        {},
        "router.home.nat_v6",
        "not supported by the builtin runner yet",
    ),
    "unknown-nat": (
        TOPO.replace('nat  = "home"', 'nat  = "symmetric"'),
        {},
        "router.home.nat",
        "unknown NAT mode 'symmetric'",
    ),
    "upstream-unknown": (
        TOPO.replace('nat  = "home"', 'upstream = "isp"'),
        {},
        "router.home.upstream",
        "names no router: 'isp'",
    ),
    "upstream-cycle": (
        '[[router]]\nname = "a"\nupstream = "b"\n[[router]]\nname = "b"\nupstream = "a"\n',
        {},
        "router.a.upstream",
        "upstream cycle: a -> b -> a",
    ),
    "bad-duration": (
        TOPO + '[[step]]\naction = "wait"\nduration = "2"\n',
        {},
        "step[0].duration",
        "bad duration '2'",
    ),
    "topology-not-found": ('[sim]\ntopology = "nope"\n', {}, "sim.topology", "topos/nope.toml"),
    "topology-and-inline": (
        '[sim]\ntopology = "t"\n' + TOPO,
        {"topos/t.toml": TOPO},
        "sim.topology",
        "inline device, router tables are not allowed",
    ),
    "group-var-missing": (
        TOPO + '[[step-group]]\nname = "g"\n[[step-group.step]]\naction = "run"\ndevice = '
        '"${group.dev}"\ncmd = ["x"]\n[[step]]\nuse = "g"\nvars = { device = "client" }\n',
        {},
        "step[0].vars",
        "vars has no 'dev'",
    ),
    "unknown-binary": (
        TOPO + '[[step]]\ndevice = "client"\ncmd = ["${binary.relay}"]\n',
        {},
        "step[0].cmd",
        "names no declared binary",
    ),
    "binary-no-source": ('[[binary]]\nname = "x"\n', {}, "binary.x", "has no source"),
    "interface-unknown": (
        TOPO + '[[step]]\naction = "link-down"\ndevice = "client"\ninterface = "eth9"\n',
        {},
        "step[0].interface",
        "client has no interface 'eth9'",
    ),
    "spawn-without-id": (
        TOPO + '[[step]]\naction = "spawn"\ndevice = "client"\ncmd = ["x"]\n',
        {},
        "step[0].id",
        "a spawn step needs an id",
    ),
    "bad-regex": (
        TOPO + STEP_ON.format(dev="client") + '[step.captures.x]\nregex = "("\n',
        {},
        "step[0].captures.x.regex",
        "bad regex",
    ),
    "iface-name-too-long": (
        '[[router]]\nname = "dc"\n[device.d.averyveryverylongname]\ngateway = "dc"\n',
        {},
        "device.d.averyveryverylongname",
        "at most 15",
    ),
}


@pytest.mark.parametrize(("text", "extra", "key", "message"), BROKEN.values(), ids=BROKEN)
def test_broken_sims(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, extra: dict, key: str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    for rel, body in extra.items():
        write(tmp_path / rel, body)
    sim = write(tmp_path / "sims" / "s.toml", text)
    with pytest.raises(SimError) as err:
        reader.load_sim(sim, strict=True)
    shown = str(err.value)
    assert err.value.key == key, shown
    assert f": {key}: " in shown and message in shown, shown
    assert err.value.path.startswith("sims/"), shown


def test_toml_error_names_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "sims" / "s.toml", '[sim]\nname = "x"\n\n[[step]]\ncmd = [1, 2]]\n')
    with pytest.raises(SimError) as err:
        reader.load_sim("sims/s.toml", strict=False)
    assert str(err.value).startswith("sims/s.toml:5:")
    assert "invalid TOML (line 5, column" in str(err.value)


UNKNOWN_KEYS = {
    "sim": ('[sim]\nname = "s"\ntopolgy = "x"\n', "sim.topolgy"),
    "top": ("[[steps]]\nx = 1\n", "steps"),
    "router": ('[[router]]\nname = "r"\nnatt = "home"\n', "router.r.natt"),
    "device": (
        '[[router]]\nname = "r"\n[device.d]\ncnt = 2\n[device.d.e0]\ngateway = "r"\n',
        "device.d.cnt",
    ),
    "iface": (
        '[[router]]\nname = "r"\n[device.d.e0]\ngateway = "r"\nimpar = "wifi"\n',
        "device.d.e0.impar",
    ),
    "step": (TOPO + '[[step]]\ndevice = "client"\ncmd = ["x"]\ntimout = "1s"\n', "step[0].timout"),
    "step-wrong-action": (
        TOPO + '[[step]]\ndevice = "client"\ncmd = ["x"]\nduration = "1s"\n',
        "step[0].duration",
    ),
    "capture": (
        TOPO + STEP_ON.format(dev="client") + '[step.captures.x]\nregx = "a"\n',
        "step[0].captures.x.regx",
    ),
    "binary": ('[[binary]]\nname = "b"\npath = "x"\nfeature = ["a"]\n', "binary.b.feature"),
    "template": ('[[step-template]]\nname = "t"\ncmdd = ["x"]\n', "step-template.t.cmdd"),
    "results": (
        TOPO + STEP_ON.format(dev="client") + '[step.results]\nbytes = "client.x"\n',
        "step[0].results.bytes",
    ),
}


@pytest.mark.parametrize(("text", "key"), UNKNOWN_KEYS.values(), ids=UNKNOWN_KEYS)
def test_unknown_keys_strict_and_lenient(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, key: str
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "sims" / "s.toml", text)
    with pytest.raises(SimError) as err:
        reader.load_sim(path, strict=True)
    assert err.value.key == key
    assert "unknown key" in str(err.value) or "does not apply" in str(err.value)
    sim = reader.load_sim(path, strict=False)
    assert len(sim.warnings) == 1 and f"sims/s.toml: {key}: " in sim.warnings[0]


def test_binaries_of_ignores_steps(tmp_path: Path) -> None:
    # Host staging needs only the binaries; a broken step is sim.check's business.
    path = write(
        tmp_path / "s.toml",
        '[[binary]]\nname = "a"\nurl = "http://h/a"\n[[step]]\naction = "nope"\n',
    )
    assert reader.binaries_of(path)["a"].mode == "fetch"
