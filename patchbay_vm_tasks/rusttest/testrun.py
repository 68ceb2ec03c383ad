"""Guest side of `test.run`: the command each test binary runs with, and the verdicts.

The caller runs `shlex.join(guest_test_argv(...))` over SSH for every staged binary
(paths from `staging.stage_test_binaries`), prints `format_result_line` after each one, then
`format_summary` and exits with `overall_exit_code` (SPEC 7.4, 7.5).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .staging import GUEST_TESTS_DIR

# Passed from the host environment to each test binary when set (SPEC 7.4).
FORWARDED_ENV_VARS = ("RUST_LOG", "RUST_BACKTRACE", "PATCHBAY_OUTDIR", "PATCHBAY_SIM")

# A full PATH: a non-login SSH shell and sudo's secure_path may both leave out the sbin
# folders, where `ip`, `nft` and `tc` live.
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Tests write output next to themselves, so they run from the folder they were staged in.
GUEST_TEST_CWD = str(GUEST_TESTS_DIR)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def forwarded_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of FORWARDED_ENV_VARS that are set in `environ` (default os.environ)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in FORWARDED_ENV_VARS if name in env}


def guest_test_argv(
    guest_path: str,
    filter: str | None,
    test_args: Sequence[str],
    env: Mapping[str, str],
    sudo: bool = False,
    cwd: str = GUEST_TEST_CWD,
) -> list[str]:
    """The guest command line for one test binary, to be `shlex.join`ed for SSH.

    `env --chdir=CWD PATH=... K=V... BINARY [FILTER] [ARGS...]`: GNU env changes to the
    binaries' folder and sets the variables itself, so no shell `cd` is needed and, with
    `sudo=True` (`sudo -n env ...`), the variables survive sudo's environment reset. `-n`
    makes sudo fail instead of waiting for a password nobody can type. `test_args` are
    the task's arguments after `--`, for libtest (e.g. `--test-threads=4`).
    """
    if not guest_path.startswith("/") or "=" in guest_path:
        # env would take a NAME=VALUE-looking or relative word for something else.
        raise ValueError(f"guest test path must be absolute and contain no '=': {guest_path!r}")
    variables = {"PATH": GUEST_PATH, **env}  # a PATH in `env` wins
    for name in variables:
        if not _ENV_NAME.match(name):
            raise ValueError(f"not a valid environment variable name: {name!r}")
    assignments = [f"{name}={value}" for name, value in variables.items()]
    argv = ["sudo", "-n"] if sudo else []
    argv += ["env", f"--chdir={cwd}", *assignments, guest_path]
    if filter:
        argv.append(filter)
    argv += list(test_args)
    return argv


@dataclass(frozen=True)
class BinaryResult:
    """How one test binary ended in the guest."""

    name: str
    exit_code: int
    output: str = ""  # stdout then stderr, for JUnit
    seconds: float = 0.0
    timed_out: str | None = None  # the --timeout it was killed after

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def format_result_line(r: BinaryResult) -> str:
    """`PASS name`, `FAIL name (exit N)` or `FAIL name (timed out after DUR)`."""
    if r.passed:
        return f"PASS {r.name}"
    if r.timed_out:
        return f"FAIL {r.name} (timed out after {r.timed_out})"
    return f"FAIL {r.name} (exit {r.exit_code})"


def format_summary(results: Sequence[BinaryResult]) -> str:
    """The failing binaries again, one FAIL line each, then `N passed, N failed`.

    The last line's exact form is part of the contract: CI reads it.
    """
    failed = [r for r in results if not r.passed]
    lines = [format_result_line(r) for r in failed]
    lines.append(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return "\n".join(lines)


def overall_exit_code(results: Sequence[BinaryResult]) -> int:
    """0 when every binary passed (also when there were none), else 1.

    Not the first failing binary's code: libtest's is always 101, a crash's is anything,
    and 1 stays apart from 2 (bad input), 69 (no VM) and 101 (the build failed).
    """
    return 0 if all(r.passed for r in results) else 1
