"""Host side of a runner process in the guest: its identity, and what Ctrl-C does to it.

A command run over SSH without a pty gets no signal when the client is interrupted, and
Fabric's own answer to Ctrl-C (close the channel) dead-locks while it waits for the
output of a process that only stops once that channel closes. So Ctrl-C is ours: the
first one sends SIGINT to the runner in the guest over a second channel of the same
connection (the runner cleans up and exits 130, its output still streaming); a second
one stops waiting. The builtin runner also watches its stdin, so a host that dies
outright (the connection drops) still leaves a clean guest.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
from collections.abc import Sequence

import invoke

from .. import packagedata
from ..errors import VmUnavailable
from ..ui import say, warn
from ..vm import guest

EXIT_INTERRUPTED = 130
RUN_ID_VAR = "PATCHBAY_HOST_RUN_ID"


def new_run_id() -> str:
    """A token put into the runner's environment, so its process can be found again."""
    return secrets.token_hex(8)


def interrupt_argv(run_id: str) -> list[str]:
    """argv (run as root in the guest) that sends SIGINT to the runner started with
    `run_id` in its environment; only the runner, so that it stops its children in order.
    The guest side is `simrunner/stop.py`, sent as text: it needs only the guest's python3."""
    source = packagedata.read_text(packagedata.GUEST_STOPPER)
    return ["python3", "-I", "-S", "-c", source, f"{RUN_ID_VAR}={run_id}"]


def run_interruptible(
    conn: invoke.Context, argv: Sequence[str], run_id: str, *, what: str = "the runner"
) -> int:
    """Run argv as root in the guest, streaming its output; its exit code, or 130 when
    Ctrl-C (SIGINT) stopped it, once the guest has cleaned up."""
    interrupted = threading.Event()

    def on_sigint(_signum: int, _frame: object) -> None:
        if interrupted.is_set():
            warn(f"stopped waiting for {what} in the guest; `invoke vm.ssh -- sudo ip netns list`")
            conn.close()  # the runner sees its stdin end and cleans up by itself
            os._exit(EXIT_INTERRUPTED)
        interrupted.set()
        say(f"interrupted: stopping {what} in the guest (Ctrl-C again to stop waiting)")
        threading.Thread(target=_interrupt_remote, args=(conn, run_id), daemon=True).start()

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        # in_stream=False: our stdin is not forwarded, but the channel's stays open
        # until the command ends, which is what the runner's --watch-stdin relies on.
        code = guest.run_argv(conn, argv, sudo=True, in_stream=False).exited
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if interrupted.is_set():
        say("cleaned up in the guest")
        return EXIT_INTERRUPTED
    return code


def _interrupt_remote(conn: invoke.Context, run_id: str) -> None:
    try:
        res = guest.run_argv(conn, interrupt_argv(run_id), sudo=True, hide=True, in_stream=False)
    except VmUnavailable as exc:
        warn(f"could not reach the guest to stop the runner: {exc}")
        return
    if res.exited not in (0, 1):  # 1: no runner left to stop, it had ended by itself
        detail = (res.stderr or res.stdout).strip()
        warn(f"could not signal the runner in the guest (exit {res.exited}): {detail}")
