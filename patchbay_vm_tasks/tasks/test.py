"""`test.run`: cross-compile Rust tests, stage them, run them in the guest."""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from invoke import Collection, Context, Exit

from .. import durations, settings
from ..errors import UsageError
from ..rusttest import cargo, staging, testrun
from ..ui import say
from ..vm import guest, lifecycle, sync
from .common import Task, check_output_path, emit, remainder, task, task_errors, write_junit_file


class CargoFlagsTask(Task):
    """A task whose short flags are cargo's (-p, -j, -F) rather than Invoke's guesses."""

    def __init__(self, *args: Any, short_flags: dict[str, str] | None = None, **kwargs: Any):
        self.short_flags = short_flags or {}
        super().__init__(*args, **kwargs)

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, Any]:
        opts = super().arg_opts(name, default, taken_names)
        if name in self.short_flags:
            opts["names"] = [opts["names"][0], self.short_flags[name]]
        return opts


@task(
    klass=CargoFlagsTask,
    auto_shortflags=False,
    # Invoke has no optional positional arguments, so FILTER is --filter/-f here
    # (`patchbay-vm test FILTER` takes it bare).
    short_flags={"filter": "f", "package": "p", "jobs": "j", "features": "F"},
    iterable=["package", "test", "features", "args"],
    help={
        "filter": "Run only tests whose name contains this (passed to each test binary).",
        "target": "Rust target triple to build for (default the musl one of the guest arch, "
        "QEMU_VM_ARCH).",
        "package": "Package to test (cargo -p). Repeatable.",
        "test": "Integration test target to build (cargo --test). Repeatable.",
        "jobs": "Parallel cargo jobs (cargo -j).",
        "features": "Cargo features to enable (cargo -F). Repeatable.",
        "release": "Build in release mode.",
        "lib": "Test only the library's unit tests.",
        "no_fail_fast": "Run every test binary even after one failed.",
        "recreate": "Boot a fresh VM first.",
        "sudo": "Run the tests as root in the guest (default: the guest user).",
        "timeout": "Limit per test binary, e.g. 300, 90s, 10m, 1h: it is then killed "
        "and counts as failed.",
        "junit": "Also write a JUnit XML file: a testcase per test of each binary (per try "
        "with --repeat).",
        "repeat": "Run the test binaries N times (default 1); the summary gives each binary's "
        "and each test's pass rate; exit 1 when any try failed.",
        "args": "Arguments for each test binary, as a list, for a task of yours that calls "
        "this one; on the command line they go after --.",
    },
)
def run(
    c: Context,
    filter: str | None = None,
    target: str | None = None,
    package: list[str] | None = None,
    test: list[str] | None = None,
    jobs: str | None = None,
    features: list[str] | None = None,
    release: bool = False,
    lib: bool = False,
    no_fail_fast: bool = False,
    recreate: bool = False,
    sudo: bool = False,
    timeout: str | None = None,
    junit: str | None = None,
    args: list[str] | None = None,
    repeat: str | None = None,
) -> None:
    """Build Rust tests with cargo and run them in the VM; args after -- go to each binary."""
    with task_errors():
        s = settings.from_context(c)
        limit = parse_timeout(timeout)
        check_output_path(junit, "--junit")
        tries = _positive_int(repeat, "--repeat") or 1
        build = cargo.TestBuild(
            target=target or cargo.default_target(s.arch),
            packages=tuple(package or ()),
            tests=tuple(test or ()),
            jobs=_positive_int(jobs, "--jobs"),
            features=tuple(features or ()),
            release=release,
            lib=lib,
            no_fail_fast=no_fail_fast,
        )
        cargo.check_target(
            build.target, cargo.installed_targets(cwd=s.project_dir), cwd=s.project_dir
        )
        test_args = remainder(args)
        # cargo builds while the VM boots (or is checked); a failed build stops the task
        # before anything runs in the guest.
        with cargo.start_build(build, s.project_dir) as job:
            vm = lifecycle.up(s, recreate=recreate)
            try:
                exes = job.result()
            except BaseException:
                vm.close()
                raise
        try:
            results = _run_all(
                vm, exes, filter, test_args, sudo, no_fail_fast, s.work_dir, limit, tries
            )
        finally:
            vm.close()
        if tries > 1:
            emit(testrun.format_repeat_summary(results, tries))
        emit(testrun.format_summary(results))
        if junit:
            say(f"JUnit report: {write_junit_file(write_test_junit, results, Path(junit))}")
    code = testrun.overall_exit_code(results)
    if code:
        raise Exit(code=code)


