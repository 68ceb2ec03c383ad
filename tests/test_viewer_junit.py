"""JUnit files for sim.run and test.run, read back with junitparser; the report's data."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from junitparser import Failure, JUnitXml, Skipped
from test_viewer_fixture import INV_FAIL, INV_OK, make_workdir, write_invocation

from patchbay_vm_tasks.viewer import junit, report


def read_back(xml: str, tmp_path: Path) -> JUnitXml:
    path = tmp_path / "junit.xml"
    path.write_text(xml)
    return JUnitXml.fromfile(str(path))


def cases(xml: JUnitXml) -> dict[str, object]:
    return {case.name: case for suite in xml for case in suite}


def test_sim_invocation_all_ok(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    out = junit.write_sim_junit(work, tmp_path / "sims.xml", INV_OK)
    xml = JUnitXml.fromfile(str(out))
    found = cases(xml)
    assert set(found) == {"ping-e2e", "iperf-e2e"}
    assert all(case.is_passed for case in found.values())
    assert found["ping-e2e"].time == pytest.approx(4.21)
    assert "rtt min/avg/max/mdev" in found["ping-e2e"].system_out
    assert "==> device.client.iperf-client.stdout.log <==" in found["iperf-e2e"].system_out


def test_sim_invocation_with_a_failing_sim(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    xml = read_back(junit.sim_junit_xml(**junit.sim_invocation_data(work, "latest")), tmp_path)
    (suite,) = list(xml)
    assert suite.name == "patchbay" and suite.tests == 1 and suite.failures == 1
    (case,) = list(suite)
    (failure,) = case.result
    assert isinstance(failure, Failure)
    assert failure.message == (
        "step 0 run \"ping-check\" on sender: step 'ping-check' exited with code 2"
        " (see device.sender.ping-check.stderr.log)"
    )
    assert "phase: steps" in failure.text
    assert "ping: connect: Network is unreachable" in case.system_out


def junit_names(xml: str) -> list[tuple[str, ...]]:
    """Every name a CI keys its history on: the root's, each suite's, each case's."""
    root = ET.fromstring(xml)
    names = [("testsuites", root.get("name", ""))]
    for suite in root.iter("testsuite"):
        names.append(("testsuite", suite.get("name", "")))
        names += [
            ("testcase", c.get("classname", ""), c.get("name", "")) for c in suite.iter("testcase")
        ]
    return names


def test_sim_junit_names_are_the_same_in_every_run(tmp_path: Path) -> None:
    # Two invocations of the same sims: the fixture's and a later one.
    work = make_workdir(tmp_path)
    later = "sim-260302-090000"
    write_invocation(work, later, [("ping-e2e", "ping"), ("iperf-e2e", "iperf")])
    first = junit.write_sim_junit(work, tmp_path / "first.xml", INV_OK).read_text()
    second = junit.write_sim_junit(work, tmp_path / "second.xml", later).read_text()
    assert first != second
    assert (
        junit_names(first)
        == junit_names(second)
        == [
            ("testsuites", "patchbay"),
            ("testsuite", "patchbay"),
            ("testcase", "patchbay.ping-e2e", "ping-e2e"),
            ("testcase", "patchbay.iperf-e2e", "iperf-e2e"),
        ]
    )
    # The run folder is kept: a property of the suite and of each case, and system-out.
    for xml, folder in ((first, INV_OK), (second, later)):
        root = ET.fromstring(xml)
        suite = root.find("testsuite")
        assert suite is not None and suite[0].tag == "properties"
        assert suite.find("properties/property[@name='invocation']").get("value") == folder
        for case in suite.iter("testcase"):
            run = case.find("properties/property[@name='run_folder']").get("value")
            assert run == f"{folder}/{case.get('name')}"
            assert case.findtext("system-out").startswith(f"run folder: {run}\n")
    parsed = JUnitXml.fromfile(str(tmp_path / "first.xml"))
    (suite,) = list(parsed)
    assert {p.name: p.value for p in suite.properties()} == {"invocation": INV_OK}
    assert all(case.is_passed for case in suite)


def test_test_junit_names_are_the_same_in_every_run() -> None:
    # Two builds of the same tests: cargo's hash in a file name differs, the output too.
    out = "running 2 tests\ntest a ... ok\ntest b ... ok\n\ntest result: ok. 2 passed\n"
    slow = out.replace("2 passed", "2 passed; finished in 3.2s")
    first = junit.test_run_junit_xml(
        [
            junit.TestBinaryRun("net-3f2a9c0b1d4e5f60", 0, out, 1.5),
            junit.TestBinaryRun("mycrate::e2e (test)", 0, "no libtest lines\n", 0.2),
        ]
    )
    second = junit.test_run_junit_xml(
        [
            junit.TestBinaryRun("net-0123456789abcdef", 0, slow, 2.5),
            junit.TestBinaryRun("mycrate::e2e (test)", 0, "other output\n", 0.4),
        ]
    )
    assert (
        junit_names(first)
        == junit_names(second)
        == [
            ("testsuites", "cargo test (patchbay VM)"),
            ("testsuite", "net"),
            ("testcase", "net", "a"),
            ("testcase", "net", "b"),
            ("testsuite", "mycrate::e2e (test)"),
            ("testcase", "mycrate::e2e (test)", "mycrate::e2e (test)"),
        ]
    )
    suite = ET.fromstring(second).find("testsuite")
    assert suite.find("properties/property[@name='binary']").get("value") == (
        "net-0123456789abcdef"
    )
    assert junit.stable_binary_name("net-2") == "net-2"  # not a hash: kept


