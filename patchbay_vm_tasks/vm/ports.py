"""The host's TCP ports of a VM: the SSH port, free as QEMU would bind it and picked when
the default is taken; free ports for QMP and the guest agent on Windows."""

from __future__ import annotations

import os
import socket

from ..errors import VmUnavailable
from ..ui import say

# Where a VM's host ports listen (SSH, and QMP and the guest agent on Windows): only this
# host may reach them.
LOOPBACK = "127.0.0.1"


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when QEMU could listen on host:port.

    QEMU's user-mode network (libslirp) sets SO_REUSEADDR on its forward's listener,
    so the TIME_WAIT sockets an earlier session left on the port do not stop it;
    probe the same way, or a `down` then `up` finds its own port "in use" for a
    minute. (On Windows SO_REUSEADDR would let a port in use be taken, and TIME_WAIT
    does not block a bind there anyway, so the probe binds plainly.)
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def pick_ssh_port(wanted: int, explicit: bool, previous: int | None = None) -> int:
    """`wanted` when free; else a free port, unless the user asked for `wanted` (SPEC 9.8).

    With the default port taken, the port of the VM's last session comes next (when
    free), so ssh configs written for it keep working; then any free port.
    """
    if port_is_free(wanted):
        return wanted
    if explicit:
        raise VmUnavailable(
            f"SSH port {wanted} (QEMU_VM_SSH_PORT) is in use on 127.0.0.1; "
            f"choose another or unset it to let one be picked"
        )
    if previous and previous != wanted and port_is_free(previous):
        say(f"SSH port {wanted} is in use; using {previous}, as last time")
        return previous
    port = free_port()
    say(f"SSH port {wanted} is in use; using {port} instead")
    return port


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nobody listens on now (the system picks one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
