"""test.run against the shared guest: the fixture crate, built for the gnu target
(the musl target cannot be installed on this machine)."""

from __future__ import annotations

import re
import time

import junitparser
import pytest
from vmfixtures import TIMINGS, VmEnv

pytestmark = pytest.mark.vm
GNU = "x86_64-unknown-linux-gnu"


def test_passing_run(vm: VmEnv) -> None:
    started = time.monotonic()
    out = vm.invoke("test.run", "--target", GNU, "--no-fail-fast")
    TIMINGS["test.run build+run, warm VM (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    assert "PASS testcrate::net (test)" in lines
    assert any(line.startswith("PASS testcrate") and "lib" in line for line in lines)
    assert re.fullmatch(r"\d+ passed, 0 failed", lines[-1])
    # The namespace test ran, as the guest user, inside a fresh user+net namespace.
    assert "test netns_veth ... ok" in out.stdout
    assert (vm.work_dir / "binaries" / "tests").stat().st_mode & 0o777 == 0o777


def test_filter_and_args_after_double_dash(vm: VmEnv) -> None:
    out = vm.invoke("test.run", "--filter", "passing", "--target", GNU, "--test", "net", "--",
                    "--nocapture", "--test-threads=1")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test result: ok. 1 passed; 0 failed" in out.stdout
    assert "2 filtered out" in out.stdout and "netns_veth" not in out.stdout
    assert 'testcrate args: ["passing", "--nocapture", "--test-threads=1"]' in out.stdout
    assert out.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_libtest_filter_after_double_dash(vm: VmEnv) -> None:
    # As with `cargo test -- NAME`: the binaries take a bare filter among their args.
    out = vm.invoke("test.run", "--target", GNU, "--test", "net", "--", "netns")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "test netns_veth ... ok" in out.stdout and "test passing" not in out.stdout
    assert out.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_failing_test_fails_the_task(vm: VmEnv) -> None:
    out = vm.cli("test", "--target", GNU, "-F", "failing", "--test", "net")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL testcrate::net (test)" in out.stdout
    assert "deliberately_fails" in out.stdout
    assert out.stdout.splitlines()[-1] == "0 passed, 1 failed"


def test_sudo_runs_as_root(vm: VmEnv) -> None:
    out = vm.cli("test", "netns", "--target", GNU, "--test", "net", "--sudo")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-1] == "1 passed, 0 failed"


def test_build_failure_shows_cargo_and_runs_nothing(vm: VmEnv) -> None:
    broken = vm.project / "tests" / "broken.rs"
    broken.write_text('#[test]\nfn nope() { let x: u32 = "no"; }\n')
    try:
        out = vm.invoke("test.run", "--target", GNU)
    finally:
        broken.unlink()
    assert out.returncode == 101, out.stdout + out.stderr
    assert "mismatched types" in out.stderr
    assert "PASS" not in out.stdout and "passed," not in out.stdout


def test_timeout_kills_a_hung_binary(vm: VmEnv) -> None:
    out = vm.invoke("test.run", "--target", GNU, "-F", "hanging", "--test", "net",
                    "--timeout", "3s", "--", "hangs_forever")  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "FAIL testcrate::net (test) (timed out after 3s)" in out.stdout
    assert out.stdout.splitlines()[-1] == "0 passed, 1 failed"


def test_junit_has_a_case_per_test(vm: VmEnv, tmp_path) -> None:
    report = tmp_path / "tests.xml"
    out = vm.invoke("test.run", "--target", GNU, "-F", "failing", "--test", "net",
                    "--junit", str(report))  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    xml = junitparser.JUnitXml.fromfile(str(report))
    cases = {case.name: case for suite in xml for case in suite}
    assert {"passing", "netns_veth", "filtered_out_example", "deliberately_fails"} <= set(cases)
    assert cases["passing"].is_passed
    (failure,) = cases["deliberately_fails"].result
    assert "deliberately_fails" in (failure.message or "") + (failure.text or "")
