"""The guest over SSH: one kept Fabric connection per task, strict host key checking.

Under TCG every SSH handshake costs about a second (SPEC 10), so a task opens one
connection and sends batched scripts over it (SPEC 9.10).
"""

from __future__ import annotations

import logging
import re
import shlex
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import invoke

from ..errors import VmUnavailable
from .ports import LOOPBACK

if TYPE_CHECKING:
    import fabric

# Paramiko logs every refused handshake of the boot wait as an error with a traceback;
# we report failures ourselves.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False

# QEMU's port forward accepts a connection on the host's loopback at once.
SSH_CONNECT_TIMEOUT = 10
# sshd's banner and our login: about a second each under TCG (SPEC 10); more on a busy
# host, and a guest still booting is retried by `wait_ready` anyway.
SSH_HANDSHAKE_TIMEOUT = 15
# The boot wait's probe for sshd's greeting: a refused or silent port is retried.
BANNER_TIMEOUT = 3


def transport_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refused SSH connection raises. A function, so that Fabric and
    Paramiko (0.1 s to import) load only in tasks that really talk SSH; `except`
    evaluates it only when something was raised."""
    import paramiko

    return (paramiko.SSHException, EOFError, OSError, socket.timeout)


_ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07|[()][A-Z0-9])")


def connection(port: int, user: str, key: Path, known_hosts: Path) -> fabric.Connection:
    """A Fabric connection to the guest that trusts only the pinned host key."""
    import fabric
    import paramiko

    config = fabric.Config(overrides={"load_ssh_configs": False, "run": {"echo": False}})
    conn = fabric.Connection(
        LOOPBACK,
        user=user,
        port=port,
        config=config,
        connect_timeout=SSH_CONNECT_TIMEOUT,
        connect_kwargs={
            "key_filename": [str(key)],
            "look_for_keys": False,
            "allow_agent": False,
            "banner_timeout": SSH_HANDSHAKE_TIMEOUT,
            "auth_timeout": SSH_HANDSHAKE_TIMEOUT,
        },
    )
    # Fabric trusts unknown keys and consults ~/.ssh/known_hosts first; a stale entry
    # there for [127.0.0.1]:2222 must not matter, and an unknown key must be refused.
    conn.client._system_host_keys.clear()
    conn.client.load_host_keys(str(known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    return conn


def serial_tail(serial_log: Path, lines: int = 20) -> str:
    try:
        text = serial_log.read_text(errors="replace")
    except OSError:
        return "(no serial log)"
    clean = [_ANSI.sub("", line).strip() for line in text.replace("\r", "\n").split("\n")]
    return "\n".join([line for line in clean if line and line.isprintable()][-lines:])


def wait_ready(
    conn: fabric.Connection,
    alive: Callable[[], bool],
    serial_log: Path,
    timeout: float,
    on_progress: Callable[[float, str], None] | None = None,
) -> float:
    """Wait until SSH answers with the pinned key; stop at once if QEMU dies (SPEC 9.9).

    Returns the seconds waited.
    """
    from paramiko import BadHostKeyException as BadHostKey

    start = time.monotonic()
    last_error = "no answer yet"
    while True:
        waited = time.monotonic() - start
        if not alive():
            raise VmUnavailable(
                f"QEMU exited while the guest was booting. End of {serial_log}:\n"
                + serial_tail(serial_log)
            )
        if waited > timeout:
            raise VmUnavailable(
                f"the guest did not answer SSH within {timeout:.0f} s ({last_error}). "
                f"End of {serial_log}:\n{serial_tail(serial_log)}\n"
                f"Raise QEMU_VM_BOOT_TIMEOUT if the machine is just slow."
            )
        if on_progress:
            on_progress(waited, serial_tail(serial_log, 1)[:100])
        try:
            if not _banner(conn.port):
                time.sleep(0.25)  # a refused probe costs next to nothing
                continue
            conn.open()
            conn.run("true", hide=True, in_stream=False)
            return time.monotonic() - start
        except BadHostKey as e:
            raise VmUnavailable(
                f"the guest presented a host key other than the pinned one ({e}); "
                f"refusing to connect. `vm.up --recreate` builds a fresh guest."
            ) from None
        except (*transport_errors(), invoke.UnexpectedExit) as e:
            last_error = f"{type(e).__name__}: {e}".strip()
            conn.close()
            time.sleep(1.0)


def _banner(port: int) -> bool:
    """True once sshd greets; QEMU's user networking accepts and drops connections
    before that, which costs nothing to find out this way."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=BANNER_TIMEOUT) as s:
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def run_argv(
    c: invoke.Context,
    argv: Sequence[str],
    sudo: bool = False,
    hide: bool = False,
    cwd: str | None = None,
    **kwargs: Any,
) -> invoke.runners.Result:
    """Run `argv` through `c` (a local Context or a Fabric Connection); never raises on
    a non-zero exit. Quoting happens here, at the boundary to the remote shell."""
    command = shlex.join(argv)
    if cwd:
        command = f"cd {shlex.quote(cwd)} && {command}"
    if sudo:
        command = f"sudo -n sh -c {shlex.quote(command)}"
    try:
        return c.run(command, hide=hide, warn=True, pty=False, **kwargs)
    except transport_errors() as e:
        raise VmUnavailable(f"lost the connection to the guest: {type(e).__name__}: {e}") from None


