"""`vm.ssh` through the OpenSSH client, with one master connection kept across tasks.

Under TCG a handshake with the guest's sshd costs about a second (it starts
sshd-session and sshd-auth for each connection); a command over a kept master costs
about 0.15 s. The first `vm.ssh` becomes the master (ControlMaster=auto) and stays in
the background for CONTROL_PERSIST after its last use; it goes away by itself when the
guest does, and `vm.down` and the other stops ask it to exit first.

Windows' OpenSSH has no ControlMaster: there each `vm.ssh` makes its own connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from .ports import LOOPBACK
from .state import StateDir

CONTROL_PERSIST = "10m"
# `ssh -O exit` asks a master on its local socket: answered at once, or never (a master
# that hangs is not waited for; its socket is removed anyway).
STOP_MASTER_TIMEOUT = 5
# sun_path holds 104 bytes on macOS (108 on Linux), and ssh first binds a temporary
# name: the control path plus a dot and 16 random characters.
_MAX_CONTROL_PATH = 104 - 18


def pinned_options(known_hosts: Path) -> list[tuple[str, str]]:
    """The client options that trust only the VM's pinned host key (and our own key):
    the same for `vm.ssh` and the block `vm.ssh-config` prints."""
    return [
        ("IdentitiesOnly", "yes"),
        ("UserKnownHostsFile", str(known_hosts)),
        ("StrictHostKeyChecking", "yes"),
        ("LogLevel", "ERROR"),
    ]


def _control_path_option(path: Path) -> str:
    return "ControlPath=" + str(path).replace("%", "%%")  # ssh expands %-tokens there


def client() -> str | None:
    """The OpenSSH client on PATH, if any."""
    return shutil.which("ssh")


def multiplexes(platform: str = sys.platform) -> bool:
    return platform != "win32"


def control_path(state: StateDir) -> Path:
    """The master's socket: in the state dir, or (a deep project path) a short name in
    the temp dir derived from it."""
    path = state.root / "ssh.ctl"
    if len(str(path).encode()) <= _MAX_CONTROL_PATH:
        return path
    digest = hashlib.sha256(str(state.root).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"patchbay-vm-{digest}.ctl"


def argv(
    ssh_bin: str,
    state: StateDir,
    port: int,
    user: str,
    command: Sequence[str] | None,
    platform: str = sys.platform,
) -> list[str]:
    """The ssh command line for `command` in the guest (quoted here, at the boundary to
    the guest's shell), or for an interactive shell on a terminal when it is None.
    `port`, `user`: the VM's SSH port and guest user (its record's)."""
    args = [ssh_bin, "-i", str(state.key), "-p", str(port)]
    for name, value in pinned_options(state.known_hosts):
        args += ["-o", f"{name}={value}"]
    if multiplexes(platform):
        args += [
            "-o", "ControlMaster=auto",
            "-o", _control_path_option(control_path(state)),
            "-o", f"ControlPersist={CONTROL_PERSIST}",
        ]  # fmt: skip
    target = f"{user}@{LOOPBACK}"
    if command is None:
        return [*args, "-t", "--", target]
    return [*args, "-T", "--", target, shlex.join(command)]


def hand_over(argv: list[str], platform: str = sys.platform) -> int:
    """Become ssh (stdin, the exit code and signals pass straight through). Windows has
    no exec: os.exec* there starts a new process and this one ends with 0 at once, so
    there ssh runs as a child and its exit code is returned."""
    if platform == "win32":
        return subprocess.run(argv, check=False).returncode
    os.execv(argv[0], argv)
    raise AssertionError("unreachable")  # execv returns only by raising


def stop_master(state: StateDir, ssh_bin: str | None = None) -> bool:
    """Ask a kept master to close its connection and exit; True when one was there."""
    path = control_path(state)
    if not path.exists():
        return False
    ssh_bin = ssh_bin or client()
    if ssh_bin:
        argv = [ssh_bin, "-o", _control_path_option(path), "-O", "exit", "vm"]
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(argv, capture_output=True, timeout=STOP_MASTER_TIMEOUT, check=False)
    path.unlink(missing_ok=True)  # a master killed with SIGKILL leaves its socket
    return True
