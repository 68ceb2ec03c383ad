"""The builtin runner for real on this host (root, network namespaces): the corpus sims
that need no cargo build, sims of our own for every action, the run folder, failures,
interruptions (SIGINT, stdin EOF), two runners at once, inspect + run-in.

The runner runs as a subprocess, `python -m patchbay_vm_tasks.simrunner`, several sims
per invocation to keep the module short.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
    pytest.mark.skipif(
        not all(shutil.which(t) for t in ("ip", "tc", "nft", "iperf3", "ping", "openssl")),
        reason="needs ip, tc, nft, iperf3, ping and openssl",
    ),
]

RUNNER = [sys.executable, "-m", "patchbay_vm_tasks.simrunner"]
MARK = "31.4159"  # `sleep 31.4159`: finds our children in /proc if any were left behind


def runner(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*RUNNER, *args], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        **kw,
    )  # fmt: skip


def stray_processes(marker: str = MARK) -> list[str]:
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        # Not a test run's own command line that names one (pytest here, or a VM test's
        # `invoke sim.exec ... -- sleep 31.4159` running beside this suite).
        if marker in cmd and "pytest" not in cmd and " -m invoke " not in cmd:
            out.append(f"{pid}: {cmd}")
    return out


def namespaces() -> list[str]:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.strip()]


def lab_namespaces(sim_dir: Path) -> list[str]:
    prefix = json.loads((sim_dir / "state.json").read_text())["lab_prefix"]
    return [ns for ns in namespaces() if ns.startswith(prefix + "-")]


def write_sim(folder: Path, name: str, body: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f'[sim]\nname = "{name}"\n' + textwrap.dedent(body))
    return path


ONE_ROUTER = """
[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"
[device.b.eth0]
gateway = "dc"
"""


def has_netem() -> bool:
    """This host's kernel may lack sch_netem (then latency conditions cannot work)."""
    ns = f"exnetem{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True, capture_output=True)
        subprocess.run(
            ["ip", "-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1"],
            check=True,
            capture_output=True,
        )
        r = subprocess.run(
            ["tc", "-n", ns, "qdisc", "add", "dev", "v0", "root", "netem", "delay", "1ms"],
            capture_output=True,
        )
        return r.returncode == 0
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- sims of our own ----------------------------------------------------------------------------

CERTS_FILES = (
    ONE_ROUTER
    + r"""
[[step]]
action = "gen-certs"
id     = "relay-cert"
device = "a"
san    = ["relay.test", "192.0.2.7"]

[[step]]
action  = "gen-file"
id      = "cfg"
content = "cert = ${relay-cert.cert_pem_path}\nip = $NETSIM_IP_a\n"

[[step]]
action = "run"
id     = "x509"
device = "a"
cmd    = ["openssl", "x509", "-in", "${relay-cert.cert_pem_path}", "-noout", "-subject",
          "-ext", "subjectAltName"]
[step.captures.san]
regex = "((?:IP Address|DNS):.*)"
[step.captures.cn]
regex = "subject=\\s*CN\\s*=\\s*(\\S+)"

[[step]]
action = "run"
id     = "cat"
device = "b"
cmd    = ["cat", "${cfg.path}"]
[step.captures.ip]
regex = "ip = (\\S+)"
[step.captures.cert]
regex = "cert = (\\S+)"

[[step]]
action = "assert"
checks = [
  "x509.san contains IP Address:198.18.1.2",
  "x509.san contains DNS:relay.test",
  "x509.san contains IP Address:192.0.2.7",
  "x509.cn == patchbay",
  "cat.ip == 198.18.1.2",
  "cat.cert matches certs/relay-cert/cert.pem$",
]
"""
)

CAPTURES = (
    ONE_ROUTER
    + r"""
[[step]]
action = "spawn"
id     = "srv"
device = "a"
parser = "ndjson"
cmd    = ["sh", "-c", "echo token=abc123; echo '{\"kind\":\"x\",\"addr\":\"\"}'; sleep 0.3"]
[step.captures.token]
regex = "token=(\\w+)"
[step.captures.addr]
match = { kind = "x" }
pick  = ".addr"

[[step]]
action   = "run"
id       = "use"
device   = "b"
requires = ["srv.token"]
cmd      = ["echo", "${srv.token}", "--remote", "${srv.addr}", "end"]
[step.captures.line]
regex = "^(.*)$"

[[step]]
action = "run"
id     = "env"
device = "b"
env    = { GREETING = "hi $NETSIM_IP_a" }
cmd    = ["sh", "-c", "echo $GREETING $NETSIM_IP_b"]
[step.captures.line]
regex = "^(hi .*)$"

[[step]]
action = "wait-for"
id     = "srv"

[[step]]
action = "assert"
checks = ["use.line == abc123 end", "env.line == hi 198.18.1.2 198.18.1.3", "srv.addr == "]
"""
)

RATE_LIMIT = """
[[router]]
name = "dc"
[device.server.eth0]
gateway = "dc"
[device.client.eth0]
gateway = "dc"

[[step]]
action    = "set-link-condition"
device    = "client"
condition = { rate_kbit = 8000 }

[[step]]
action      = "spawn"
id          = "iperf-server"
device      = "server"
cmd         = ["iperf3", "-s", "-1"]
ready_after = "500ms"

[[step]]
action = "run"
id     = "iperf"
device = "client"
parser = "json"
cmd    = ["iperf3", "-c", "$NETSIM_IP_server", "-t", "3", "-J"]
[step.captures.bytes]
pick = ".end.sum_received.bytes"
[step.captures.seconds]
pick = "end.sum_received.seconds"
[step.results]
duration   = "iperf.seconds"
down_bytes = "iperf.bytes"

[[step]]
action = "wait-for"
id     = "iperf-server"
"""

SWITCH = """
[[router]]
name = "r1"
[[router]]
name = "r2"
[device.server.eth0]
gateway = "r1"
[device.multi.eth0]
gateway = "r1"
[device.multi.eth1]
gateway = "r2"

[[step]]
action    = "link-down"
device    = "multi"
interface = "eth1"

[[step]]
action = "run"
id     = "ping0"
device = "multi"
cmd    = ["ping", "-c", "1", "-W", "2", "$NETSIM_IP_server"]

[[step]]
action    = "link-up"
device    = "multi"
interface = "eth1"

[[step]]
action = "set-default-route"
device = "multi"
to     = "eth1"

[[step]]
action    = "link-down"
device    = "multi"
interface = "eth0"

[[step]]
action = "run"
id     = "route"
device = "multi"
cmd    = ["ip", "route", "get", "$NETSIM_IP_server"]
[step.captures.dev]
regex = "dev (\\\\S+)"

[[step]]
action = "run"
id     = "ping1"
device = "multi"
cmd    = ["ping", "-c", "1", "-W", "2", "$NETSIM_IP_server"]

[[step]]
action = "assert"
check  = "route.dev == eth1"
"""

FAILING = {
    "fail-assert": ONE_ROUTER
    + """
        [[step]]
        action = "run"
        id     = "e"
        device = "a"
        cmd    = ["echo", "hello"]
        [step.captures.word]
        regex = "(\\\\w+)"
        [[step]]
        action = "assert"
        checks = ["e.word matches ^h", "e.word == bye"]
    """,
    "fail-exit": ONE_ROUTER
    + """
        [[step]]
        action = "run"
        id     = "boom"
        device = "b"
        cmd    = ["sh", "-c", "echo oops >&2; exit 3"]
    """,
    "fail-spawn-exit": ONE_ROUTER
    + """
        [[step]]
        action = "spawn"
        id     = "bad"
        device = "a"
        cmd    = ["sh", "-c", "exit 4"]
        [[step]]
        action = "wait-for"
        id     = "bad"
    """,
    "fail-waitfor": ONE_ROUTER
    + f"""
        [[step]]
        action = "spawn"
        id     = "sl"
        device = "a"
        cmd    = ["sleep", "{MARK}"]
        [[step]]
        action  = "wait-for"
        id      = "sl"
        timeout = "1s"
    """,
    "fail-step-timeout": ONE_ROUTER
    + f"""
        [[step]]
        action  = "run"
        id      = "slow"
        device  = "a"
        cmd     = ["sleep", "{MARK}"]
        timeout = "1s"
    """,
    "fail-deadline": ONE_ROUTER
    + """
        [[step]]
        action   = "wait"
        duration = "20s"
    """,
    "fail-binary": ONE_ROUTER
    + """
        [[binary]]
        name    = "tool"
        mode    = "target"
        example = "not-built"
        [[step]]
        action = "run"
        id     = "t"
        device = "a"
        cmd    = ["${binary.tool}"]
    """,
    "pass-echo": ONE_ROUTER
    + """
        [[step]]
        action = "run"
        id     = "hi"
        device = "a"
        cmd    = ["echo", "hi there"]
    """,
}

SLOW = (
    ONE_ROUTER
    + f"""
[[step]]
action = "spawn"
id     = "sl"
device = "a"
cmd    = ["sleep", "{MARK}"]

[[step]]
action = "run"
id     = "up"
device = "b"
cmd    = ["echo", "lab is up"]

[[step]]
action   = "wait"
duration = "60s"
"""
)


# Stand-ins for iroh's `transfer` example and `iroh-relay`, so that the iroh corpus sims
# (templates, groups, extends, counted devices, NAT topologies, requires) run here.
STAND_IN_RELAY = f"""#!/bin/sh
echo "relay: serving on 0.0.0.0:3340" >&2
cat "$2"
exec sleep {MARK}
"""
STAND_IN_TRANSFER = f"""#!/bin/sh
case "$3" in
provide)
  echo '{{"kind":"EndpointBound","endpoint_id":"ep123","direct_addresses":["198.18.1.2:1234"]}}'
  exec sleep {MARK};;
fetch)
  echo "args: $*" >&2
  echo '{{"kind":"ConnectionTypeChanged","status":"Selected","addr":"a","conn_type":"direct"}}'
  echo '{{"kind":"DownloadCompleted","size":1000000,"duration":500000}}';;
esac
"""


def stand_ins(folder: Path) -> list[str]:
    args = []
    for name, text in (("relay", STAND_IN_RELAY), ("transfer", STAND_IN_TRANSFER)):
        path = folder / name
        path.write_text(text)
        path.chmod(0o755)
        args += ["--binary", f"{name}:path:{path}"]
    return args


# --- the passing invocation -----------------------------------------------------------------------


@dataclass
class Run:
    proc: subprocess.CompletedProcess
    root: Path
    seconds: float


@pytest.fixture(scope="module")
def netem() -> bool:
    return has_netem()


@pytest.fixture(scope="module")
def passing(tmp_path_factory: pytest.TempPathFactory, netem: bool, corpus_dir: Path) -> Run:
    corpus = corpus_dir
    own = tmp_path_factory.mktemp("own-sims")
    sims = [
        corpus / "ui-fixtures" / "iperf-e2e.toml",
        *sorted((corpus / "sims").glob("*.toml")),  # iperf-1to1-*, iroh-* (stand-ins)
        write_sim(own, "certs-files", CERTS_FILES),
        write_sim(own, "captures", CAPTURES),
        write_sim(own, "rate-limit", RATE_LIMIT),
        write_sim(own, "switch", SWITCH),
    ]
    if netem:
        sims.append(corpus / "ui-fixtures" / "ping-e2e.toml")
    work = tmp_path_factory.mktemp("work")
    t0 = time.monotonic()
    binaries = stand_ins(own)
    proc = runner("run", "--work-dir", str(work), *binaries, *map(str, sims))
    return Run(proc, (work / "latest").resolve(), time.monotonic() - t0)


def sim_dirs(run: Run) -> dict[str, Path]:
    return {p.name: p for p in run.root.iterdir() if p.is_dir()}


def test_passing_sims_all_pass(passing: Run) -> None:
    assert passing.proc.returncode == 0, passing.proc.stdout + passing.proc.stderr
    lines = passing.proc.stdout.splitlines()
    assert "[iperf-e2e] step 1 iperf-client run client ok" in "\n".join(lines)
    assert re.search(r"^\[switch\] step 6 ping1 run multi ok \d+\.\d+s$", passing.proc.stdout, re.M)
    assert any(re.fullmatch(r"\[certs-files\] ok \d+\.\d+s", ln) for ln in lines)
    print(passing.proc.stdout)  # the per-sim times, for the report


def results(run: Run, sim: str) -> dict:
    return json.loads((sim_dirs(run)[sim] / "results.json").read_text())


def test_iperf_e2e_moves_bytes(passing: Run) -> None:
    (step,) = results(passing, "iperf-e2e")["steps"]
    assert step["id"] == "iperf-client"
    assert int(step["down_bytes"]) > 0 and float(step["duration"]) > 1


def test_corpus_iperf_sims(passing: Run) -> None:
    tcp = results(passing, "iperf-1to1-public-baseline")["steps"][0]
    udp = results(passing, "iperf-1to1-udp")["steps"][0]
    assert int(tcp["down_bytes"]) > 0 and int(udp["down_bytes"]) > 0
    assert float(tcp["duration"]) == pytest.approx(10, abs=0.5)
    md = (passing.root / "combined-results.md").read_text()
    assert "| iperf-1to1-udp | 1 |" in md


def test_iroh_corpus_sims_with_stand_ins(passing: Run) -> None:
    """Interpolation of captures across steps, groups, templates, counts and NAT labs."""
    for sim in ("iroh-1to1-public", "iroh-1to1-nat", "iroh-1to1-nat-switch"):
        (step,) = results(passing, sim)["steps"]
        assert step == {
            "id": "fetcher", "duration": "500000", "up_bytes": None, "down_bytes": "1000000",
            "latency_ms": None,
        }  # fmt: skip
    assert [s["id"] for s in results(passing, "iroh-1to10-public")["steps"]] == [
        f"fetcher-{i}" for i in range(10)
    ]
    d = sim_dirs(passing)["iroh-1to1-nat-switch"]
    args = (d / "device.fetcher.fetcher.stderr.log").read_text()
    assert "fetch --env dev ep123 --relay-url https://" in args
    config = (d / "files" / "relay-cfg" / "content").read_text()
    assert f'manual_cert_path = "{d}/certs/relay-cert/cert.pem"' in config
    assert "relay: serving on" in (d / "device.relay.relay.stderr.log").read_text()
    public = sim_dirs(passing)["iroh-1to1-public"]
    assert (
        "--remote-direct-address 198.18.1.2:1234"
        in (public / "device.fetcher.fetcher.stderr.log").read_text()
    )
    assert not stray_processes()  # the never-waited providers and relays were killed


def test_ping_e2e_latency(passing: Run, netem: bool) -> None:
    if not netem:
        pytest.skip("this kernel has no sch_netem: latency conditions cannot be applied here")
    (step,) = results(passing, "ping-e2e")["steps"]
    assert 100 <= float(step["latency_ms"]) < 200


def test_rate_limit_measured_by_iperf(passing: Run) -> None:
    (step,) = results(passing, "rate-limit")["steps"]
    mb_s = int(step["down_bytes"]) / (float(step["duration"]) * 1e6)
    assert 0.5 < mb_s < 1.2, mb_s  # 8000 kbit/s = 1 MB/s
    events = [json.loads(ln) for ln in (sim_dirs(passing)["rate-limit"] / "events.jsonl").open()]
    assert any(e["kind"] == "link_condition_changed" for e in events)


def test_link_down_up_and_default_route(passing: Run) -> None:
    d = sim_dirs(passing)["switch"]
    assert (d / "device.multi.route.stdout.log").read_text().split()[1:3] == ["via", "198.18.2.1"]
    kinds = [json.loads(ln)["kind"] for ln in (d / "events.jsonl").open()]
    assert kinds.count("link_down") == 2 and kinds.count("link_up") == 1


def test_run_folder_layout(passing: Run) -> None:
    root = passing.root
    work = root.parent
    assert os.readlink(work / "latest") == root.name  # relative
    assert re.fullmatch(r"sim-\d{6}-\d{6}(-\d+)?", root.name)
    ts = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

    progress = json.loads((root / "progress.json").read_text())
    assert progress["run"] == root.name and progress["status"] == "done"
    assert ts.fullmatch(progress["started_at"]) and ts.fullmatch(progress["updated_at"])
    n = len(progress["simulations"])
    assert n == len(sim_dirs(passing)) > 0
    assert (progress["total"], progress["completed"], progress["ok"], progress["error"]) == (
        n, n, n, 0,
    )  # fmt: skip
    assert progress["current_sim"] is None
    for s in progress["simulations"]:
        assert set(s) == {"sim", "status", "sim_dir", "runtime_ms", "sim_json", "error"}
        assert s["status"] == "ok" and (root / s["sim_json"]).is_file()

    manifest = json.loads((root / "manifest.json").read_text())
    for key in ("run", "started_at", "status", "ended_at", "runtime_ms", "success"):
        assert key in manifest
    assert manifest["success"] is True and ts.fullmatch(manifest["ended_at"])
    assert manifest["runner"]["name"] == "builtin"
    assert {"os", "arch", "kernel"} <= set(manifest["environment"])
    assert manifest["environment"]["kernel"] == os.uname().release
    assert manifest["simulations"] == progress["simulations"]

    combined = json.loads((root / "combined-results.json").read_text())
    assert {r["sim"] for r in combined["runs"]} >= {"iperf-e2e", "rate-limit"}
    for r in combined["runs"]:
        assert set(r) == {"run", "sim_dir", "sim", "steps"} and r["run"] == root.name
    md = (root / "combined-results.md").read_text()
    assert md.startswith("| Sim | N | Max Down (MB/s) | Max Up (MB/s) |")

    for name, d in sim_dirs(passing).items():
        sim = json.loads((d / "sim.json").read_text())
        assert sim["status"] == "ok" and sim["error"] is None and sim["sim_dir"] == name
        assert set(sim["setup"]) >= {
            "sim_path", "topology_ref", "topology_mode", "routers", "devices", "regions", "steps",
        }  # fmt: skip
        state = json.loads((d / "state.json").read_text())
        assert state["status"] == "stopped" and state["label"] == sim["sim"]
        for key in ("opid", "lab_prefix", "created_at", "ix", "routers", "devices", "regions"):
            assert key in state
        events = [json.loads(ln) for ln in (d / "events.jsonl").read_text().splitlines()]
        assert [e["opid"] for e in events] == list(range(1, len(events) + 1))
        assert events[0]["kind"] == "lab_created" and events[0]["label"] == sim["sim"]
        assert {"router_added", "device_added"} <= {e["kind"] for e in events}
        assert not lab_namespaces(d)
        has_results = (d / "results.json").exists()
        assert has_results == (d / "results.md").exists()
    corpus_sim = json.loads((sim_dirs(passing)["iperf-1to1-udp"] / "sim.json").read_text())
    assert corpus_sim["setup"]["topology_ref"] == "1to1-public"
    assert corpus_sim["setup"]["topology_mode"] == "external"
    files = sim_dirs(passing)["certs-files"]
    assert (files / "certs" / "relay-cert" / "cert.pem").is_file()
    assert (files / "certs" / "relay-cert" / "key.pem").is_file()
    assert "ip = 198.18.1.2" in (files / "files" / "cfg" / "content").read_text()
    assert (files / "device.a.x509.stdout.log").is_file()


# --- failures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failing(tmp_path_factory: pytest.TempPathFactory) -> Run:
    own = tmp_path_factory.mktemp("failing-sims")
    sims = [write_sim(own, name, body) for name, body in FAILING.items()]
    work = tmp_path_factory.mktemp("work")
    t0 = time.monotonic()
    proc = runner("run", "-v", "--timeout", "5s", "--work-dir", str(work), *map(str, sims))
    return Run(proc, (work / "latest").resolve(), time.monotonic() - t0)


def error_of(run: Run, sim: str) -> dict:
    return json.loads((run.root / sim / "sim.json").read_text())["error"]


def test_failing_run_exits_1_and_names_each_failure(failing: Run) -> None:
    assert failing.proc.returncode == 1, failing.proc.stderr
    err = failing.proc.stderr
    assert err.startswith("one or more simulations failed:")
    assert f"see {failing.root}/manifest.json" in err
    assert "- fail-assert (fail-assert): assert FAILED: 'e.word' (got 'hello') == 'bye'" in err
    assert "pass-echo" not in err
    manifest = json.loads((failing.root / "manifest.json").read_text())
    assert manifest["success"] is False
    assert {s["sim"]: s["status"] for s in manifest["simulations"]}["pass-echo"] == "ok"
    assert not stray_processes()


def test_assert_failure_names_step_and_message(failing: Run) -> None:
    assert error_of(failing, "fail-assert") == {
        "phase": "step",
        "message": "assert FAILED: 'e.word' (got 'hello') == 'bye'",
        "step": {"index": 1, "action": "assert", "id": None, "device": None},
    }
    assert not (failing.root / "fail-assert" / "results.json").exists()


def test_run_nonzero_exit_fails(failing: Run) -> None:
    e = error_of(failing, "fail-exit")
    assert e["step"] == {"index": 0, "action": "run", "id": "boom", "device": "b"}
    assert "exited with code 3" in e["message"]
    assert "device.b.boom.stderr.log" in e["message"]
    assert (failing.root / "fail-exit" / "device.b.boom.stderr.log").read_text() == "oops\n"


def test_waited_spawn_exiting_nonzero_fails(failing: Run) -> None:
    e = error_of(failing, "fail-spawn-exit")
    assert e["step"]["action"] == "wait-for" and "exited with code 4" in e["message"]


def test_spawn_outliving_wait_for_timeout(failing: Run) -> None:
    e = error_of(failing, "fail-waitfor")
    assert e["message"] == "wait-for 'sl' timed out after 1s"
    assert e["step"] == {"index": 1, "action": "wait-for", "id": "sl", "device": None}


def test_step_timeout_kills_and_fails(failing: Run) -> None:
    e = error_of(failing, "fail-step-timeout")
    assert e["message"] == "'run' on 'a' timed out after 1s"
    # Cut off, not run to its end: the whole sim took less than the command's own sleep.
    sim = json.loads((failing.root / "fail-step-timeout" / "sim.json").read_text())
    assert sim["runtime_ms"] < float(MARK) * 1000


def test_unresolvable_binary_fails_its_step(failing: Run) -> None:
    e = error_of(failing, "fail-binary")
    assert e["step"]["id"] == "t"
    assert e["message"].startswith("binary 'tool' (target mode) not found in ")
    assert "-unknown-linux-musl/release/examples/not-built" in e["message"]


def test_sim_deadline(failing: Run) -> None:
    e = error_of(failing, "fail-deadline")
    assert e["message"] == "sim timeout of 5s reached (--timeout)"
    assert e["step"]["action"] == "wait"


def test_verbose_streams_node_output(failing: Run) -> None:
    assert "a         out: hi there" in failing.proc.stdout.splitlines()
    assert "b         err: oops" in failing.proc.stdout.splitlines()


def test_unusable_input_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sim\nname = 1\n")
    proc = runner("run", "--work-dir", str(tmp_path / "w"), str(bad), timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: "), proc.stderr
    proc = runner("run", "--work-dir", str(tmp_path / "w"), str(tmp_path / "nope"), timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    proc = runner("run", "--timeout", "5h", str(bad), timeout=60)
    assert proc.returncode == 2 and "duration" in proc.stderr


def test_a_binary_given_only_on_the_command_line(tmp_path: Path) -> None:
    sim = write_sim(tmp_path, "cli-binary", ONE_ROUTER + """
        [[step]]
        action = "run"
        device = "a"
        cmd = ["${binary.tool}", "ok"]
    """)  # fmt: skip
    proc = runner("run", "--work-dir", str(tmp_path / "w"), "--binary", "tool:path:/bin/echo",
                  str(sim), timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- interruptions, concurrency, inspect ---------------------------------------------------


def start_runner(work: Path, sims: list[Path], *extra: str, stdin=subprocess.DEVNULL):
    return subprocess.Popen(
        [*RUNNER, "run", "--work-dir", str(work), *extra, *map(str, sims)],
        stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for_line(proc: subprocess.Popen, pattern: str, timeout: float = 60) -> str:
    """Read stdout lines until one matches (the runner flushes every line)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        line = proc.stdout.readline()
        if not line:
            break
        if re.search(pattern, line):
            return line
    raise AssertionError(f"no line matching {pattern!r}")


@pytest.mark.parametrize("how", ["sigint", "stdin-eof"])
def test_interrupted_run_cleans_up(tmp_path: Path, how: str) -> None:
    sims = [write_sim(tmp_path, "slow", SLOW), write_sim(tmp_path, "zz-never", SLOW)]
    work = tmp_path / "work"
    if how == "sigint":
        proc = start_runner(work, sims)
    else:
        proc = start_runner(work, sims, "--watch-stdin", stdin=subprocess.PIPE)
    try:
        wait_for_line(proc, r"^\[slow\] step 1 up run b ok")
        sim_dir = work / "latest" / "slow"
        assert lab_namespaces(sim_dir) and stray_processes()  # the lab is up
        if how == "sigint":
            proc.send_signal(signal.SIGINT)
        else:
            proc.stdin.close()
        proc.wait(60)  # liveness only: the sim's own wait step lasts 60 s
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:  # SIGTERM still cleans up; SIGKILL would leave the lab
            proc.terminate()
            proc.wait(30)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not lab_namespaces(sim_dir) and not stray_processes()
    sim = json.loads((sim_dir / "sim.json").read_text())
    assert sim["status"] == "error" and sim["error"]["phase"] == "interrupted"
    assert json.loads((sim_dir / "state.json").read_text())["status"] == "stopped"
    manifest = json.loads((work / "latest" / "manifest.json").read_text())
    assert manifest["success"] is False and manifest["interrupted"] is True
    assert [s["status"] for s in manifest["simulations"]] == ["error", "pending"]
    assert not (work / "latest" / "zz-never").exists()


def test_two_runners_get_their_own_folders(tmp_path: Path) -> None:
    sim = write_sim(tmp_path, "quick", ONE_ROUTER + '[[step]]\naction = "wait"\nduration = "1s"\n')
    work = tmp_path / "work"
    procs = [start_runner(work, [sim]) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    roots = {re.search(r"^run folder (\S+)$", o, re.M).group(1) for o, _ in outs}
    assert len(roots) == 2
    for root in roots:
        assert json.loads((Path(root) / "quick" / "sim.json").read_text())["status"] == "ok"
    assert str((work / "latest").resolve()) in roots


@pytest.fixture
def inspect_lab(tmp_path: Path) -> Iterator[tuple[subprocess.Popen, Path, dict[str, str]]]:
    sim = write_sim(tmp_path, "insp", ONE_ROUTER)
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [*RUNNER, "inspect", "--work-dir", str(work), str(sim)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    exports: dict[str, str] = {}
    try:
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if line.startswith("# lab up"):
                break
            m = re.fullmatch(r"export (\w+)=(\S+)\n", line)
            assert m, line
            exports[m[1]] = m[2]
        yield proc, work, exports
    finally:
        if proc.stdin and not proc.stdin.closed:
            proc.stdin.close()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_inspect_and_run_in(inspect_lab) -> None:
    proc, work, exports = inspect_lab
    assert exports["NETSIM_IP_A"] == "198.18.1.2" and exports["NETSIM_IP_B"] == "198.18.1.3"
    assert {"NETSIM_NS_A", "NETSIM_NS_B", "NETSIM_NS_DC"} <= set(exports)
    assert (work / "inspect" / "insp.env").read_text().count("export ") == len(exports)
    info = json.loads((work / "inspect" / "insp.json").read_text())
    assert info["nodes"]["a"]["ns"] == exports["NETSIM_NS_A"]

    ping = runner("run-in", "--work-dir", str(work), "a", "--", "ping", "-c", "1", "-W", "2",
                  exports["NETSIM_IP_B"], timeout=30)  # fmt: skip
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert "1 received" in ping.stdout
    assert runner("run-in", "--work-dir", str(work), "b", "--", "false", timeout=30).returncode == 1
    missing = runner("run-in", "--work-dir", str(work), "zz", "--", "true", timeout=30)
    assert missing.returncode == 2 and "no running inspect lab" in missing.stderr

    proc.stdin.close()  # the host going away ends inspect
    assert proc.wait(20) == 0
    assert exports["NETSIM_NS_A"] not in namespaces()
    assert not (work / "inspect" / "insp.json").exists()


def test_ctrl_c_reaches_a_command_started_with_run_in(inspect_lab) -> None:
    proc, work, _ = inspect_lab
    cmd = subprocess.Popen(
        [*RUNNER, "run-in", "--work-dir", str(work), "a", "--", "sleep", MARK],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        end = time.monotonic() + 30
        while not stray_processes() and time.monotonic() < end:
            time.sleep(0.1)
        assert stray_processes(), "the command never started in the node"
        cmd.send_signal(signal.SIGINT)  # to run-in, as the host's Ctrl-C sends it
        assert cmd.wait(60) == 130, cmd.stderr.read()  # 60: CI's cores are shared
    finally:
        if cmd.poll() is None:
            cmd.kill()
    assert not stray_processes()
    assert proc.poll() is None  # the lab stays up


def test_host_ctrl_c_stops_the_inspect_runner_behind_its_wrappers(tmp_path: Path) -> None:
    """As the host runs it: `sudo -n sh -c "env ID runner inspect"`, then the stopper
    (guestrun.interrupt_argv), itself under sudo with the id in its SUDO_COMMAND."""
    from patchbay_vm_tasks.sim import guestrun

    run_id = "feedc0ffee"
    entry = f"{guestrun.RUN_ID_VAR}={run_id}"
    sim = write_sim(tmp_path, "insp", ONE_ROUTER)
    work = tmp_path / "work"
    inner = shlex.join(["env", entry, *RUNNER, "inspect", "--work-dir", str(work), str(sim)])
    env = dict(os.environ, SUDO_COMMAND=f"/usr/bin/sh -c {inner}")
    proc = subprocess.Popen(
        ["sh", "-c", inner], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_line(proc, r"^# lab up")
        lab = json.loads((work / "inspect" / "insp.json").read_text())
        stopper = guestrun.interrupt_argv(run_id)
        out = subprocess.run(stopper, env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        reported = [line.split(" ", 1) for line in out.stdout.splitlines()]
        runner_argv = [*RUNNER, "inspect", "--work-dir", str(work), str(sim)]
        assert [(int(pid), json.loads(args)) for pid, args in reported] == [
            (lab["pid"], runner_argv)
        ]
        assert proc.wait(20) == 0, proc.stderr.read()  # inspect ends normally when stopped
    finally:
        if proc.poll() is None:
            proc.stdin.close()
            proc.wait(20)
    assert not any(node["ns"] in namespaces() for node in lab["nodes"].values())
    assert not (work / "inspect" / "insp.json").exists()
