"""Guest side of `test.run`: the command each test binary runs with, and the verdicts.

The caller runs `shlex.join(guest_test_argv(...))` over SSH for every staged binary
(paths from `staging.stage_test_binaries`), prints `format_result_line` after each one, then
`format_summary` and exits with `overall_exit_code` (SPEC 7.4, 7.5).
"""

from __future__ import annotations

import os
import re
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    try_no: int = 0  # with --repeat: which try (1..tries); 0 without
    tries: int = 0

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


def format_result_line(r: BinaryResult) -> str:
    """`PASS name`, `FAIL name (exit N)` or `FAIL name (timed out after DUR)`."""
    which = f" [try {r.try_no}/{r.tries}]" if r.tries else ""  # test.run --repeat
    if r.passed:
        return f"PASS {r.name}{which}"
    if r.timed_out:
        return f"FAIL {r.name} (timed out after {r.timed_out}){which}"
    return f"FAIL {r.name} (exit {r.exit_code}){which}"


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


# ── --repeat ───────────────────────────────────────────────────────────────────


def _table(rows: list[list[str]], numeric_from: int) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = [
        "  ".join(
            c.ljust(widths[i]) if i < numeric_from else c.rjust(widths[i]) for i, c in enumerate(r)
        ).rstrip()
        for r in rows
    ]
    out.insert(1, "  ".join("-" * w for w in widths))
    return out


def _rate(passes: int, runs: int) -> str:
    return f"{passes / runs * 100:.0f}%" if runs else "-"


def repeat_stats(results: Sequence[BinaryResult]) -> dict:
    """Per binary (in the order first run) and per test of each binary (from libtest's
    output): runs, passes, failures (and ignored, for tests); a binary's seconds too."""
    from ..viewer.junit import parse_libtest  # the one libtest reader (JUnit's)

    binaries: dict[str, dict] = {}
    for r in results:
        b = binaries.setdefault(r.name, {"runs": 0, "passes": 0, "seconds": [], "tests": {}})
        b["runs"] += 1
        b["passes"] += r.passed
        b["seconds"].append(r.seconds)
        for case in parse_libtest(r.output):
            t = b["tests"].setdefault(case.name, {"runs": 0, "passes": 0, "ignored": 0})
            if case.outcome == "ignored":
                t["ignored"] += 1
                continue
            t["runs"] += 1
            t["passes"] += case.outcome == "ok"
    return binaries


def format_repeat_summary(results: Sequence[BinaryResult], tries: int) -> str:
    """`test.run --repeat N`: per test binary its tries, passes, failures, pass rate and
    seconds (min, median, max); then per test that libtest reported, the same counts."""
    stats = repeat_stats(results)
    lines = [f"{tries} tries"]
    if not stats:
        return "\n".join([*lines, "no test binary ran"])
    rows = [["binary", "tries", "passed", "failed", "pass rate", "time s min", "median", "max"]]
    for name, b in stats.items():
        secs = b["seconds"]
        rows.append(
            [
                name,
                str(b["runs"]),
                str(b["passes"]),
                str(b["runs"] - b["passes"]),
                _rate(b["passes"], b["runs"]),
                *(f"{v:.2f}" for v in (min(secs), statistics.median(secs), max(secs))),
            ]
        )
    lines += _table(rows, 1)
    rows = [["binary", "test", "tries", "passed", "failed", "ignored", "pass rate"]]
    for name, b in stats.items():
        for test, t in b["tests"].items():
            rows.append(
                [
                    name,
                    test,
                    str(t["runs"]),
                    str(t["passes"]),
                    str(t["runs"] - t["passes"]),
                    str(t["ignored"]),
                    _rate(t["passes"], t["runs"]),
                ]
            )
    if len(rows) > 1:
        lines += ["", *_table(rows, 2)]
    return "\n".join(lines)


REPEAT_LOGS = "test-repeats"
_FILE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def log_name(binary: str) -> str:
    """A test binary's label as a file name: `testcrate::net (test)` -> `testcrate-net-test.log`."""
    return (_FILE_CHARS.sub("-", binary).strip("-.") or "binary")[:120] + ".log"


def write_try_logs(
    work_dir: Path, stamp: str, try_no: int, results: Sequence[BinaryResult]
) -> Path:
    """Each binary's output of one try, as <work dir>/test-repeats/<stamp>/try-<k>/<binary>.log
    (folders made real: the guest writes the work dir; files created anew). The folder."""
    from .. import files

    folder = files.real_dir(work_dir, [REPEAT_LOGS, stamp, f"try-{try_no}"])
    for r in results:
        files.write_atomic(folder / log_name(r.name), r.output.encode("utf-8", "replace"))
    return folder
