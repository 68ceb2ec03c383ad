"""`test.run`: cross-compile Rust tests, stage them, run them in the guest."""

from __future__ import annotations

from typing import Any

from invoke import Collection, Context, Exit, Task, task

from .. import cargo, guest, lifecycle, settings, testrun
from ..errors import UsageError
from ..ui import say
from .common import remainder, task_errors


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
    iterable=["package", "test", "features"],
    help={
        "filter": "Run only tests whose name contains this (passed to each test binary).",
        "target": "Rust target triple to build for (default the musl one of the host arch).",
        "package": "Package to test (cargo -p). Repeatable.",
        "test": "Integration test target to build (cargo --test). Repeatable.",
        "jobs": "Parallel cargo jobs (cargo -j).",
        "features": "Cargo features to enable (cargo -F). Repeatable.",
        "release": "Build in release mode.",
        "lib": "Test only the library's unit tests.",
        "no_fail_fast": "Run every test binary even after one failed.",
        "recreate": "Boot a fresh VM first.",
        "sudo": "Run the tests as root in the guest (default: the guest user).",
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
) -> None:
    """Build Rust tests with cargo and run them in the VM; args after -- go to each binary."""
    with task_errors():
        s = settings.from_context(c)
        build = cargo.TestBuild(
            target=target or cargo.default_target(),
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
        test_args = remainder()
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
            results = _run_all(vm, exes, filter, test_args, sudo, no_fail_fast, s.work_dir)
        finally:
            vm.close()
        print(testrun.format_summary(results))
    code = testrun.overall_exit_code(results)
    if code:
        raise Exit(code=code)


def _positive_int(value: str | None, flag: str) -> int | None:
    if value is None:
        return None
    if not value.isdigit() or int(value) == 0:
        raise UsageError(f"{flag}: expected a positive number, got {value!r}")
    return int(value)


def _run_all(vm, exes, filter, test_args, sudo, no_fail_fast, work_dir) -> list:
    if not exes:
        say("cargo built no test binaries; nothing to run")
        return []
    guest_paths = cargo.stage_test_binaries(exes, work_dir)
    env = testrun.forwarded_env()
    results = []
    for exe, path in zip(exes, guest_paths, strict=True):
        say(f"running {exe.label}")
        argv = testrun.guest_test_argv(path, filter, test_args, env, sudo=sudo)
        result = guest.run_argv(vm.conn, argv, in_stream=False)
        outcome = testrun.BinaryResult(exe.label, result.exited)
        print(testrun.format_result_line(outcome), flush=True)
        results.append(outcome)
        if not outcome.passed and not no_fail_fast:
            say("stopping after the first failing binary (--no-fail-fast runs them all)")
            break
    return results


test = Collection("test", run)
