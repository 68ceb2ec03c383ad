"""--repeat N on sim.run and test.run (issue 21, item 2), without a VM: the count, the
tries' marks, the summaries, the exit code and the JUnit files."""

from __future__ import annotations

import json
from pathlib import Path

import junitparser
import pytest
from test_bad_input import assert_usage_error, patchbay_vm
from test_viewer_fixture import write_invocation

from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.rusttest import testrun
from patchbay_vm_tasks.sim import repeat, rundata
from patchbay_vm_tasks.viewer import junit


def props_of(case) -> dict[str, str]:
    """A junitparser testcase's own properties (junitparser reads only a suite's)."""
    return {p.get("name"): p.get("value") for p in case._elem.findall("properties/property")}


# ── the count ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "value, tries", [(None, 1), ("1", 1), ("6", 6), (" 12 ", 12), ("1000", 1000)]
)
def test_repeat_counts(value, tries) -> None:
    assert repeat.parse_repeat(value) == tries


@pytest.mark.parametrize("value", ["0", "-1", "1001", "x", "²", "1.5", "", "9" * 20])
def test_bad_repeat_counts(value) -> None:
    with pytest.raises(UsageError, match="--repeat"):
        repeat.parse_repeat(value)


@pytest.mark.parametrize(
    "command, extra",
    [(["run", "sims/x.toml"], []), (["test"], []), (["run", "sims/x.toml"], ["--junit", "j.xml"])],
)
def test_repeat_0_is_exit_2_before_anything_starts(tmp_path: Path, command, extra) -> None:
    (tmp_path / "sims").mkdir()
    (tmp_path / "sims" / "x.toml").write_text('[sim]\nname = "x"\n')
    out = patchbay_vm(tmp_path, *command, "--repeat", "0", *extra)
    assert_usage_error(out, "--repeat")


@pytest.mark.parametrize(
    "codes, code",
    [([0, 0, 0], 0), ([0, 1, 0], 1), ([1, 1], 1), ([0, 130], 130), ([1, 69], 69), ([0, 2, 1], 2)],
)
def test_overall_code(codes, code) -> None:
    assert repeat.overall_code(codes) == code


# ── sim tries ──────────────────────────────────────────────────────────────────


def six_tries(work: Path, failing=(3, 6)) -> list[str]:
    """Six run folders of a sim `flaky` (an iperf step), tries 3 and 6 failing, marked as
    sim.run --repeat 6 marks them."""
    folders = []
    for k in range(1, 7):
        name = f"sim-260305-1000{k:02d}"
        write_invocation(work, name, [("flaky", "fail" if k in failing else "iperf")])
        folders.append(name)
        repeat.mark_try(work, name, folders[0], k, 6)
    return folders


def test_marks_group_the_tries(tmp_path: Path) -> None:
    work = tmp_path / "work"
    folders = six_tries(work)
    assert json.loads((work / folders[2] / "repeat.json").read_text()) == {
        "group": folders[0],
        "try": 3,
        "tries": 6,
    }
    (group,) = rundata.work_dir_groups(work)
    assert group.folders() == folders


def test_a_mark_is_never_written_through_a_link(tmp_path: Path) -> None:
    work = tmp_path / "work"
    write_invocation(work, "sim-260305-100001", [("flaky", "iperf")])
    target = tmp_path / "elsewhere.json"
    target.write_text("keep")
    (work / "sim-260305-100001" / "repeat.json").symlink_to(target)
    repeat.mark_try(work, "sim-260305-100001", "sim-260305-100001", 1, 2)
    assert target.read_text() == "keep"
    assert not (work / "sim-260305-100001" / "repeat.json").is_symlink()


def test_sim_summary_gives_pass_rate_and_spread(tmp_path: Path) -> None:
    work = tmp_path / "work"
    folders = six_tries(work)
    group = rundata.group_of_folders(work, folders)
    text = repeat.format_summary(group)
    lines = text.splitlines()
    assert lines[0].startswith("6 tries of sim-260305-100001: sim-260305-100001, ")
    row = next(line for line in lines if line.startswith("flaky "))
    assert row.split()[:5] == ["flaky", "6", "4", "2", "67%"]
    metric = next(line for line in lines if "down Mbit/s" in line)
    assert metric.split()[0:2] == ["flaky", "iperf-client"] and " 4 " in metric
    data = repeat.summary_data(group)
    (sim,) = data["sims"]
    assert (sim["tries"], sim["passes"], sim["failures"]) == (6, 4, 2)
    assert 0 < sim["pass_rate"] < 1
    stat = sim["steps"]["iperf-client"]["down_mbit_s"]
    assert stat["n"] == 4 and stat["min"] == stat["median"] == stat["max"]


