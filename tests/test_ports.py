"""The SSH port probe agrees with QEMU: a port whose only users are TIME_WAIT sockets of
an earlier session is free (QEMU's listener binds with SO_REUSEADDR too)."""

from __future__ import annotations

import errno
import socket
import time

import pytest

from patchbay_vm_tasks import ports
from patchbay_vm_tasks.errors import VmUnavailable


def time_wait_port() -> int:
    """A loopback port left with a server-side socket in TIME_WAIT, and nothing else,
    as QEMU leaves its SSH forward after `vm.down`: its listener has SO_REUSEADDR (which
    Linux's bind check asks of the TIME_WAIT socket as well as of the new one)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    server_side, _ = listener.accept()
    server_side.close()  # the side that closes first ends in TIME_WAIT
    client.recv(1)  # sees the FIN
    client.close()
    listener.close()
    time.sleep(0.1)
    return port


def plain_bind_fails(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def test_time_wait_does_not_make_a_port_busy() -> None:
    port = time_wait_port()
    # The old probe (a plain bind) called this port busy for a minute after `vm.down`.
    assert plain_bind_fails(port), "the test did not manage to leave a TIME_WAIT socket"
    assert ports.port_is_free(port)
    # ... so an explicit port is kept, and the default one is reused, at once.
    assert ports.pick_ssh_port(port, explicit=True) == port
    assert ports.pick_ssh_port(port, explicit=False) == port


@pytest.mark.parametrize("reuse", [False, True])
def test_a_listening_port_is_busy(reuse: bool) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if reuse:  # as QEMU's own listener does
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        assert not ports.port_is_free(port)
        with pytest.raises(VmUnavailable, match=f"SSH port {port} .* is in use"):
            ports.pick_ssh_port(port, explicit=True)
        other = ports.pick_ssh_port(port, explicit=False)
        assert other != port and ports.port_is_free(other)


def test_default_port_taken_reuses_the_last_sessions_port() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = busy.getsockname()[1]
        previous = time_wait_port()
        assert ports.pick_ssh_port(taken, explicit=False, previous=previous) == previous