def run_root_script(c: invoke.Context, script: str, what: str) -> None:
    """Run a shell script as root in one round trip; raise with its output on failure."""
    result = run_argv(c, ["sh", "-euc", script], sudo=True, hide=True, in_stream=False)
    if result.exited != 0:
        output = (result.stdout + result.stderr).strip()
        raise VmUnavailable(f"{what} failed in the guest (exit {result.exited}):\n{output}")


# --- the host's proxy, for the guest's package installs ---------------------------

# QEMU's user-mode network shows the host's loopback to the guest at this address.
HOST_FROM_GUEST = "10.0.2.2"
_LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")
APT_PROXY_CONF = "/etc/apt/apt.conf.d/90patchbay-proxy"


def guest_proxy_env(environ: Mapping[str, str]) -> dict[str, str]:
    """http_proxy, https_proxy, no_proxy for the guest, from the host's (either case).

    A proxy on the host's loopback is reached from the guest through QEMU's gateway.
    """
    env = {}
    for name in ("http_proxy", "https_proxy", "no_proxy"):
        value = environ.get(name) or environ.get(name.upper())
        if not value:
            continue
        if name != "no_proxy":
            # apt wants a scheme; curl and the rest accept one.
            value = value if "://" in value else f"http://{value}"
            parts = urlsplit(value)
            host = parts.hostname or ""
            if f"[{host}]" in _LOOPBACK_NAMES or host in _LOOPBACK_NAMES:
                netloc = parts.netloc.rsplit("@", 1)
                hostport = HOST_FROM_GUEST + (f":{parts.port}" if parts.port else "")
                netloc[-1] = hostport
                value = urlunsplit(parts._replace(netloc="@".join(netloc)))
        env[name] = value
    return env


def proxy_script(env: Mapping[str, str]) -> str:
    """Shell lines that export the proxy for the rest of a root script and pin it for
    apt (so later `apt-get` in the guest uses it too); with no proxy, remove that pin."""
    lines = []
    for name, value in env.items():
        lines.append(f"export {name}={shlex.quote(value)} {name.upper()}={shlex.quote(value)}")
    apt = [
        f'Acquire::{scheme}::Proxy "{env[f"{scheme}_proxy"]}";'
        for scheme in ("http", "https")
        if f"{scheme}_proxy" in env and '"' not in env[f"{scheme}_proxy"]
    ]
    if apt:
        lines.append(f"printf '%s\\n' {' '.join(shlex.quote(a) for a in apt)} > {APT_PROXY_CONF}")
    else:
        lines.append(f"[ ! -e {APT_PROXY_CONF} ] || rm -f {APT_PROXY_CONF}")
    return "\n".join(lines)
