"""The builtin runner end to end in the shared guest: the README's main command, the
corpus and our own NAT/region/link sims through `sim.run`, Ctrl-C, `--timeout`,
`sim.inspect` + `sim.exec`, two runs at once, and the netem checks of the host's
namespace tests, which this host's kernel (no sch_netem) cannot run."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import corpus_path
from vmfixtures import LONG_SIM, REPO, TIMINGS, VmEnv

pytestmark = pytest.mark.vm

DEAD_RELEASES = "http://127.0.0.1:9/releases"  # nothing listens on the discard port

# Routers on the IX in build order (sorted by name): dc .10, home .11, isp .12; cghome
# hangs off isp's LAN. A public peer must see home's and isp's IX addresses.
NAT = """
[sim]
name = "nat-seen-from-outside"

[[router]]
name = "dc"
[[router]]
name = "home"
nat = "home"
[[router]]
name = "isp"
nat = "cgnat"
[[router]]
name = "cghome"
nat = "home"
upstream = "isp"

[device.server.eth0]
gateway = "dc"
[device.client.eth0]
gateway = "home"
[device.cgclient.eth0]
gateway = "cghome"

[[step]]
action = "spawn"
id = "srv"
device = "server"
cmd = ["python3", "-c", '''
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 7000))
print("listening", flush=True)
seen = set()
while len(seen) < 2:
    data, addr = s.recvfrom(100)
    if data not in seen:
        seen.add(data)
        print(data.decode(), addr[0], flush=True)
''']
[step.captures.listening]
regex = "listening"
[step.captures.home_seen]
regex = "from-home (\\\\S+)"
[step.captures.cg_seen]
regex = "from-cg (\\\\S+)"

# Sent a few times: UDP, and a loaded emulated guest.
[[step-template]]
name = "send"
action = "run"
requires = ["srv.listening"]
cmd = ["python3", "-c", '''
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(5):
    s.sendto(sys.argv[1].encode(), (sys.argv[2], 7000))
    time.sleep(0.3)
''']

[[step]]
use = "send"
device = "client"
args = ["from-home", "$NETSIM_IP_server"]

[[step]]
use = "send"
device = "cgclient"
args = ["from-cg", "$NETSIM_IP_server"]

[[step]]
action = "wait-for"
id = "srv"
timeout = "60s"

[[step]]
action = "assert"
checks = ["srv.home_seen == 198.18.0.11", "srv.cg_seen == 198.18.0.12"]
"""

# eu <-> us 20 ms each way, eu <-> asia 60, us <-> asia 40; eu2 shares eu's region.
REGIONS = r"""
[sim]
name = "regions"

[region.eu]
latencies = { us = 20, asia = 60 }
[region.us]
latencies = { eu = 20, asia = 40 }
[region.asia]
latencies = { eu = 60, us = 40 }

[[router]]
name = "r-eu"
region = "eu"
[[router]]
name = "r-eu2"
region = "eu"
[[router]]
name = "r-us"
region = "us"
[[router]]
name = "r-asia"
region = "asia"

[device.eu.eth0]
gateway = "r-eu"
[device.eu2.eth0]
gateway = "r-eu2"
[device.us.eth0]
gateway = "r-us"
[device.asia.eth0]
gateway = "r-asia"

[[step-template]]
name = "ping"
action = "run"
parser = "text"
cmd = ["ping", "-c", "3", "-i", "0.3"]
[step-template.captures.rtt]
regex = 'rtt min/avg/max/mdev = ([\d.]+)/'
[step-template.results]
latency_ms = ".rtt"

[[step]]
use = "ping"
id = "eu-us"
device = "eu"
args = ["$NETSIM_IP_us"]
[[step]]
use = "ping"
id = "eu-asia"
device = "eu"
args = ["$NETSIM_IP_asia"]
[[step]]
use = "ping"
id = "eu-eu2"
device = "eu"
args = ["$NETSIM_IP_eu2"]
"""

# netem delay and a tbf rate under it, set while the sim runs, measured by iperf3.
LINK = """
[sim]
name = "link-condition"

