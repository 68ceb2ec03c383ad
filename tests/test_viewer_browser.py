"""The viewer page in a real browser: Debian's headless chromium driven by Selenium through
Debian's chromium-driver (nothing downloads a browser). Screenshots of each view are saved
under the test's tmp dir (paths printed; `-s` shows them)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from test_viewer_fixture import INV_FAIL, INV_OK, make_workdir, write_invocation

from patchbay_vm_tasks.viewer import report
from patchbay_vm_tasks.viewer import server as viewer_server

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
PING = f"{INV_OK}/ping-e2e"
IPERF = f"{INV_OK}/iperf-e2e"
BROKEN = f"{INV_FAIL}/broken-e2e"
# A few screenshots also land here, to be looked at by a person after a run.
SHOTS_COPY = Path("/tmp/viewer-shots")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver "
        "(apt-get install -y chromium chromium-driver)",
    ),
]


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="viewer-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(arg)
    d = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    yield d
    d.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_workdir(tmp_path_factory.mktemp("viewer-browser"))


@pytest.fixture(scope="module")
def url(work: Path) -> Iterator[str]:
    srv = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    yield srv.url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("viewer-screenshots")


def shot(driver, shots: Path, name: str, copy: bool = False) -> None:
    path = shots / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    if copy:
        SHOTS_COPY.mkdir(exist_ok=True)
        shutil.copy(path, SHOTS_COPY / path.name)


def wait(driver, cond, timeout: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: cond(d))


def css(driver, selector: str):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def text_of(driver, selector: str) -> str:
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return " ".join(e.text for e in css(driver, selector))
    except StaleElementReferenceException:  # redrawn under us: ask again
        return ""


def open_page(driver, url: str, hash_: str) -> None:
    driver.get("about:blank")  # a fresh page each time, not a hash change
    driver.get(url + hash_)
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")


def run_hash(run: str, tab: str = "topology", log: str | None = None) -> str:
    return f"#run={quote(run, safe='')}&tab={tab}" + (f"&log={quote(log)}" if log else "")


def test_runs_listed_by_sim_name_with_status(driver, url, shots) -> None:
    open_page(driver, url, run_hash(PING))
    entry = wait(driver, lambda d: css(d, f'a.entry.run[data-run="{PING}"]'))[0]
    assert "ping-e2e" in entry.text and "stopped" in entry.text and "ok" in entry.text
    broken = css(driver, f'a.entry.run[data-run="{BROKEN}"]')[0]
    assert "broken-e2e" in broken.text and "error" in broken.text
    invs = [e.get_attribute("data-inv") for e in css(driver, "section.inv")]
    assert invs == [INV_FAIL, INV_OK]  # newest first


def test_topology_shows_routers_and_devices(driver, url, shots) -> None:
    open_page(driver, url, run_hash(PING))
    svg = wait(driver, lambda d: css(d, "svg.topology"))[0]
    names = {e.get_attribute("data-name") for e in css(driver, "svg.topology .node")}
    assert names == {"ix", "dc", "home", "sender", "receiver"}
    assert "NAT home" in svg.text and "public" in svg.text
    assert "10.0.1.2" in svg.text and "eth0: 100 ms" in svg.text
    css(driver, 'svg.topology .topo-device[data-name="sender"]')[0].click()
    wait(driver, lambda d: "device sender" in text_of(d, "#node-detail"))
    assert "pb" in text_of(driver, "#node-detail")  # its namespace
    shot(driver, shots, "topology", copy=True)


def test_results_table_shows_steps_with_values(driver, url, shots) -> None:
    open_page(driver, url, run_hash(IPERF, "results"))
    table = wait(driver, lambda d: css(d, "table.results"))[0]
    assert "Down MB/s" in table.text and "Latency (ms)" in table.text
    row = css(driver, 'table.results tr[data-step="iperf-client"]')[0]
    assert "131.06" in row.text  # 262144000 bytes in 2.000135 s
    assert css(driver, 'tr[data-step="iperf-client"] .bar-down')
    shot(driver, shots, "results-iperf")
    open_page(driver, url, run_hash(PING, "results"))
    row = wait(driver, lambda d: css(d, 'table.results tr[data-step="ping-check"]'))[0]
    assert "100.51" in row.text


def test_combined_view_lists_both_sims(driver, url, shots) -> None:
    open_page(driver, url, f"#inv={INV_OK}")
    wait(driver, lambda d: css(d, "table.summary tr[data-sim]"))
    headings = [e.text for e in css(driver, "#main h2")]
    assert headings == ["summary", "all steps"]
    sims = [e.get_attribute("data-sim") for e in css(driver, "table.summary tr[data-sim]")]
    assert sims == ["ping-e2e", "iperf-e2e"]
    steps = text_of(driver, "table.results")
    assert "ping-check" in steps and "iperf-client" in steps and "Latency (ms)" in steps
    assert "combined (2 sims)" in text_of(driver, "#picker")
    shot(driver, shots, "combined", copy=True)


def test_a_log_opens_and_tails(driver, url, work, shots) -> None:
    log = "device.sender.ping-check.stdout.log"
    open_page(driver, url, run_hash(PING, "logs"))
    wait(driver, lambda d: css(d, f'a.log-file[data-path="{log}"]'))[0].click()
    wait(driver, lambda d: "rtt min/avg/max/mdev" in text_of(d, "#log-view"))
    with (work / PING / log).open("a") as f:
        f.write("a line written while the page is open\n")
    wait(driver, lambda d: "written while the page is open" in text_of(d, "#log-view"))
    shot(driver, shots, "logs")


def test_failing_sim_shows_its_failing_step(driver, url, shots) -> None:
    open_page(driver, url, run_hash(BROKEN))
    banner = wait(driver, lambda d: css(d, ".error-banner"))[0]
    assert 'failed at step 0: run "ping-check" on sender' in banner.text
    assert "exited with code 2" in banner.text
    shot(driver, shots, "failing-sim", copy=True)
    css(driver, ".error-banner a.errlog")[0].click()
    wait(driver, lambda d: "Network is unreachable" in text_of(d, "#log-view"))
    # Its events.jsonl ends in a half-written line: the complete events show, nothing breaks.
    open_page(driver, url, run_hash(BROKEN, "timeline"))
    rows = wait(driver, lambda d: css(d, "table.events tr.ev-row"))
    assert len(rows) == 5
    shot(driver, shots, "timeline")


def test_run_started_while_open_appears_and_updates(driver, url, work, shots) -> None:
    open_page(driver, url, f"#inv={INV_OK}")
    driver.execute_script("window.__noReload = 1")
    inv = "sim-260301-150000"
    d = write_invocation(work, inv, [("live-e2e", "ping")])
    progress = json.loads((d / "progress.json").read_text())
    state = json.loads((d / "live-e2e" / "state.json").read_text())
    (d / "live-e2e" / "state.json").write_text(json.dumps({**state, "status": "running"}))
    running = {**progress, "status": "running", "completed": 0, "ok": 0}
    (d / "progress.json").write_text(json.dumps(running))
    entry = f'a.entry.run[data-run="{inv}/live-e2e"]'
    wait(driver, lambda dr: "running" in text_of(dr, entry))
    assert "running 0/1" in text_of(driver, f'section.inv[data-inv="{inv}"] .inv-head')
    (d / "live-e2e" / "state.json").write_text(json.dumps(state))
    (d / "progress.json").write_text(json.dumps(progress))
    wait(driver, lambda dr: "stopped" in text_of(dr, entry))
    assert driver.execute_script("return window.__noReload") == 1
    shot(driver, shots, "live-new-run")


def test_report_opens_from_file_without_a_server(driver, work, shots, tmp_path) -> None:
    out = report.write_report(work, tmp_path / "report.html", INV_OK)
    driver.get("about:blank")
    driver.get(out.as_uri())
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == "1")
    assert "report generated" in text_of(driver, "#source")
    wait(driver, lambda d: css(d, "table.summary tr[data-sim]"))
    assert [e.get_attribute("data-sim") for e in css(driver, "table.summary tr[data-sim]")] == [
        "ping-e2e",
        "iperf-e2e",
    ]
    shot(driver, shots, "report-combined", copy=True)
    driver.get(out.as_uri() + run_hash(PING))
    driver.refresh()
    wait(driver, lambda d: css(d, 'svg.topology .topo-router[data-name="home"]'))
    driver.get(out.as_uri() + run_hash(PING, "logs", "device.sender.ping-check.stdout.log"))
    driver.refresh()
    wait(driver, lambda d: "rtt min/avg/max/mdev" in text_of(d, "#log-view"))
    driver.get(out.as_uri() + run_hash(PING, "timeline"))
    driver.refresh()
    wait(driver, lambda d: len(css(d, "table.events tr.ev-row")) == 6)


def test_first_render_of_a_ten_sim_invocation(driver, tmp_path, shots) -> None:
    work = tmp_path / "work"
    sims = [
        (f"sim{i:02d}-{'ping' if i % 2 else 'iperf'}", "ping" if i % 2 else "iperf")
        for i in range(10)
    ]
    write_invocation(work, "sim-260302-090000", sims)
    srv = viewer_server.serve_in_thread(work, "127.0.0.1:0")
    try:
        open_page(driver, srv.url, "#inv=sim-260302-090000")
        wait(driver, lambda d: len(css(d, "table.summary tr[data-sim]")) == 10)
        ms = driver.execute_script("return window.__patchbayFirstRender")
        weight = sum(
            len(viewer_server.Api(work).handle(p).body)
            for p in ("/", "/static/app.js", "/static/style.css")
        )
        print(
            f"first render of a 10-sim invocation: {ms:.0f} ms after navigation;"
            f" page weight {weight} bytes"
        )
        assert ms < 5000
        shot(driver, shots, "ten-sims")
    finally:
        srv.shutdown()
        srv.server_close()
