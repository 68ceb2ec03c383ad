"""The labs of Rust tests (`sim.serve --testdir`) and tracing logs in a real browser: the
fixture crate's `lab` binary run on this host as test.run stages it (test_testdir.py),
served in testdir mode; and a tracing log among a sim run's step logs, live and in a
report. Screenshots are saved (paths printed)."""

# ruff: noqa: F811 (the driver fixture, imported, is each test's argument)
from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_testdir import DEEP, FIRST, lab_binary, run_lab
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
from test_viewer_fixture import write_invocation

from patchbay_vm_tasks.viewer import report
from patchbay_vm_tasks.viewer import server as viewer_server

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and DRIVER.exists()),
        reason="needs Debian's chromium and chromium-driver",
    ),
]

TRACE = "device.client.tracing.jsonl"


@pytest.fixture(scope="module")
def testdir_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    work = tmp_path_factory.mktemp("testdir-browser") / "work"
    run_lab(work, lab_binary())
    srv = viewer_server.serve_in_thread(work, "127.0.0.1:0", testdir=True)
    yield srv.url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("testdir-screenshots")


def visible_rows(driver) -> list:
    return [r for r in css(driver, ".tr-rows .tr") if r.is_displayed()]


def pick_level(driver, label: str) -> None:
    from selenium.webdriver.support.ui import Select

    Select(css(driver, "select.tr-level-filter")[0]).select_by_visible_text(label)


def search(driver, text: str) -> None:
    box = css(driver, "input.tr-search")[0]
    box.clear()
    if text:
        box.send_keys(text)
    else:  # clear() sends no input event
        driver.execute_script("arguments[0].dispatchEvent(new Event('input'))", box)


def test_each_test_lab_is_listed_without_a_combined_view(driver, testdir_url, shots) -> None:
    open_page(driver, testdir_url, "")
    wait(driver, lambda d: len(css(d, "a.entry.run")) == 2)
    entries = {e.get_attribute("data-run"): e.text for e in css(driver, "a.entry.run")}
    assert set(entries) == {FIRST, DEEP}
    assert "tcp-nat" in entries[FIRST] and "stopped" in entries[FIRST]
    assert "deep-lab" in entries[DEEP]
    assert "combined" not in text_of(driver, "#picker")  # test output has no invocation
    assert "#run=" in driver.current_url  # the page opened a lab, not a combined view


def test_topology_of_a_test_lab(driver, testdir_url, shots) -> None:
    open_page(driver, testdir_url, run_hash(FIRST))
    svg = wait(driver, lambda d: css(d, "svg.topology"))[0]
    names = {e.get_attribute("data-name") for e in css(driver, "svg.topology .node")}
    assert names == {"ix", "dc", "home", "server", "client"}
    assert "NAT home" in svg.text and "10.0.1.2" in svg.text and "eth0: wifi_bad" in svg.text
    shot(driver, shots, "testdir-topology", copy=True)


def test_timeline_has_every_event_from_opid_0(driver, testdir_url, shots) -> None:
    open_page(driver, testdir_url, run_hash(FIRST, "timeline"))
    rows = wait(driver, lambda d: css(d, "table.events tr.ev-row"))
    kinds = [r.find_element("css selector", ".kind").text for r in rows]
    assert kinds[0] == "lab_created" and "command_exited" in kinds
    assert len(kinds) == 9
    assert "NaN" not in text_of(driver, "table.events")  # microsecond timestamps parse
    shot(driver, shots, "testdir-timeline")


def test_tracing_log_as_lines_with_a_level_filter_and_a_search(driver, testdir_url, shots) -> None:
    open_page(driver, testdir_url, run_hash(FIRST, "logs", TRACE))
    wait(driver, lambda d: len(visible_rows(d)) == 7)
    first = visible_rows(driver)[0]
    parts = {
        c: first.find_element("css selector", f".{c}").text
        for c in ("tr-time", "tr-level", "tr-target", "tr-msg")
    }
    assert parts["tr-level"] == "TRACE" and parts["tr-msg"] == "poll_send"
    assert parts["tr-target"] == "testcrate::net::socket:"
    assert len(parts["tr-time"]) == 15 and parts["tr-time"][2] == ":"  # HH:MM:SS.micros
    assert "bytes=1200" in first.text and 'label="tcp-nat"' in first.text  # fields, span
    assert "7 of 7 lines" in text_of(driver, ".tr-count")
    pick_level(driver, "WARN and above")
    wait(driver, lambda d: len(visible_rows(d)) == 2)
    assert [r.find_element("css selector", ".tr-level").text for r in visible_rows(driver)] == [
        "WARN",
        "ERROR",
    ]
    shot(driver, shots, "testdir-tracing-warn", copy=True)
    pick_level(driver, "all levels")
    search(driver, "198.18.1.2")
    wait(driver, lambda d: len(visible_rows(d)) == 3)
    assert "3 of 7 lines" in text_of(driver, ".tr-count")
    search(driver, "")
    wait(driver, lambda d: len(visible_rows(d)) == 7)


def test_a_deeper_lab(driver, testdir_url, shots) -> None:
    open_page(driver, testdir_url, run_hash(DEEP, "logs", "device.solo.tracing.jsonl"))
    wait(driver, lambda d: "alone in a deep module" in text_of(d, ".tr-rows"))


# A step log that is tracing-subscriber JSON (a Rust binary logging JSON to stdout): a sim
# run shows it the same way, live and in a report.
STEP_TRACE = "".join(
    json.dumps({"timestamp": f"2026-03-01T12:00:0{i}.000001Z", "level": lv, "target": "iroh::net",
                "fields": {"message": msg, "n": i}}) + "\n"
    for i, (lv, msg) in enumerate([("INFO", "bound"), ("DEBUG", "probe"), ("WARN", "relay slow")])
) + "not json at all\n"  # fmt: skip


@pytest.fixture(scope="module")
def sim_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("tracing-sim") / "work"
    write_invocation(work, "sim-260301-120000", [("ping-e2e", "ping")])
    (work / "sim-260301-120000" / "ping-e2e" / "device.sender.node.stdout.log").write_text(
        STEP_TRACE
    )
    return work


def _check_step_trace(driver) -> None:
    wait(driver, lambda d: len(visible_rows(d)) == 4)
    assert "relay slow" in text_of(driver, ".tr-rows") and "n=2" in text_of(driver, ".tr-rows")
    assert "not json at all" in text_of(driver, ".tr-raw")  # shown as it is
    pick_level(driver, "INFO and above")
    # INFO and WARN, and the line that is no tracing line (no level to filter it by).
    wait(driver, lambda d: len(visible_rows(d)) == 3)


def test_a_tracing_step_log_of_a_sim_run(driver, sim_work, shots) -> None:
    srv = viewer_server.serve_in_thread(sim_work, "127.0.0.1:0")
    try:
        open_page(driver, srv.url, run_hash("sim-260301-120000/ping-e2e", "logs",
                                            "device.sender.node.stdout.log"))  # fmt: skip
        _check_step_trace(driver)
        shot(driver, shots, "sim-step-tracing")
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_tracing_step_log_in_a_report(driver, sim_work, tmp_path, shots) -> None:
    out = report.write_report(sim_work, tmp_path / "report.html", "sim-260301-120000")
    driver.get("about:blank")
    driver.get(out.as_uri() + run_hash("sim-260301-120000/ping-e2e", "logs",
                                       "device.sender.node.stdout.log"))  # fmt: skip
    driver.refresh()
    _check_step_trace(driver)