def test_tries_without_a_folder_count_as_failed(tmp_path: Path) -> None:
    work = tmp_path / "work"
    folders = six_tries(work, failing=())[:2]
    text = repeat.format_summary(rundata.group_of_folders(work, folders), missing=1)
    assert "1 try(s) left no run folder" in text
    row = next(line for line in text.splitlines() if line.startswith("flaky "))
    assert row.split()[:5] == ["flaky", "3", "2", "1", "67%"]


def test_sim_junit_has_a_case_per_try_with_stable_names(tmp_path: Path) -> None:
    work = tmp_path / "work"
    folders = six_tries(work)
    out = junit.write_sim_repeat_junit((work, folders), tmp_path / "sims.xml")
    xml = junitparser.JUnitXml.fromfile(str(out))
    (suite,) = list(xml)
    assert suite.name == "patchbay" and suite.tests == 6 and suite.failures == 2
    cases = list(suite)
    assert {(c.classname, c.name) for c in cases} == {("patchbay.flaky", "flaky")}
    tries = []
    for case in cases:
        props = props_of(case)
        tries.append((int(props["try"]), case.is_passed))
        assert props["tries"] == "6" and props["run_folder"].startswith("sim-260305-1000")
        assert f"try: {props['try']}" in case.system_out
    assert tries == [(1, True), (2, True), (3, False), (4, True), (5, True), (6, False)]


# ── test binaries ──────────────────────────────────────────────────────────────


def libtest(flaky_ok: bool) -> str:
    flaky = "ok" if flaky_ok else "FAILED"
    out = (
        "running 3 tests\n"
        "test passing ... ok\n"
        f"test flaky_on_third_try ... {flaky}\n"
        "test slow ... ignored\n"
    )
    if not flaky_ok:
        out += (
            "\nfailures:\n\n---- flaky_on_third_try stdout ----\n"
            "thread 'flaky_on_third_try' panicked at tests/net.rs:9:5:\ntry 3 fails by design\n"
            "\nfailures:\n    flaky_on_third_try\n\n"
            "test result: FAILED. 1 passed; 1 failed; 1 ignored\n"
        )
    return out


def binary_tries(n: int = 6) -> list[testrun.BinaryResult]:
    results = []
    for k in range(1, n + 1):
        ok = k % 3 != 0
        results.append(
            testrun.BinaryResult(
                "testcrate::net (test)", 0 if ok else 101, libtest(ok), 1.0 + k / 10, None, k, n
            )  # fmt: skip
        )
        results.append(
            testrun.BinaryResult("testcrate (lib)", 0, "test unit ... ok\n", 0.5, None, k, n)
        )
    return results


def test_test_summary_per_binary_and_per_test() -> None:
    results = binary_tries()
    text = testrun.format_repeat_summary(results, 6)
    lines = text.splitlines()
    assert lines[0] == "6 tries"
    net = next(line for line in lines if line.startswith("testcrate::net (test)  "))
    assert net.split()[2:6] == ["6", "4", "2", "67%"]
    assert "1.10" in net and "1.60" in net  # min and max seconds
    flaky = next(line for line in lines if "flaky_on_third_try" in line)
    assert flaky.split()[-5:] == ["6", "4", "2", "0", "67%"]
    ignored = next(line for line in lines if " slow " in line)
    assert ignored.split()[-5:] == ["0", "0", "0", "6", "-"]
    # The failing tries again, then the contract's last line over every binary run.
    summary = testrun.format_summary(results).splitlines()
    assert summary == [
        "FAIL testcrate::net (test) (exit 101) [try 3/6]",
        "FAIL testcrate::net (test) (exit 101) [try 6/6]",
        "10 passed, 2 failed",
    ]
    assert testrun.overall_exit_code(results) == 1


def test_test_junit_has_a_case_per_test_per_try(tmp_path: Path) -> None:
    from patchbay_vm_tasks.tasks.test import write_test_junit

    out = write_test_junit(binary_tries(), tmp_path / "tests.xml")
    xml = junitparser.JUnitXml.fromfile(str(out))
    flaky = [
        (case, props_of(case))
        for suite in xml
        for case in suite
        if case.name == "flaky_on_third_try"
    ]
    assert len(flaky) == 6
    assert {case.classname for case, _ in flaky} == {"testcrate::net (test)"}
    failed = sorted(int(props["try"]) for case, props in flaky if not case.is_passed)
    assert failed == [3, 6]
    suites = [s for s in xml if s.name == "testcrate::net (test)"]
    assert len(suites) == 6  # a suite per try, the same name


def test_try_logs_land_in_the_work_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "test-repeats").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (work / "test-repeats" / "260305-100000").symlink_to(tmp_path / "elsewhere")
    got = binary_tries(1)
    folder = testrun.write_try_logs(work, "260305-100000", 1, got)
    assert folder == work / "test-repeats" / "260305-100000" / "try-1"
    assert not list((tmp_path / "elsewhere").iterdir())  # the planted link was replaced
    assert (folder / "testcrate-net-test.log").read_text() == got[0].output
    assert testrun.log_name("a/../b c") == "a-..-b-c.log"