# A count on the command line: ASCII digits only (str.isdigit takes `²`, which int() then
# refuses), and no more of them than any machine has CPUs.
_COUNT_RE = re.compile(r"[0-9]{1,6}")


def _positive_int(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    if not _COUNT_RE.fullmatch(value) or int(value) == 0:
        raise UsageError(f"{flag}: expected a positive number, got {value!r}")
    return int(value)


# After the limit, `timeout` sends TERM; a binary still there this much later gets KILL.
KILL_AFTER_SECONDS = 5
TIMEOUT_EXIT_CODES = (124, 137)  # timeout(1): TERM did it / KILL was needed


def parse_timeout(value: str | None) -> tuple[str, float] | None:
    """(the duration as coreutils' `timeout` takes it, seconds) of a --timeout value."""
    if value is None:
        return None
    seconds = durations.parse(value, "--timeout")
    return durations.for_timeout(seconds), seconds


def with_timeout(argv: list[str], limit: tuple[str, float] | None) -> list[str]:
    """`argv` under coreutils' `timeout` in the guest: TERM at the limit, KILL soon after."""
    if limit is None:
        return argv
    return ["timeout", f"--kill-after={KILL_AFTER_SECONDS}", limit[0], *argv]


def timed_out(exit_code: int, elapsed: float, limit: tuple[str, float] | None) -> bool:
    # A test may exit 124 itself; only a run that lasted the whole limit was cut off (the
    # host's clock also counts the SSH round trip, so it never reads less than the guest's).
    return limit is not None and exit_code in TIMEOUT_EXIT_CODES and elapsed >= limit[1]


def write_test_junit(results: list, out: Path) -> Path:
    from ..files import write_atomic
    from ..viewer.junit import TestBinaryRun, test_run_junit_xml  # xml: only when asked

    runs = [
        TestBinaryRun(r.name, r.exit_code, r.output, r.seconds, r.try_no, r.tries) for r in results
    ]
    return write_atomic(out, test_run_junit_xml(runs).encode("utf-8"))


def _run_all(vm, exes, filter, test_args, sudo, no_fail_fast, work_dir, limit=None, tries=1):
    if not exes:
        say("cargo built no test binaries; nothing to run")
        return []
    guest_paths = staging.stage_test_binaries(exes, work_dir)
    copying = sync.copies_files(vm.record)
    if copying:  # no shared folders (QEMU_VM_FS=none): copy them in, their output out
        sync.stage(vm.conn, vm.settings, guest_paths)
    try:
        if tries == 1:
            return _run_each(vm, exes, guest_paths, filter, test_args, sudo, no_fail_fast, limit)
        # --repeat: every try runs (a failure stops only the rest of its own try, unless
        # --no-fail-fast), and keeps its output: in the JUnit file, and in a log per
        # binary under <work dir>/test-repeats/<started>/try-<k>/.
        results = []
        stamp = time.strftime("%y%m%d-%H%M%S", time.gmtime())
        for k in range(1, tries + 1):
            say(f"try {k}/{tries}")
            got = _run_each(vm, exes, guest_paths, filter, test_args, sudo, no_fail_fast, limit)
            got = [dataclasses.replace(r, try_no=k, tries=tries) for r in got]
            where = testrun.write_try_logs(work_dir, stamp, k, got)
            say(f"try {k}/{tries}: {sum(r.passed for r in got)} passed, "
                f"{sum(not r.passed for r in got)} failed; output in {where}")  # fmt: skip
            results += got
        return results
    finally:
        if copying:
            staging.bring_tests_home_after(vm.conn, vm.settings, as_root=sudo)


def _run_each(vm, exes, guest_paths, filter, test_args, sudo, no_fail_fast, limit) -> list:
    env = testrun.forwarded_env()
    results = []
    for exe, path in zip(exes, guest_paths, strict=True):
        say(f"running {exe.label}")
        argv = testrun.guest_test_argv(path, filter, test_args, env, sudo=sudo)
        started = time.monotonic()
        result = guest.run_argv(vm.conn, with_timeout(argv, limit), in_stream=False)
        took = time.monotonic() - started
        cut = limit[0] if timed_out(result.exited, took, limit) else None
        outcome = testrun.BinaryResult(
            exe.label, result.exited, result.stdout + result.stderr, took, cut
        )
        emit(testrun.format_result_line(outcome))
        results.append(outcome)
        if not outcome.passed and not no_fail_fast:
            say("stopping after the first failing binary (--no-fail-fast runs them all)")
            break
    return results


test = Collection("test", run)
