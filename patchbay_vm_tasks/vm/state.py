"""The state directory `.qemu-vm/<name>/` (SPEC 8): its files, its privacy, the lock."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import VmUnavailable
from ..settings import VmSettings

# The state dir and its secrets (keys, the seed ISO): the user's alone.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600
# How long a task waits for another one's hold on the VM (a `vm.up` that boots holds it
# for the whole boot: QEMU_VM_BOOT_TIMEOUT is 600 s by default, and a base image may be
# downloaded or built first).
LOCK_TIMEOUT = 900.0


def _tighten(path: Path, mode: int) -> None:
    """Take away what mode does not allow (group and other bits) from an existing path of
    ours; a link is left alone."""
    try:
        st = path.lstat()
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) & ~mode == 0:
        return
    with contextlib.suppress(OSError):
        os.chmod(path, stat.S_IMODE(st.st_mode) & mode)


@dataclass(frozen=True)
class StateDir:
    root: Path

    disk = property(lambda self: self.root / "disk.qcow2")
    seed = property(lambda self: self.root / "seed.iso")
    pidfile = property(lambda self: self.root / "qemu.pid")
    serial_log = property(lambda self: self.root / "serial.log")
    qmp_socket = property(lambda self: self.root / "qmp.sock")
    qga_socket = property(lambda self: self.root / "qga.sock")
    key = property(lambda self: self.root / "id_ed25519")
    host_key = property(lambda self: self.root / "ssh_host_ed25519_key")
    known_hosts = property(lambda self: self.root / "known_hosts")
    runtime = property(lambda self: self.root / "runtime.json")  # the record: record.py
    lockfile = property(lambda self: self.root / ".lock")
    # The SSH port of the last session, kept across `down` so the next `up` can reuse it.
    last_port = property(lambda self: self.root / "ssh-port")
    # The UEFI variables of this VM: its own writable copy of the firmware's template.
    efi_vars = property(lambda self: self.root / "efi-vars.fd")
    # The guest's state saved by `vm.down` (memory and devices) and what it was saved
    # with; the next `vm.up` resumes from it instead of booting.
    saved_state = property(lambda self: self.root / "saved-state")
    saved_meta = property(lambda self: self.root / "saved-state.json")

    def read_last_port(self) -> int | None:
        try:
            port = int(self.last_port.read_text().strip())
        except (OSError, ValueError):
            return None
        return port if 0 < port < 65536 else None

    def transient(self) -> list[Path]:
        """Files that only mean something while the VM runs."""
        patterns = (
            "qemu.pid",
            "qmp.sock",
            "qga.sock",
            "runtime.json",
            "virtiofs-*.sock",
            "virtiofsd-*.pid",
        )
        return [p for pat in patterns for p in self.root.glob(pat)]

    def ensure(self) -> Path:
        """The state dir, made (and kept) private: mode 0700, with `.qemu-vm` above it.

        It holds the SSH client key, the guest's host key and the seed ISO with that key
        in clear: another local user who could read them could log in to the guest or
        impersonate it to our pinned client. A dir (or seed) of an older version that
        others could read is tightened."""
        for folder in (self.root.parent, self.root):
            with contextlib.suppress(FileExistsError):
                folder.mkdir(mode=PRIVATE_DIR_MODE, parents=True)
            _tighten(folder, PRIVATE_DIR_MODE)
        _tighten(self.seed, PRIVATE_FILE_MODE)
        return self.root

    def lock(self, timeout: float = LOCK_TIMEOUT) -> FileLock:
        """Held while a task starts, stops or cleans the VM (SPEC 9.12)."""
        self.ensure()
        return FileLock(str(self.lockfile), timeout=timeout)


def state_of(settings: VmSettings) -> StateDir:
    return StateDir(settings.state_dir)


@contextlib.contextmanager
def locked(state: StateDir, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    lock = state.lock(timeout)
    try:
        lock.acquire()
    except Timeout:
        raise VmUnavailable(
            f"another task has held {state.lockfile} for {timeout:.0f} s; "
            f"is a `vm.up` still running?"
        ) from None
    try:
        yield
    finally:
        lock.release()
