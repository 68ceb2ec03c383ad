"""`sim.serve --testdir` (viewer/testdir.py, the API in testdir mode): labs that the
fixture crate's `lab` test binary writes, built with cargo and run on this host from a
work dir's `binaries/tests/` as test.run stages it, then its `testdir-current` link made
as the guest makes it (absolute, `/work/binaries/tests/testdir-N`: nowhere on the host).
No VM."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from pathlib import Path
from urllib.parse import quote

import pytest
from test_viewer_serve import Serve

from patchbay_vm_tasks.rusttest import cargo
from patchbay_vm_tasks.viewer import api as api_mod
from patchbay_vm_tasks.viewer import logs, testdir

TESTCRATE = Path(__file__).parent / "fixtures" / "testcrate"
HOST_GNU = "x86_64-unknown-linux-gnu"
FIRST = "lab/writes_a_lab_as_patchbay_does"
DEEP = "lab/nested/deeper/second_lab"


def lab_binary() -> Path:
    """The fixture crate's `lab` test binary, built for this host."""
    if not shutil.which("cargo"):
        pytest.skip("needs cargo")
    (exe,) = cargo.build_tests(cargo.TestBuild(HOST_GNU, tests=("lab",)), TESTCRATE)
    return exe.path


def run_lab(work: Path, exe: Path, times: int = 1) -> Path:
    """Stage the binary into work/binaries/tests and run it there `times` times; then
    point testdir-current where the guest would (an absolute /work/... path)."""
    tests = work / "binaries" / "tests"
    tests.mkdir(parents=True, exist_ok=True)
    staged = tests / exe.name
    shutil.copy(exe, staged)
    for _ in range(times):
        out = subprocess.run([str(staged)], cwd=tests, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    current = tests / "testdir-current"
    target = os.readlink(current)
    current.unlink()
    os.symlink("/work/binaries/tests/" + Path(target).name, current)
    return tests


@pytest.fixture(scope="module")
def exe() -> Path:
    return lab_binary()


@pytest.fixture
def work(tmp_path: Path, exe: Path) -> Path:
    work = tmp_path / "work"
    run_lab(work, exe)
    return work


def get(api: api_mod.Api, path: str) -> tuple[int, object]:
    r = api.handle(path)
    return r.status, json.loads(r.body) if r.content_type == "application/json" else r.body


def test_the_lab_binary_writes_patchbays_layout(work: Path) -> None:
    tests = work / "binaries" / "tests"
    assert os.readlink(tests / "testdir-current") == "/work/binaries/tests/testdir-0"
    lab = tests / "testdir-0" / FIRST
    events = [json.loads(line) for line in (lab / "events.jsonl").read_text().splitlines()]
    assert [e["opid"] for e in events] == list(range(len(events)))  # from 0, as the library
    assert events[0]["kind"] == "lab_created" and events[0]["label"] == "tcp-nat"
    kinds = [e["kind"] for e in events]
    assert kinds.count("router_added") == 2 and kinds.count("device_added") == 2
    assert {"link_condition_changed", "command_spawned", "command_exited"} <= set(kinds)
    state = json.loads((lab / "state.json").read_text())
    assert state["status"] == "stopped" and state["opid"] == events[-1]["opid"]
    assert state["routers"]["home"]["nat"] == "home"
    assert state["devices"]["client"]["interfaces"][0]["link_condition"] == "wifi_bad"
    trace = [json.loads(x) for x in (lab / "device.client.tracing.jsonl").read_text().splitlines()]
    assert {"timestamp", "level", "target", "fields"} <= trace[0].keys()
    assert {t["level"] for t in trace} == {"TRACE", "DEBUG", "INFO", "WARN", "ERROR"}
    (event,) = [
        json.loads(x) for x in (lab / "device.client.events.jsonl").read_text().splitlines()
    ]
    assert event["kind"] == "ConnectionEstablished" and event["peer"] == "198.18.1.2:9000"
    assert logs.kind_of("device.client.tracing.jsonl", b"") == "tracing_jsonl"


def test_the_current_generation_is_read_from_the_link_never_followed(work: Path, exe) -> None:
    assert testdir.current(work) == "testdir-0"
    assert testdir.parts(work) == ("binaries", "tests", "testdir-0")
    run_lab(work, exe, times=2)
    assert testdir.generations(work) == ["testdir-0", "testdir-1", "testdir-2"]
    assert testdir.current(work) == "testdir-2"
    tests = testdir.tests_dir(work)
    # A link elsewhere (the guest can make any): the newest generation instead.
    (tests / "testdir-current").unlink()
    os.symlink("/etc", tests / "testdir-current")
    assert testdir.current(work) == "testdir-2"
    # Relative, as a host-side run of the testdir crate may make it.
    (tests / "testdir-current").unlink()
    os.symlink("testdir-1", tests / "testdir-current")
    assert testdir.current(work) == "testdir-1"
    # No link at all (QEMU_VM_FS=none brings none home): the newest.
    (tests / "testdir-current").unlink()
    assert testdir.current(work) == "testdir-2"
    # A generation that is a link is no generation.
    (tests / "testdir-2").rename(work / "moved")
    os.symlink(work / "moved", tests / "testdir-2")
    assert testdir.current(work) == "testdir-1"


def test_no_test_output_yet(tmp_path: Path) -> None:
    assert testdir.current(tmp_path) is None
    assert "no test output in" in testdir.describe(tmp_path)
    status, body = get(api_mod.Api(tmp_path, testdir=True), "/api/runs")
    assert (status, body) == (200, [])


def test_the_api_lists_a_lab_per_test_at_any_depth(work: Path) -> None:
    api = api_mod.Api(work, testdir=True)
    status, listed = get(api, "/api/runs")
    assert status == 200
    assert {(r["name"], r["label"], r["status"], r["invocation"]) for r in listed} == {
        (FIRST, "tcp-nat", "stopped", "lab"),
        (DEEP, "deep-lab", "stopped", "lab"),
    }
    status, state = get(api, f"/api/runs/{quote(FIRST, safe='')}/state")
    assert status == 200 and set(state["devices"]) == {"client", "server"}
    status, listed_logs = get(api, f"/api/runs/{quote(FIRST, safe='')}/logs")
    kinds = {entry["path"]: entry["kind"] for entry in listed_logs}
    assert kinds["device.client.tracing.jsonl"] == "tracing_jsonl"
    assert kinds["events.jsonl"] == "lab_events"
    assert {e["node"] for e in listed_logs} >= {"client", "server", "home"}
    # Test output has no invocations: no combined view, no progress.
    assert get(api, "/api/invocations/lab/progress")[0] == 404
    assert get(api, "/api/invocations/lab/combined-results") == (404, {"runs": []})
    # The work dir's sim runs are not what a testdir server shows, and the other way round.
    assert get(api_mod.Api(work), "/api/runs") == (200, [])


def test_events_from_opid_0(work: Path) -> None:
    rel = [*testdir.parts(work), *FIRST.split("/"), "events.jsonl"]
    stop = threading.Event()
    got: list[dict] = []
    for chunk in api_mod.events_stream(work, rel, None, stop):
        if chunk.startswith(b"data: "):
            got.append(json.loads(chunk[6:]))
        if len(got) == 3:
            break
    assert [e["opid"] for e in got] == [0, 1, 2]
    # With ?after=0 (the page after the first event), opid 0 is not sent again.
    first = next(iter(api_mod.events_stream(work, rel, 0, stop)))
    assert json.loads(first[6:])["opid"] == 1


def test_links_and_planted_folders_in_a_generation(work: Path, tmp_path: Path) -> None:
    gen = testdir.tests_dir(work) / "testdir-0"
    outside = tmp_path / "outside"
    (outside / "lab").mkdir(parents=True)
    (outside / "lab" / "events.jsonl").write_text('{"opid":0,"kind":"lab_created"}\n')
    (outside / "lab" / "state.json").write_text('{"label":"SECRET-LAB"}')
    os.symlink(outside, gen / "lab" / "linked")  # a run folder that is a link: not listed
    os.symlink(outside / "lab" / "state.json", gen / FIRST / "device.x.leak.log")
    api = api_mod.Api(work, testdir=True)
    names = [r["name"] for r in get(api, "/api/runs")[1]]
    assert sorted(names) == [DEEP, FIRST]
    assert get(api, f"/api/runs/{quote(FIRST, safe='')}/logs/device.x.leak.log")[0] == 404
    run = quote(FIRST, safe="")
    assert get(api, f"/api/runs/{run}/files/..%2F..%2F..%2Ftestdir-current")[0] == 404


def test_a_new_generation_replaces_the_labs_shown(work: Path, exe: Path) -> None:
    api = api_mod.Api(work, testdir=True)
    before = api._runs_signature()
    run_lab(work, exe)
    assert api._runs_signature() != before  # the page is told to reload
    assert {r["name"] for r in get(api, "/api/runs")[1]} == {FIRST, DEEP}


def test_serve_testdir_says_what_it_serves(work: Path, tmp_path: Path) -> None:
    serve = Serve(tmp_path, str(work), "--testdir", "--bind", "127.0.0.1:0")
    try:
        serve.until("viewer on ")
        note = serve.until("serving the labs")
        assert note == (
            f"serving the labs in {work / 'binaries' / 'tests' / 'testdir-current'} (now testdir-0)"
        )
        assert serve.stop() == 0
    finally:
        serve.kill()
