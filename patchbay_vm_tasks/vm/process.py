"""Our QEMU as a host process: starting it detached, telling it is ours, stopping it.

A PID file alone is not proof (SPEC 9.11): a process is ours when it is alive and its
command line names our state dir (`marker`). Stopping asks QEMU first (QMP), then
signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ..errors import VmUnavailable
from . import qmp
from .qemu import Address, QemuSpec, build_argv

# Windows creation flags (absent from `subprocess` elsewhere): no console, and not in
# the caller's process group, so a Ctrl-C in the task's console does not reach QEMU.
_DETACHED = getattr(subprocess, "DETACHED_PROCESS", 0x00000008) | getattr(
    subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200
)
# Windows: how long QEMU may take to open its QMP port (what -daemonize waits for).
WINDOWS_START_TIMEOUT = 30.0
# How long a process has after SIGTERM to close its files and exit, before SIGKILL.
TERMINATE_GRACE = 5.0
# A guest asked to power off (ACPI) shuts itself down first (systemd stops its units,
# slowly under TCG); past this QEMU is told to quit.
POWERDOWN_WAIT = 30.0
# QMP `quit` ends QEMU without the guest's shutdown: it only closes its files.
QUIT_WAIT = 5.0
# `quit_now` is for a guest with nothing to save (a failed or interrupted boot): every
# step is short, so that an error path does not keep the user waiting.
QUIT_NOW_QMP_TIMEOUT = 2.0
QUIT_NOW_WAIT = 3.0
QUIT_NOW_GRACE = 2.0


def start(
    spec: QemuSpec,
    run=subprocess.run,
    popen=subprocess.Popen,
    connects=None,
) -> int:
    """Start QEMU for `spec`, detached from this process; returns its PID.

    POSIX: `-daemonize` returns once QEMU is set up (errors in the argv come back on
    its stderr), and QEMU writes `-pidfile`. Windows: a detached process, its PID
    file written here, and its stderr in `spec.stderr_log`; started once its QMP port
    answers. `run`, `popen`, `connects` are for the tests.
    """
    argv = build_argv(spec)
    spec.pidfile.unlink(missing_ok=True)
    if not spec.windows:
        proc = run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise VmUnavailable(
                f"QEMU failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n"
                f"command: {' '.join(argv)}"
            )
        pid = read_pid(spec.pidfile)
        if not pid:
            raise VmUnavailable(f"QEMU started but wrote no PID file {spec.pidfile}")
        return pid
    with spec.stderr_log.open("wb") as err:
        child = popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            creationflags=_DETACHED,
            close_fds=True,
        )
    spec.pidfile.write_text(f"{child.pid}\n")
    connects = connects or qmp.answers
    deadline = time.monotonic() + WINDOWS_START_TIMEOUT
    while True:
        code = child.poll()
        if code is not None:
            spec.pidfile.unlink(missing_ok=True)
            message = spec.stderr_log.read_text(errors="replace").strip()
            raise VmUnavailable(
                f"QEMU failed to start (exit {code}): {message}\ncommand: {' '.join(argv)}"
            )
        if connects(spec.qmp_address):
            return child.pid
        if time.monotonic() > deadline:
            return child.pid  # running; the boot wait that follows judges the guest
        time.sleep(0.1)


# --- is it ours ------------------------------------------------------------------


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The command line of `pid`, or None when there is no such process."""
    if os.path.isdir("/proc/self"):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # Empty for a zombie: dead, whatever its PID file says.
        return raw.decode(errors="replace").split("\0")[:-1] or None
    if sys.platform == "win32":
        # No /proc, no ps: ask WMI. One string, since a state dir path may hold spaces.
        query = f"(Get-CimInstance Win32_Process -Filter 'ProcessId={int(pid)}').CommandLine"
        argv = ["powershell", "-NoProfile", "-NonInteractive", "-Command", query]
        out = subprocess.run(argv, capture_output=True, text=True)
        line = out.stdout.strip()
        return [line] if out.returncode == 0 and line else None
    # macOS has no /proc. The whole line too, for a marker path with spaces.
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    return [*line.split(), line] if out.returncode == 0 and line else None


def is_ours(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive and its command line holds `marker` (a path of our state dir).

    A PID file alone is not proof (SPEC 9.11): the number may have been reused.
    """
    if not pid:
        return False
    cmd = process_cmdline(pid)
    return bool(cmd) and any(marker in arg for arg in cmd)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_cmdline(pid) is None:
            return True
        time.sleep(0.1)
    return process_cmdline(pid) is None


# --- stopping --------------------------------------------------------------------


def terminate(pid: int, marker: str, grace: float = TERMINATE_GRACE) -> None:
    """SIGTERM, then SIGKILL, to a process that is verifiably ours."""
    # Windows has no SIGKILL; its SIGTERM is TerminateProcess, which cannot be ignored.
    for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
        if not is_ours(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, grace):
            return


def quit_now(pid: int, qmp_address: Address, marker: str) -> str:
    """Stop our QEMU at once: QMP `quit`, then signals. For a guest with nothing to save
    (a boot that failed or was interrupted), where an ACPI powerdown only waits."""
    if not is_ours(pid, marker):
        return "already stopped"
    with contextlib.suppress(OSError, ValueError):
        qmp.execute(qmp_address, "quit", timeout=QUIT_NOW_QMP_TIMEOUT)
        if wait_gone(pid, QUIT_NOW_WAIT):
            return "quit"
    terminate(pid, marker, grace=QUIT_NOW_GRACE)
    return "killed"


def shutdown(
    pid: int, qmp_address: Address, marker: str, powerdown_wait: float = POWERDOWN_WAIT
) -> str:
    """Stop our QEMU: ACPI powerdown, then QMP quit, then signals. Returns how it went."""
    steps = (("system_powerdown", powerdown_wait, "powered down"), ("quit", QUIT_WAIT, "quit"))
    for command, wait, how in steps:
        if not is_ours(pid, marker):
            return "already stopped"
        try:
            qmp.execute(qmp_address, command)
        except (OSError, ValueError):
            continue
        if wait_gone(pid, wait):
            return how
    terminate(pid, marker)
    return "killed"
