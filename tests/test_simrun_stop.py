"""Finding the runner that the host's Ctrl-C must stop (simrunner/stop.py, run in the
guest) and the argv that sends it there (guestrun.interrupt_argv)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks.sim import guestrun
from patchbay_vm_tasks.simrunner import stop

ENTRY = f"{guestrun.RUN_ID_VAR}=0123456789abcdef"


def fake_proc(root: Path, procs: dict[int, tuple[int, str, list[str]]]) -> str:
    """A /proc-like folder: pid -> (ppid, comm, environment entries)."""
    for pid, (ppid, comm, env) in procs.items():
        d = root / str(pid)
        d.mkdir(parents=True)
        (d / "environ").write_bytes(b"\0".join(e.encode() for e in env) + b"\0")
        (d / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1\n")
    (root / "self").mkdir()  # not a pid: skipped
    (root / "77").mkdir()  # a process gone between listing and reading: skipped
    return str(root)


@pytest.mark.parametrize(
    ("procs", "expected"),
    [
        pytest.param(
            {  # sudo -> sh -c "env ENTRY runner" -> runner -> iperf3 in the lab
                900: (1, "sudo", ["PATH=/usr/bin"]),
                901: (900, "sh", [f"SUDO_COMMAND=/usr/bin/sh -c env {ENTRY} runner"]),
                902: (901, "python3", ["HOME=/root", ENTRY]),
                1003: (902, "iperf3", [ENTRY, "X=1"]),
                # the stopper itself: the entry only inside its SUDO_COMMAND
                1020: (1019, "python3", [f"SUDO_COMMAND=python3 -c ... {ENTRY}"]),
            },
            [902],
            id="only-the-runner-not-its-wrappers-children-or-the-stopper",
        ),
        pytest.param(
            {
                10: (1, "a b) (c", [ENTRY]),  # comm with spaces and parentheses
                11: (10, "child", [ENTRY]),
            },
            [10],
            id="odd-command-name",
        ),
        pytest.param(
            {
                5: (1, "other", [f"X{ENTRY}", f"{ENTRY}0", f"  {ENTRY}"]),
                6: (1, "another", []),
            },
            [],
            id="near-misses-are-not-the-entry",
        ),
        pytest.param(
            {20: (1, "r1", [ENTRY]), 30: (1, "r2", [ENTRY])},
            [20, 30],
            id="two-processes-started-with-it",
        ),
    ],
)
def test_topmost_carriers(tmp_path: Path, procs: dict, expected: list[int]) -> None:
    root = fake_proc(tmp_path, procs)
    assert stop.topmost(stop.carriers(ENTRY.encode(), root)) == expected


def signalled(stdout: str) -> list[tuple[int, list[str]]]:
    """The stopper's report: (pid, command line read before the signal) per line."""
    report = []
    for line in stdout.splitlines():
        pid, _, args = line.partition(" ")
        report.append((int(pid), json.loads(args)))
    return report


def test_command_line_is_read_whole_and_is_empty_once_the_process_is_gone(
    tmp_path: Path,
) -> None:
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "cmdline").write_bytes(b"python3\0-c\0a b\0\0\xff\0")
    (tmp_path / "6").mkdir()
    (tmp_path / "6" / "cmdline").write_bytes(b"")  # a kernel thread, or a zombie
    assert stop.command_line(5, str(tmp_path)) == ["python3", "-c", "a b", "", "\\xff"]
    assert stop.command_line(6, str(tmp_path)) == []
    assert stop.command_line(7, str(tmp_path)) == []  # no such process


def test_interrupt_argv_signals_the_runner_and_not_itself(tmp_path: Path) -> None:
    """Real processes: a wrapper shell carrying the id in SUDO_COMMAND (as sudo sets it),
    the runner started through `env`, a child of the runner; the argv the host sends, run
    here with the same SUDO_COMMAND so that it carries the id in a string too. What was
    signalled is checked in the stopper's own report, which outlives the runner: the
    runner exits on the signal, so its /proc entry may be gone by the time we look."""
    marker = tmp_path / "got-sigint"
    runner_py = (
        "import os, signal, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "def on_int(*_):\n"
        f"    open({str(marker)!r}, 'w').write('x'); child.kill(); child.wait(); sys.exit(130)\n"
        "signal.signal(signal.SIGINT, on_int)\n"
        "print('ready', os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    env = dict(os.environ, SUDO_COMMAND=f"/usr/bin/sh -c env {ENTRY} runner")
    wrapper = subprocess.Popen(
        ["sh", "-c", f'env {ENTRY} "$0" -c "$1"', sys.executable, runner_py],
        env=env, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        ready, runner_pid = wrapper.stdout.readline().split()
        assert ready == "ready"
        argv = guestrun.interrupt_argv(ENTRY.split("=", 1)[1])
        assert argv[:4] == ["python3", "-I", "-S", "-c"] and argv[-1] == ENTRY
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert signalled(out.stdout) == [(int(runner_pid), [sys.executable, "-c", runner_py])]
        assert wrapper.wait(30) == 130 and marker.exists()
    finally:
        if wrapper.poll() is None:
            wrapper.kill()
            wrapper.wait()
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
    assert (again.returncode, again.stdout.strip()) == (1, "")  # nothing left to stop


def test_the_runner_signal_handler_only_wakes_a_thread() -> None:
    """SIGINT inside `interruptions` sets the event (through the relay thread) and the
    context leaves no file descriptor behind."""
    import threading

    from patchbay_vm_tasks.simrunner.cli import interruptions

    before = len(os.listdir("/proc/self/fd"))
    cancel = threading.Event()
    with interruptions(cancel, False) as reasons:
        os.kill(os.getpid(), signal.SIGINT)
        assert cancel.wait(5)
    assert reasons == ["SIGINT"]
    cancel2 = threading.Event()
    with interruptions(cancel2, False):
        pass
    # The relay thread closes its end on the way out (liveness bound only).
    deadline = time.monotonic() + 30
    while len(os.listdir("/proc/self/fd")) != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(os.listdir("/proc/self/fd")) == before
    assert not cancel2.is_set()