[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"
[device.b.eth0]
gateway = "dc"

[[step]]
action = "spawn"
id = "server"
device = "b"
cmd = ["iperf3", "-s", "-1"]
ready_after = "1s"

[[step]]
action = "set-link-condition"
device = "b"
condition = { latency_ms = 20, rate_kbit = 4000 }

[[step]]
action = "run"
id = "down"
device = "a"
parser = "json"
cmd = ["iperf3", "-c", "$NETSIM_IP_b", "-t", "3", "-R", "-J"]
[step.captures.bytes]
pick = ".end.sum_received.bytes"
[step.captures.seconds]
pick = ".end.sum_received.seconds"
[step.results]
duration = "down.seconds"
down_bytes = "down.bytes"

[[step]]
action = "wait-for"
id = "server"
"""


def _write(vm: VmEnv, name: str, text: str) -> str:
    path = vm.project / "sims" / "builtin" / f"{name}.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return f"sims/builtin/{name}.toml"


def _guest_leftovers(vm: VmEnv) -> tuple[str, str]:
    """(namespaces, processes of our sims) left in the guest."""
    ns = vm.invoke("vm.ssh", "--", "sudo", "ip", "netns", "list")
    # By process name (-x), so that the pgrep's own shell never matches.
    procs = vm.invoke("vm.ssh", "--", "sh", "-c", "pgrep -ax 'sleep|iperf3' || true")
    return ns.stdout.strip(), procs.stdout.strip()


def _run_folder(out: subprocess.CompletedProcess | str) -> str:
    text = out if isinstance(out, str) else out.stdout
    (line,) = [x for x in text.splitlines() if x.startswith("run folder /work/")]
    return line.removeprefix("run folder /work/")


def test_readme_main_command_falls_back_to_the_builtin_runner(vm: VmEnv) -> None:
    # As on a fresh clone: no runner cached, the release server out of reach.
    shutil.rmtree(vm.work_dir / ".patchbay-cache", ignore_errors=True)
    started = time.monotonic()
    out = vm.invoke(
        "sim.run", "--file", "sims/iperf-baseline.toml", PATCHBAY_RELEASE_URL=DEAD_RELEASES
    )
    TIMINGS["sim.run iperf-baseline, builtin, warm VM (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    notices = [x for x in out.stderr.splitlines() if "using the builtin runner" in x]
    assert len(notices) == 1 and "cannot reach the patchbay release server" in notices[0]
    # A line per step as it ends, then the summary table.
    assert "[iperf-baseline] step 1 download run client ok" in out.stdout
    assert "iperf-baseline  download" in out.stdout
    run = vm.work_dir / _run_folder(out)
    assert (vm.work_dir / "latest").resolve() == run.resolve()
    (step,) = json.loads((run / "iperf-baseline" / "results.json").read_text())["steps"]
    assert step["id"] == "download" and float(step["down_bytes"]) > 1_000_000
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runner"]["name"] == "builtin"
    env = manifest["environment"]
    assert env["accel"] == vm.status()["accel"] and env["qemu_version"][:1].isdigit()
    assert env["kernel"] and env["arch"] == "x86_64"
    assert _guest_leftovers(vm) == ("", "")


@pytest.fixture(scope="module")
def matrix(vm_session: VmEnv) -> tuple[subprocess.CompletedProcess, Path]:
    """One sim.run of the corpus sims that need no iroh binaries and our own sims."""
    vm = vm_session
    corpus = corpus_path()
    if not corpus.is_dir():
        pytest.skip("sim corpus not found; set PATCHBAY_SIM_CORPUS=/path/to/sims-from-patchbay")
    # The guest sees only the workspace: a copy of the corpus there, as a user would have.
    local = vm.project / "corpus"
    shutil.copytree(corpus, local, dirs_exist_ok=True)
    files = [
        "corpus/ui-fixtures",
        "corpus/sims/iperf-1to1-public.toml",
        "corpus/sims/iperf-1to1-udp.toml",
        _write(vm, "nat", NAT),
        _write(vm, "regions", REGIONS),
        _write(vm, "link", LINK),
    ]
    started = time.monotonic()
    out = vm.invoke(
        "sim.run", "--patchbay-version", "builtin", *[x for f in files for x in ("--file", f)],
        "--junit", str(vm.project / "sims.xml"),
    )  # fmt: skip
    TIMINGS["sim.run corpus + own sims, builtin (s)"] = round(time.monotonic() - started, 1)
    return out, vm.work_dir / _run_folder(out)


def _steps(run: Path, sim: str) -> dict[str, dict]:
    data = json.loads((run / sim / "results.json").read_text())
    return {step["id"]: step for step in data["steps"]}


def test_corpus_and_own_sims_pass(matrix, vm: VmEnv) -> None:
    out, run = matrix
    assert out.returncode == 0, out.stdout + out.stderr
    progress = json.loads((run / "progress.json").read_text())
    assert progress["status"] == "done" and progress["ok"] == progress["total"] == 7
    for sim in progress["simulations"]:
        print(sim["sim"], sim["runtime_ms"], "ms")  # the closing note's per-sim times
    assert _guest_leftovers(vm) == ("", "")


def test_corpus_results_are_plausible(matrix) -> None:
    _, run = matrix
    assert float(_steps(run, "iperf-e2e")["iperf-client"]["down_bytes"]) > 0
    for sim in ("iperf-1to1-public-baseline", "iperf-1to1-udp"):
        results = _steps(run, sim)
        assert results, f"{sim}: no step results"
        assert all(float(s.get("down_bytes") or 0) > 0 for s in results.values()), results
    # impair latency_ms = 100 on the sender's link: the RTT grows by it once.
    rtt = float(_steps(run, "ping-e2e")["ping-check"]["latency_ms"])
    assert 100 <= rtt < 200


def test_nat_as_seen_from_outside(matrix) -> None:
    _, run = matrix
    sim = json.loads((run / "nat-seen-from-outside" / "sim.json").read_text())
    assert sim["status"] == "ok", sim["error"]


def test_region_latencies(matrix) -> None:
    _, run = matrix
    steps = _steps(run, "regions")
    assert 40 <= float(steps["eu-us"]["latency_ms"]) < 80  # 20 ms each way
    assert 120 <= float(steps["eu-asia"]["latency_ms"]) < 200  # 60 ms each way
    assert float(steps["eu-eu2"]["latency_ms"]) < 20  # same region: no delay
    assert json.loads((run / "regions" / "sim.json").read_text())["setup"]["regions_applied"]


def test_link_condition_rate_and_delay(matrix) -> None:
    _, run = matrix
    step = _steps(run, "link-condition")["down"]
    mbit = float(step["down_bytes"]) * 8 / float(step["duration"]) / 1e6
    assert 1 < mbit < 6, mbit  # 4000 kbit under a 20 ms netem delay


def test_junit_of_the_run(matrix, vm: VmEnv) -> None:
    junitparser = pytest.importorskip("junitparser")
    xml = junitparser.JUnitXml.fromfile(str(vm.project / "sims.xml"))
    cases = [case for suite in xml for case in suite]
    assert len(cases) == 7 and all(case.is_passed for case in cases)


def _start(vm: VmEnv, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", *args],
        cwd=vm.project,
        env=vm.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _read_until(proc: subprocess.Popen, needle: str, timeout: float = 180) -> list[str]:
    """stdout lines up to the one holding `needle`; a process that never prints it is
    killed after `timeout` (a reader thread, so a silent process cannot hang the test)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        # communicate() later reads (and closes) the same pipe: the end of this thread.
        with contextlib.suppress(ValueError, OSError):
            for line in proc.stdout:
                lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen, end = [], time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if needle in line:
            return seen
    proc.kill()
    raise AssertionError(f"no {needle!r} in {seen}\n{proc.communicate()[1]}")


def test_ctrl_c_reaches_the_guest_runner(vm: VmEnv) -> None:
    sim = _write(vm, "long", LONG_SIM)
    proc = _start(vm, "sim.run", "--patchbay-version", "builtin", "--file", sim)
    _read_until(proc, "step 0 sleeper spawn a ok")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cleaned up in the guest" in err
    assert _guest_leftovers(vm) == ("", "")
    run = vm.work_dir / "latest"
    assert json.loads((run / "progress.json").read_text())["interrupted"] is True


def test_timeout_fails_the_sim_and_cleans_up(vm: VmEnv) -> None:
    sim = _write(vm, "long", LONG_SIM)
    out = vm.invoke("sim.run", "--patchbay-version", "builtin", "--file", sim, "--timeout", "5s")
    assert out.returncode == 1, out.stdout + out.stderr
    run = vm.work_dir / _run_folder(out)
    error = json.loads((run / "long" / "sim.json").read_text())["error"]
    assert "5s" in error["message"] or "time limit" in error["message"], error
    assert _guest_leftovers(vm) == ("", "")


def test_inspect_then_exec_in_a_node(vm: VmEnv) -> None:
    proc = _start(vm, "sim.inspect", "--file", "sims/iperf-baseline.toml")
    try:
        lines = _read_until(proc, "NETSIM_IP_SERVER=")
        (line,) = [x for x in lines if "NETSIM_IP_SERVER=" in x]
        server_ip = line.split("=", 1)[1].strip().strip("'\"")
        ping = vm.invoke("sim.exec", "client", "--", "ping", "-c", "1", "-W", "5", server_ip)
        assert ping.returncode == 0, ping.stdout + ping.stderr
        assert "1 received" in ping.stdout
        assert vm.invoke("sim.exec", "client", "--", "false").returncode == 1
        rust_spelling = vm.cli("run-in", "server", "--", "ip", "-4", "addr", "show", "eth0")
        assert server_ip in rust_spelling.stdout
        # Ctrl-C on sim.exec reaches the command in the node, not only the lab's runner.
        sleeper = _start(vm, "sim.exec", "client", "--", "sleep", "31.4159")
        try:
            for _ in range(60):
                if "31.4159" in _guest_leftovers(vm)[1]:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError("sim.exec's sleep never started in the guest")
            sleeper.send_signal(signal.SIGINT)
            _, sleeper_err = sleeper.communicate(timeout=60)
        finally:
            if sleeper.poll() is None:
                sleeper.kill()
        assert sleeper.returncode == 130, sleeper_err
        assert "31.4159" not in _guest_leftovers(vm)[1]
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert _guest_leftovers(vm) == ("", "")


def test_two_runs_at_once_get_their_own_folders(vm: VmEnv) -> None:
    procs = [
        _start(vm, "sim.run", "--patchbay-version", "builtin", "--file", "sims/iperf-baseline.toml")
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    folders = {_run_folder(out) for out, _ in outs}
    assert len(folders) == 2
    latest = (vm.work_dir / "latest").resolve().name
    assert latest in folders


def test_netem_checks_of_the_host_suite_run_in_the_guest(vm: VmEnv) -> None:
    """The namespace tests' delay checks, skipped on this host (no sch_netem), run here on
    the guest's kernel: pytest and the package copied into /work, run as root."""
    corpus = corpus_path()
    if not corpus.is_dir():
        pytest.skip("sim corpus not found; set PATCHBAY_SIM_CORPUS=/path/to/sims-from-patchbay")
    root = vm.work_dir / "guest-tests"
    shutil.rmtree(root, ignore_errors=True)
    lib = root / "lib"
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "patchbay_vm_tasks", lib / "patchbay_vm_tasks", ignore=ignore)
    site = Path(pytest.__file__).resolve().parent.parent
    for name in ("pytest", "_pytest", "pluggy", "iniconfig", "packaging", "pygments"):
        shutil.copytree(site / name, lib / name, ignore=ignore)
    shutil.copy(site / "py.py", lib / "py.py")
    (root / "tests").mkdir()
    for name in ("conftest.py", "vmfixtures.py", "test_lab_netns.py", "test_simrunner_netns.py"):
        shutil.copy(REPO / "tests" / name, root / "tests" / name)
    shutil.copytree(corpus, root / "corpus")
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    netns: namespaces\n    vm: vm\n")
    out = vm.invoke(
        "vm.ssh", "--", "sudo", "env", "PYTHONPATH=/work/guest-tests/lib",
        "PATCHBAY_SIM_CORPUS=/work/guest-tests/corpus", "PATCHBAY_TEST_TIME_SCALE=4",
        "sh", "-c", "cd /work/guest-tests && python3 -m pytest -p no:cacheprovider -q -rs "
        "-k 'regions_and_impair_delay or ping_e2e_latency' "
        "tests/test_lab_netns.py tests/test_simrunner_netns.py",
        timeout=1200,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 passed" in out.stdout and "skipped" not in out.stdout, out.stdout
    shutil.rmtree(root, ignore_errors=True)
