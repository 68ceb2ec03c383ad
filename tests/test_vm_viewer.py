"""The viewer in a real browser over runs that the builtin runner produced in the guest:
a ping sim and an iperf sim in one invocation, a failing sim, and a run started while
the page is open. Screenshots of each view are saved (paths printed)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import corpus_path
from test_viewer_browser import (  # noqa: F401 (the driver fixture)
    CHROMIUM,
    DRIVER,
    css,
    driver,
    open_page,
    run_hash,
    shot,
    text_of,
    wait,
)
from vmfixtures import VmEnv

from patchbay_vm_tasks.viewer import server as viewer_server

pytestmark = [
    pytest.mark.vm,
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver",
    ),
]

FAILING = """
[sim]
name = "unreachable"

[[router]]
name = "dc"
[device.a.eth0]
gateway = "dc"

[[step]]
action = "run"
id = "ping-nowhere"
device = "a"
cmd = ["ping", "-c", "1", "-W", "1", "203.0.113.9"]
"""


def _run(vm: VmEnv, *files: str) -> str:
    args = [x for f in files for x in ("--file", f)]
    out = vm.invoke("sim.run", "--patchbay-version", "builtin", *args)
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("run folder /work/")]
    return line.removeprefix("run folder /work/")


@pytest.fixture(scope="module")
def runs(vm_session: VmEnv) -> dict[str, str]:
    corpus = corpus_path()
    if not corpus.is_dir():
        pytest.skip("sim corpus not found; set PATCHBAY_SIM_CORPUS=/path/to/sims-from-patchbay")
    vm = vm_session
    shutil.copytree(corpus / "ui-fixtures", vm.project / "ui-fixtures", dirs_exist_ok=True)
    (vm.project / "sims" / "unreachable.toml").write_text(FAILING)
    ok = _run(vm, "ui-fixtures/ping-e2e.toml", "ui-fixtures/iperf-e2e.toml")
    failed = _run(vm, "sims/unreachable.toml")
    return {"ok": ok, "failed": failed}


@pytest.fixture(scope="module")
def url(vm_session: VmEnv, runs) -> Iterator[str]:
    srv = viewer_server.serve_in_thread(vm_session.work_dir, "127.0.0.1:0")
    yield srv.url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vm-viewer-screenshots")


def test_sims_listed_with_their_status(driver, url, runs, shots) -> None:  # noqa: F811
    ping = f"{runs['ok']}/ping-e2e"
    open_page(driver, url, run_hash(ping))
    entry = wait(driver, lambda d: css(d, f'a.entry.run[data-run="{ping}"]'))[0]
    assert "ping-e2e" in entry.text and "stopped" in entry.text
    assert "iperf-e2e" in text_of(driver, "#picker")
    shot(driver, shots, "real-picker")


def test_topology_of_a_real_run(driver, url, runs, shots) -> None:  # noqa: F811
    open_page(driver, url, run_hash(f"{runs['ok']}/ping-e2e"))
    wait(driver, lambda d: css(d, "svg.topology"))
    names = {e.get_attribute("data-name") for e in css(driver, "svg.topology .node")}
    assert {"dc", "sender", "receiver"} <= names
    assert "100 ms" in text_of(driver, "svg.topology")  # the sender's impair
    shot(driver, shots, "real-topology")


def test_results_of_real_runs(driver, url, runs, shots) -> None:  # noqa: F811
    open_page(driver, url, run_hash(f"{runs['ok']}/ping-e2e", "results"))
    row = wait(driver, lambda d: css(d, 'table.results tr[data-step="ping-check"]'))[0]
    assert "Latency (ms)" in text_of(driver, "table.results")
    assert any(ch.isdigit() for ch in row.text)
    open_page(driver, url, run_hash(f"{runs['ok']}/iperf-e2e", "results"))
    row = wait(driver, lambda d: css(d, 'table.results tr[data-step="iperf-client"]'))[0]
    assert "Down MB/s" in text_of(driver, "table.results") and css(driver, ".bar-down")
    shot(driver, shots, "real-results")


def test_combined_view_of_the_invocation(driver, url, runs, shots) -> None:  # noqa: F811
    open_page(driver, url, f"#inv={runs['ok']}")
    wait(driver, lambda d: css(d, "table.summary tr[data-sim]"))
    sims = {e.get_attribute("data-sim") for e in css(driver, "table.summary tr[data-sim]")}
    assert sims == {"ping-e2e", "iperf-e2e"}
    shot(driver, shots, "real-combined")


def test_a_real_log_opens(driver, url, runs, shots) -> None:  # noqa: F811
    open_page(driver, url, run_hash(f"{runs['ok']}/ping-e2e", "logs"))
    log = "device.sender.ping-check.stdout.log"
    wait(driver, lambda d: css(d, f'a.log-file[data-path="{log}"]'))[0].click()
    wait(driver, lambda d: "rtt min/avg/max/mdev" in text_of(d, "#log-view"))
    shot(driver, shots, "real-log")


def test_failing_real_sim_shows_its_step(driver, url, runs, shots) -> None:  # noqa: F811
    open_page(driver, url, run_hash(f"{runs['failed']}/unreachable"))
    banner = wait(driver, lambda d: css(d, ".error-banner"))[0]
    assert "ping-nowhere" in banner.text
    shot(driver, shots, "real-failing")


def test_a_run_started_while_open_appears(driver, url, vm_session, runs, shots) -> None:  # noqa: F811
    vm = vm_session
    open_page(driver, url, f"#inv={runs['ok']}")
    driver.execute_script("window.__noReload = 1")
    before = {e.get_attribute("data-inv") for e in css(driver, "section.inv")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "sim.run", "--patchbay-version", "builtin",
         "--file", "ui-fixtures/iperf-e2e.toml"],
        cwd=vm.project, env=vm.env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait(driver, lambda d: len(css(d, "section.inv")) > len(before), timeout=300)
        new = {e.get_attribute("data-inv") for e in css(driver, "section.inv")} - before
        (inv,) = new
        entry = f'a.entry.run[data-run="{inv}/iperf-e2e"]'
        wait(driver, lambda d: "stopped" in text_of(d, entry), timeout=300)
    finally:
        out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, out + err
    assert driver.execute_script("return window.__noReload") == 1
    shot(driver, shots, "real-live-run")
