"""The SSH port probe agrees with QEMU: a port whose only users are TIME_WAIT sockets of
an earlier session is free (QEMU's listener binds with SO_REUSEADDR too)."""

from __future__ import annotations

import errno
import socket
import sys
import time

import pytest

from patchbay_vm_tasks.errors import VmUnavailable
from patchbay_vm_tasks.vm import ports


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
    # The last ACK settles the server side into TIME_WAIT: wait until that is all there is.
    deadline = time.monotonic() + 30  # liveness only
    while local_tcp_states(port) != [TIME_WAIT]:
        assert time.monotonic() < deadline, f"port {port}: {local_tcp_states(port)}"
        time.sleep(0.01)
    return port


TIME_WAIT = "06"  # the state column of /proc/net/tcp


def local_tcp_states(port: int) -> list[str]:
    """The states of the IPv4 TCP sockets whose local end is 127.0.0.1:port."""
    # The address is the raw 32-bit word in host byte order, printed as hex.
    ip = int.from_bytes(socket.inet_aton("127.0.0.1"), sys.byteorder)
    local = f"{ip:08X}:{port:04X}"
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return [row[3] for row in rows if row[1] == local]


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


LISTEN = "0A"


def test_port_kept_busy_holds_a_free_port_for_the_block() -> None:
    from vmfixtures import hold_port, port_kept_busy

    probe = hold_port(0)
    assert probe is not None
    port = probe.getsockname()[1]
    probe.close()
    with port_kept_busy(port):
        assert not ports.port_is_free(port)
    assert ports.port_is_free(port)


def test_port_kept_busy_takes_over_when_another_holder_lets_go() -> None:
    from vmfixtures import hold_port, port_kept_busy

    other = hold_port(0)
    assert other is not None
    port = other.getsockname()[1]
    with port_kept_busy(port):
        assert not ports.port_is_free(port)  # the other process's socket
        other.close()
        deadline = time.monotonic() + 30  # liveness only
        while local_tcp_states(port) != [LISTEN]:  # the helper's own listener
            assert time.monotonic() < deadline, local_tcp_states(port)
            time.sleep(0.005)
        assert not ports.port_is_free(port)
    assert ports.port_is_free(port)
