"""`sim.serve --testdir` end to end (issue 21, item 3): the fixture crate's `lab` test run
by test.run in the shared guest writes its labs beside the binary, as patchbay's library
with the testdir crate does; they come home under the work dir and the viewer shows them
in Chromium: the labs, a topology, the events and a tracing log with its level filter."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pytest
from test_testdir import DEEP, FIRST
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
from test_viewer_serve import Serve
from test_viewer_testdir_browser import pick_level, visible_rows
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
GNU = "x86_64-unknown-linux-gnu"


@pytest.fixture(scope="module")
def tests_dir(vm_session: VmEnv):
    out = vm_session.invoke("test.run", "--target", GNU, "--test", "lab")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS testcrate::lab (test)" in out.stdout
    return vm_session.work_dir / "binaries" / "tests"


@pytest.fixture(scope="module")
def url(vm_session: VmEnv, tests_dir) -> Iterator[str]:
    srv = viewer_server.serve_in_thread(vm_session.work_dir, "127.0.0.1:0", testdir=True)
    yield srv.url
    srv.shutdown()
    srv.server_close()


def test_the_guest_wrote_the_labs_as_patchbay_does(tests_dir) -> None:
    link = os.readlink(tests_dir / "testdir-current")
    assert link.startswith("/work/binaries/tests/testdir-")  # the guest's path: not followed
    lab = tests_dir / link.rsplit("/", 1)[1] / FIRST
    assert json.loads((lab / "state.json").read_text())["status"] == "stopped"
    # The command the test ran in a fresh network namespace, in the guest, as the guest user.
    assert "2 packets transmitted, 2 received" in (lab / "device.client.stdout.log").read_text()


def test_serve_testdir_names_the_generation(vm: VmEnv, tests_dir) -> None:
    serve = Serve(vm.project, "--testdir", "--bind", "127.0.0.1:0")
    try:
        note = serve.until("serving the labs")
        assert "binaries/tests/testdir-current (now testdir-" in note
        assert serve.stop() == 0
    finally:
        serve.kill()


def test_the_labs_in_chromium(driver, url, tmp_path) -> None:  # noqa: F811
    open_page(driver, url, "")
    wait(driver, lambda d: len(css(d, "a.entry.run")) == 2)
    assert {e.get_attribute("data-run") for e in css(driver, "a.entry.run")} == {FIRST, DEEP}
    open_page(driver, url, run_hash(FIRST))
    wait(driver, lambda d: css(d, "svg.topology"))
    names = {e.get_attribute("data-name") for e in css(driver, "svg.topology .node")}
    assert names == {"ix", "dc", "home", "server", "client"}
    shot(driver, tmp_path, "vm-testdir-topology", copy=True)
    open_page(driver, url, run_hash(FIRST, "timeline"))
    rows = wait(driver, lambda d: css(d, "table.events tr.ev-row"))
    assert rows[0].find_element("css selector", ".kind").text == "lab_created"
    open_page(driver, url, run_hash(FIRST, "logs", "device.client.tracing.jsonl"))
    wait(driver, lambda d: len(visible_rows(d)) == 7)
    pick_level(driver, "ERROR and above")
    wait(driver, lambda d: len(visible_rows(d)) == 1)
    assert "stream reset by peer" in text_of(driver, ".tr-rows")
    shot(driver, tmp_path, "vm-testdir-tracing", copy=True)
