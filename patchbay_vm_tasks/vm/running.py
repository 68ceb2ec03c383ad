"""A running VM as the tasks see it: whether ours runs, the handle a task holds on it,
and sweeping up after one that stopped (or never got up)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TaskError
from ..settings import VmSettings
from . import openssh, process
from .record import VmRecord
from .state import StateDir, state_of

if TYPE_CHECKING:
    import fabric


class BootInterrupted(TaskError):
    """Ctrl-C during a boot; everything it started is stopped (SPEC 9.15)."""

    exit_code = 130


@dataclass
class Vm:
    """A running VM and the one connection this task keeps to it."""

    settings: VmSettings
    record: VmRecord
    # None until a command needs it: a warm `up` that only asked QMP and the guest
    # agent opens no SSH connection and never loads Fabric.
    _conn: fabric.Connection | None
    booted: bool  # False when an already running VM was reused

    @property
    def conn(self) -> fabric.Connection:
        if self._conn is None:
            from . import guest

            state = state_of(self.settings)
            self._conn = guest.connection(
                self.record.ssh_port, self.record.ssh_user, state.key, state.known_hosts
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def running_pid(state: StateDir) -> int | None:
    """The PID of our QEMU when it is alive and really ours, else None."""
    pid = process.read_pid(state.pidfile)
    return pid if process.is_ours(pid, str(state.root)) else None


def remove_transient(state: StateDir, record: VmRecord | None) -> list[Path]:
    """Kill our helper processes and remove files that only mean something while running."""
    openssh.stop_master(state)
    marker = str(state.root)
    helpers = list(record.helpers if record else [])
    helpers += [process.read_pid(p) for p in state.root.glob("virtiofsd-*.pid")]
    for pid in {p for p in helpers if p}:
        process.terminate(pid, marker)  # checks the process is ours first
    stale_qemu = process.read_pid(state.pidfile)
    if stale_qemu:
        process.terminate(stale_qemu, marker)
    removed = state.transient()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