def test_sim_pending_and_parse_errors() -> None:
    sims = [
        {"sim": "never-ran", "status": "pending", "sim_dir": "never-ran"},
        {"sim": "bad-toml", "status": "error", "sim_dir": "bad-toml", "error": "bad key \x01"},
    ]
    xml = junit.sim_junit_xml("sim-1", sims, {}, {})
    assert "\x01" not in xml
    parsed = JUnitXml.fromstring(xml)
    found = cases(parsed)
    assert isinstance(found["never-ran"].result[0], Skipped)
    assert found["bad-toml"].result[0].message == "bad key \ufffd"


LIBTEST = """
running 4 tests
test net::tests::resolves ... ok
test net::tests::slow ... ignored, needs network
test net::tests::holepunch ... FAILED
test net::tests::relay - should panic ... ok

failures:

---- net::tests::holepunch stdout ----
thread 'net::tests::holepunch' panicked at src/net.rs:42:9:
assertion `left == right` failed
  left: 1
 right: 2
note: run with `RUST_BACKTRACE=1` environment variable to display a backtrace


failures:
    net::tests::holepunch

test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out
"""


def test_libtest_output_becomes_a_case_per_test(tmp_path: Path) -> None:
    runs = [
        junit.TestBinaryRun("mycrate-3f2a", 101, LIBTEST, 1.5),
        junit.TestBinaryRun("harness-false", 0, "custom harness: all good\n", 0.2),
        junit.TestBinaryRun("quiet", 1, "running 3 tests\n..F\nerror: boom\n", 0.3),
    ]
    xml = read_back(junit.test_run_junit_xml(runs), tmp_path)
    suites = {s.name: s for s in xml}
    lib = {c.name: c for c in suites["mycrate-3f2a"]}
    assert set(lib) == {
        "net::tests::resolves",
        "net::tests::slow",
        "net::tests::holepunch",
        "net::tests::relay - should panic",
    }
    assert lib["net::tests::resolves"].is_passed
    assert isinstance(lib["net::tests::slow"].result[0], Skipped)
    failure = lib["net::tests::holepunch"].result[0]
    assert failure.message.startswith("thread 'net::tests::holepunch' panicked at src/net.rs:42:9")
    assert "right: 2" in failure.text
    assert suites["mycrate-3f2a"].failures == 1 and suites["mycrate-3f2a"].skipped == 1
    (only,) = list(suites["harness-false"])
    assert only.name == "harness-false" and only.is_passed
    (quiet,) = list(suites["quiet"])
    assert quiet.result[0].message == "exit code 1" and "error: boom" in quiet.result[0].text


def test_binary_that_fails_after_passing_tests(tmp_path: Path) -> None:
    out = "running 1 test\ntest a ... ok\n\ntest result: ok. 1 passed\nSegmentation fault\n"
    xml = read_back(junit.test_run_junit_xml([junit.TestBinaryRun("crashy", 139, out)]), tmp_path)
    found = cases(xml)
    assert found["a"].is_passed
    assert found["(binary exit)"].result[0].message == "exit code 139"


def test_report_is_one_file_with_the_data_inlined(tmp_path: Path) -> None:
    work = make_workdir(tmp_path)
    (work / INV_OK / "ping-e2e" / "device.sender.ping-check.stdout.log").write_text(
        "</script><script>alert(1)</script>\n"
    )
    out = report.write_report(work, tmp_path / "r.html", INV_OK)
    text = out.read_text()
    assert "src=" not in text and 'href="static' not in text  # nothing to fetch
    assert text.count("</script>") == 2  # the data's own "</script>" was escaped
    start = text.index("window.PATCHBAY_REPORT = ") + len("window.PATCHBAY_REPORT = ")
    data = json.loads(text[start : text.index(";</script>", start)])
    assert [r["label"] for r in data["runs"]] == ["ping-e2e", "iperf-e2e"]
    assert data["combined"][INV_OK]["runs"][1]["steps"][0]["down_bytes"] == "262144000"
    ping = data["runData"][f"{INV_OK}/ping-e2e"]
    assert ping["state"]["routers"]["home"]["nat"] == "home"
    assert "device.sender.leak.stdout.log" not in ping["logText"]  # a link out: left out
    assert "<script>alert(1)" in ping["logText"]["device.sender.ping-check.stdout.log"]
    assert report.report_data(work, "latest")["invocation"] == INV_FAIL
    with pytest.raises(report.ReportError):
        report.report_data(work, "../outside")


def test_report_task_and_viewer_start(tmp_path: Path) -> None:
    from invoke import Context, Exit

    from patchbay_vm_tasks.errors import UsageError
    from patchbay_vm_tasks.tasks import view

    work = make_workdir(tmp_path)
    out = tmp_path / "out" / "report.html"
    view.report(Context(), output=str(out), work_dir=str(work), invocation=INV_OK)
    assert "window.PATCHBAY_REPORT" in out.read_text()
    with pytest.raises(Exit) as e:
        view.report(Context(), output=str(out), work_dir=str(work), invocation="sim-nope")
    assert e.value.code == 2
    srv = view.start_viewer(work, "127.0.0.1:0", open_browser=False)
    try:
        assert srv.url.startswith("http://127.0.0.1:")
        with pytest.raises(UsageError, match="cannot listen"):
            view.start_viewer(work, f"127.0.0.1:{srv.server_address[1]}", open_browser=False)
    finally:
        srv.shutdown()
        srv.server_close()
    with pytest.raises(UsageError, match="HOST:PORT"):
        view.start_viewer(work, "nonsense", open_browser=False)
