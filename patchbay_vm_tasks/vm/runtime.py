"""A VM's runtime: its record's addresses and mounts, the PID check, what a task holds."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import TaskError
from ..settings import VmSettings
from . import openssh, qemu
from .state import StateDir

if TYPE_CHECKING:
    import fabric


class BootInterrupted(TaskError):
    """Ctrl-C during a boot; everything it started is stopped (SPEC 9.15)."""

    exit_code = 130


@dataclass
class Vm:
    """A running VM and the one connection this task keeps to it."""

    settings: VmSettings
    record: dict[str, Any]
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
                self.record["ssh_port"], self.record["ssh_user"], state.key, state.known_hosts
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


def state_of(settings: VmSettings) -> StateDir:
    return StateDir(settings.state_dir)


def running_pid(state: StateDir) -> int | None:
    """The PID of our QEMU when it is alive and really ours, else None."""
    pid = qemu.read_pid(state.pidfile)
    return pid if qemu.is_ours(pid, str(state.root)) else None


def qmp_address(state: StateDir, record: dict[str, Any]) -> qemu.Address:
    """QMP: the state dir's unix socket; a loopback TCP port on Windows (QEMU there)."""
    port = record.get("qmp_port")
    return ("127.0.0.1", port) if port else state.qmp_socket


def qga_address(state: StateDir, record: dict[str, Any]) -> qemu.Address:
    port = record.get("qga_port")
    return ("127.0.0.1", port) if port else state.qga_socket


def mount_record(settings: VmSettings) -> list[dict[str, str]]:
    return [{"guest": g, "host": str(h), "access": a} for g, h, a in settings.mounts()]


def cpus_explicit(settings: VmSettings) -> bool:
    """Whether a CPU count was asked for (QEMU_VM_CPUS, or a config/flag value other than
    the default); only the default is fitted to the host under TCG."""
    return "QEMU_VM_CPUS" in os.environ or settings.cpus != qemu.DEFAULT_CPUS


def remove_transient(state: StateDir, record: dict[str, Any] | None) -> list[Path]:
    """Kill our helper processes and remove files that only mean something while running."""
    openssh.stop_master(state)
    marker = str(state.root)
    helpers = list((record or {}).get("helpers", []))
    helpers += [qemu.read_pid(p) for p in state.root.glob("virtiofsd-*.pid")]
    for pid in {p for p in helpers if p}:
        qemu.terminate(pid, marker)  # checks the process is ours first
    stale_qemu = qemu.read_pid(state.pidfile)
    if stale_qemu:
        qemu.terminate(stale_qemu, marker)
    removed = state.transient()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
