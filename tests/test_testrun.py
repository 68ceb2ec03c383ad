"""Guest side of test.run: forwarded env, the guest command line, PASS/FAIL and the summary."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from patchbay_vm_tasks.rusttest.cargo import TestExecutable
from patchbay_vm_tasks.rusttest.staging import stage_test_binaries
from patchbay_vm_tasks.rusttest.testrun import (
    GUEST_PATH,
    GUEST_TEST_CWD,
    BinaryResult,
    format_result_line,
    format_summary,
    forwarded_env,
    guest_test_argv,
    overall_exit_code,
)

NET = "/work/binaries/tests/net-047a6ab307bbed30"


# --- forwarded environment ------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, {}),
        ({"HOME": "/home/me", "PATH": "/bin", "CARGO": "x"}, {}),
        (
            {"RUST_LOG": "debug", "RUST_BACKTRACE": "1", "HOME": "/h"},
            {"RUST_LOG": "debug", "RUST_BACKTRACE": "1"},
        ),
        (
            {"PATCHBAY_OUTDIR": "/work/out", "PATCHBAY_SIM": "a.toml", "RUST_LOG": ""},
            {"RUST_LOG": "", "PATCHBAY_OUTDIR": "/work/out", "PATCHBAY_SIM": "a.toml"},
        ),
    ],
)
def test_forwarded_env(environ: dict[str, str], expected: dict[str, str]) -> None:
    assert forwarded_env(environ) == expected


def test_forwarded_env_defaults_to_the_process_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RUST_LOG", "RUST_BACKTRACE", "PATCHBAY_OUTDIR", "PATCHBAY_SIM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RUST_LOG", "trace")
    assert forwarded_env() == {"RUST_LOG": "trace"}


# --- the guest command line -----------------------------------------------------------


# What a non-login SSH shell or sudo's secure_path may leave a test with: no sbin folders.
USER_PATH = "/usr/local/bin:/usr/bin:/bin"
SBIN_TOOLS = ("ip", "nft", "tc")  # what the tests call; iproute2 and nftables put them in sbin


def test_the_guest_argv_runs_the_binary_where_it_lies_with_the_sbin_tools_on_path(
    tmp_path: Path,
) -> None:
    """The argv run here as the guest runs it, from a caller whose PATH lacks the sbin
    folders: the binary starts in its folder and finds `ip`, `nft` and `tc`."""
    probe = tmp_path / "probe"
    probe.write_text('#!/bin/sh\npwd\nfor t in "$@"; do command -v "$t" || echo "no $t"; done\n')
    probe.chmod(0o755)
    argv = guest_test_argv(str(probe), None, SBIN_TOOLS, {}, cwd=str(tmp_path))
    out = subprocess.run(argv, env={"PATH": USER_PATH}, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    cwd, *found = out.stdout.splitlines()
    assert cwd == str(tmp_path)
    assert [Path(f).name for f in found] == list(SBIN_TOOLS), out.stdout
    assert all(str(Path(f).parent) in GUEST_PATH.split(":") for f in found)


def test_tests_run_from_the_folder_they_are_staged_in(tmp_path: Path) -> None:
    exe = tmp_path / "target" / "debug" / "deps" / "net-1111"
    exe.parent.mkdir(parents=True)
    exe.write_bytes(b"test binary")
    staged = stage_test_binaries([TestExecutable(exe, "net", "pkg", "test")], tmp_path / "work")
    assert [str(Path(g).parent) for g in staged] == [GUEST_TEST_CWD]
    assert guest_test_argv(staged[0], None, [], {})[1] == f"--chdir={GUEST_TEST_CWD}"


ENV_PREFIX = ["env", "--chdir=/work/binaries/tests", f"PATH={GUEST_PATH}"]


@pytest.mark.parametrize(
    ("filter", "args", "env", "sudo", "expected"),
    [
        (None, [], {}, False, [*ENV_PREFIX, NET]),
        ("", [], {}, False, [*ENV_PREFIX, NET]),
        ("netns", [], {}, False, [*ENV_PREFIX, NET, "netns"]),
        (
            "netns",
            ["--test-threads=4", "--nocapture"],
            {"RUST_LOG": "debug"},
            False,
            [*ENV_PREFIX, "RUST_LOG=debug", NET, "netns", "--test-threads=4", "--nocapture"],
        ),
        (None, ["--test-threads=1"], {}, False, [*ENV_PREFIX, NET, "--test-threads=1"]),
        # sudo resets the environment; `sudo env ...` sets it again after the reset.
        (
            None,
            [],
            {"RUST_BACKTRACE": "1"},
            True,
            ["sudo", "-n", *ENV_PREFIX, "RUST_BACKTRACE=1", NET],
        ),
    ],
)
def test_guest_test_argv(
    filter: str | None, args: list[str], env: dict[str, str], sudo: bool, expected: list[str]
) -> None:
    assert guest_test_argv(NET, filter, args, env, sudo=sudo) == expected


def test_guest_test_argv_lets_env_override_path() -> None:
    argv = guest_test_argv(NET, None, [], {"PATH": "/opt/bin"})
    assert [a for a in argv if a.startswith("PATH=")] == ["PATH=/opt/bin"]


@pytest.mark.parametrize(
    ("path", "env"),
    [
        ("net-1", {}),  # relative: env would search PATH for it
        ("/work/binaries/tests/a=b", {}),  # env would take it for an assignment
        (NET, {"BAD NAME": "x"}),
        (NET, {"A=B": "x"}),
        (NET, {"1X": "x"}),
    ],
)
def test_guest_test_argv_rejects_what_env_would_misread(path: str, env: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        guest_test_argv(path, None, [], env)


AWKWARD = [
    "two words",
    "it's",
    'say "hi"',
    "$HOME",
    "$(touch /tmp/pwned)",
    "`id`",
    "a;b&&c|d",
    "*",
    "back\\slash",
    "new\nline",
    "",
    "--test-threads=4",
    "ünïcödé",
]


@pytest.mark.parametrize("sudo", [False, True])
def test_guest_argv_round_trips_through_shlex(sudo: bool) -> None:
    env = {"RUST_LOG": "info,my crate=debug $X", "PATCHBAY_SIM": 'it\'s a "sim".toml'}
    argv = guest_test_argv(NET, "name with space", AWKWARD, env, sudo=sudo)
    assert shlex.split(shlex.join(argv)) == argv


def test_guest_argv_through_a_real_shell(tmp_path: Path) -> None:
    """What SSH does: a POSIX shell parses the joined string, then env runs the binary."""
    probe = tmp_path / "probe"
    probe.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),\n"
        "    'env': {k: os.environ.get(k) for k in ('PATH', 'RUST_LOG', 'PATCHBAY_SIM')}}))\n"
    )
    probe.chmod(0o755)
    env = {"RUST_LOG": "info,x=debug $HOME `id`", "PATCHBAY_SIM": "it's.toml"}
    argv = guest_test_argv(str(probe), "a filter", AWKWARD, env, cwd=str(tmp_path))
    proc = subprocess.run(
        ["sh", "-c", shlex.join(argv)], capture_output=True, text=True, check=True, timeout=30
    )
    got = json.loads(proc.stdout)
    assert got["argv"] == ["a filter", *AWKWARD]
    assert got["cwd"] == str(tmp_path)
    assert got["env"] == {"PATH": GUEST_PATH, **env}
    assert not Path("/tmp/pwned").exists()


# --- verdicts -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "line"),
    [
        (BinaryResult("net-047a", 0), "PASS net-047a"),
        (BinaryResult("net-047a", 101), "FAIL net-047a (exit 101)"),
        (BinaryResult("testcrate::net (test)", 1), "FAIL testcrate::net (test) (exit 1)"),
        (BinaryResult("crash", -11), "FAIL crash (exit -11)"),
        (BinaryResult("hung", 124, timed_out="30s"), "FAIL hung (timed out after 30s)"),
    ],
)
def test_format_result_line(result: BinaryResult, line: str) -> None:
    assert format_result_line(result) == line


SUMMARY_LINE = re.compile(r"\A\d+ passed, \d+ failed\Z")


@pytest.mark.parametrize(
    ("codes", "last_line", "exit_code"),
    [
        ([], "0 passed, 0 failed", 0),
        ([0], "1 passed, 0 failed", 0),
        ([0, 0, 0], "3 passed, 0 failed", 0),
        ([101], "0 passed, 1 failed", 1),
        ([0, 101, 0, 2], "2 passed, 2 failed", 1),
        ([-9, 0], "1 passed, 1 failed", 1),
    ],
)
def test_summary_and_exit_code(codes: list[int], last_line: str, exit_code: int) -> None:
    results = [BinaryResult(f"bin{i}", code) for i, code in enumerate(codes)]
    summary = format_summary(results)
    lines = summary.splitlines()
    assert lines[-1] == last_line
    assert SUMMARY_LINE.match(lines[-1])
    assert not summary.endswith("\n")
    # The failures are named again above the count, in run order.
    assert lines[:-1] == [format_result_line(r) for r in results if r.exit_code != 0]
    assert overall_exit_code(results) == exit_code
