"""Host side of a runner process in the guest: its identity, and what Ctrl-C does to it.

A command run over SSH without a pty gets no signal when the client goes; Fabric, on
Ctrl-C, closes the channel. The builtin runner watches its stdin and cleans up when it
closes (`--watch-stdin`); the host then waits, on the same connection, until that
process is gone, so the task only ends after the guest's clean-up (SPEC 9.15: 130).
"""

from __future__ import annotations

import secrets
import shlex
import subprocess
from collections.abc import Sequence

import invoke

from . import guest
from .errors import VmUnavailable
from .ui import say, warn

EXIT_INTERRUPTED = 130
RUN_ID_VAR = "PATCHBAY_HOST_RUN_ID"
CLEANUP_WAIT = 60.0


def new_run_id() -> str:
    """A token put into the runner's environment, so its process can be found again."""
    return secrets.token_hex(8)


def wait_gone_script(run_id: str, timeout: float) -> list[str]:
    """argv (run as root) that waits until no process carries the run id; exit 1 on timeout."""
    needle = f"{RUN_ID_VAR}={run_id}"
    script = (
        f"end=$(( $(date +%s) + {int(timeout)} )); "
        f"while grep -qs -- {shlex.quote(needle)} /proc/[0-9]*/environ; do "
        '[ "$(date +%s)" -lt "$end" ] || exit 1; sleep 0.2; done'
    )
    return ["sh", "-c", script]


def run_interruptible(
    conn: invoke.Context, argv: Sequence[str], run_id: str, *, what: str = "the runner"
) -> int:
    """Run argv as root in the guest, streaming its output; its exit code.

    On Ctrl-C: the channel closes (the runner sees its stdin end and cleans up), we wait
    for the runner's process to be gone and return 130.
    """
    try:
        # in_stream=False: our stdin is not forwarded, but the channel's stays open
        # until we close it, which is what the runner's --watch-stdin relies on.
        return guest.run_argv(conn, argv, sudo=True, in_stream=False).exited
    except KeyboardInterrupt:
        pass
    say(f"interrupted: waiting for {what} in the guest to clean up")
    try:
        result = guest.run_argv(
            conn,
            wait_gone_script(run_id, CLEANUP_WAIT),
            sudo=True,
            hide=True,
            in_stream=False,
        )
    except (VmUnavailable, KeyboardInterrupt):
        warn("could not confirm the guest's clean-up; `invoke vm.ssh -- sudo ip netns list`")
        return EXIT_INTERRUPTED
    if result.exited:
        warn(f"{what} was still running after {CLEANUP_WAIT:.0f} s in the guest")
    else:
        say("cleaned up in the guest")
    return EXIT_INTERRUPTED


def qemu_version(qemu_bin: str) -> str:
    """`QEMU emulator version 7.2.19 (...)` -> `7.2.19`; "" when it cannot be told."""
    try:
        out = subprocess.run(
            [qemu_bin, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    words = first.split()
    return words[3] if len(words) > 3 and words[2] == "version" else first.strip()
