"""The two clients that talk to a running VM without SSH: QMP (QEMU's own control socket)
and the QEMU guest agent (a daemon in the guest, reached through a virtio-serial port).

Both speak JSON lines over a socket (`qemu.Address`: a unix socket, or a loopback TCP port
on Windows). Stopping QEMU (QMP first, then signals) is in process.py.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from pathlib import Path

from .qemu import SEED_DEVICE, SEED_NODE, SEED_PORT, Address

# A QMP command is answered at once by a QEMU that runs; longer means it hangs.
QMP_TIMEOUT = 5.0
# How long a probe connection may take: something listening answers in milliseconds.
PROBE_TIMEOUT = 0.5
# Connecting to the guest agent: its socket is QEMU's, so an answer is quick when the
# agent runs in the guest; callers that wait for a booting guest retry instead.
AGENT_TIMEOUT = 1.0
# A guest command run through the agent (a mount, a sync): seconds when all is well.
AGENT_RUN_TIMEOUT = 5.0
# What `read_file` takes at most (the files read are /proc/self/mounts and a marker),
# and the agent's read size: 64 KiB a round trip, base64 in one JSON line.
AGENT_READ_LIMIT = 1 << 20
AGENT_READ_CHUNK = 64 << 10


def connect(address: Address, timeout: float) -> socket.socket:
    """A connected socket to a unix socket path or a (host, port)."""
    if isinstance(address, tuple):
        return socket.create_connection(address, timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(address))
    except OSError:
        s.close()
        raise
    return s


def answers(address: Address) -> bool:
    """Whether something accepts a connection at `address` now."""
    try:
        with connect(address, PROBE_TIMEOUT):
            return True
    except OSError:
        return False


# --- QMP -------------------------------------------------------------------------


def execute(
    address: Address, command: str, timeout: float = QMP_TIMEOUT, arguments: dict | None = None
) -> dict:
    """Run one QMP command; returns its response. `address`: a unix socket, or
    (host, port) on Windows (QemuSpec.qmp_address)."""
    with connect(address, timeout) as s:
        f = s.makefile("rwb")
        json.loads(f.readline())  # greeting
        for cmd, args in (("qmp_capabilities", None), (command, arguments)):
            msg: dict = {"execute": cmd, **({"arguments": args} if args else {})}
            f.write(json.dumps(msg).encode() + b"\n")
            f.flush()
            while True:  # skip asynchronous events
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    break
        return msg


def attach_seed(qmp_address: Address, seed: Path) -> None:
    """Hot-plug the seed into its root port, where `-device` would have put it; the
    guest finds it as it would at boot (the same bus and slot: a later save and
    resume of this guest start QEMU with the seed on its command line)."""
    node = {
        "driver": "raw",
        "node-name": SEED_NODE,
        "read-only": True,
        "file": {"driver": "file", "filename": str(seed), "read-only": True},
    }
    device = {"driver": "virtio-blk-pci", "drive": SEED_NODE, "bus": SEED_PORT, "id": SEED_DEVICE}
    for command, args in (("blockdev-add", node), ("device_add", device)):
        reply = execute(qmp_address, command, arguments=args)
        if "error" in reply:
            raise OSError(f"{command} of the seed: {reply['error'].get('desc')}")


# --- the QEMU guest agent --------------------------------------------------------


class GuestAgentError(Exception):
    pass


def guest_agent(address: Address, timeout: float = AGENT_TIMEOUT):
    """A connected guest agent client (a context manager): `.call(command, **arguments)`."""
    return _GuestAgent(address, timeout)


class _GuestAgent:
    def __init__(self, address: Address, timeout: float) -> None:
        self.sock: socket.socket | None = None
        try:
            self.sock = connect(address, timeout)
            self.file = self.sock.makefile("rwb")
            # Whatever an earlier client left unread is skipped up to our sync id.
            sync_id = int.from_bytes(os.urandom(4), "big")
            self._send("guest-sync", {"id": sync_id})
            while self._receive() != sync_id:
                pass
        except (OSError, ValueError) as e:
            self.close()
            raise GuestAgentError(f"the guest agent does not answer: {e}") from None

    def _send(self, command: str, arguments: dict | None) -> None:
        msg: dict = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()

    def _receive(self):
        line = self.file.readline()
        if not line:
            raise GuestAgentError("the guest agent closed the connection")
        msg = json.loads(line)
        if "error" in msg:
            raise GuestAgentError(msg["error"].get("desc", str(msg["error"])))
        return msg.get("return")

    def call(self, command: str, **arguments):
        try:
            self._send(command, {k.replace("_", "-"): v for k, v in arguments.items()})
            return self._receive()
        except (OSError, ValueError) as e:
            raise GuestAgentError(f"{command}: {e}") from None

    def settimeout(self, seconds: float) -> None:
        """How long each later call may wait for its answer."""
        if self.sock is not None:
            self.sock.settimeout(seconds)

    def set_time(self) -> None:
        """The guest's clock to the host's, set by the agent itself: a command started
        for it (`date -s`) runs 0.1-2 s after its time was taken under TCG. The agent
        then runs `hwclock -w`, which our image has not got; the clock is set anyway."""
        try:
            self.call("guest-set-time", time=time.time_ns())
        except GuestAgentError as e:
            if "hwclock" not in str(e):
                raise

    def read_file(self, path: str, limit: int = AGENT_READ_LIMIT) -> bytes:
        """A guest file's bytes, read by the agent itself: no process started in the
        guest (each costs 0.1-0.6 s under TCG). GuestAgentError when it cannot be read."""
        handle = self.call("guest-file-open", path=path, mode="r")
        data = b""
        try:
            while len(data) < limit:
                chunk = self.call("guest-file-read", handle=handle, count=AGENT_READ_CHUNK)
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=handle)
        return data

    def run(self, argv: list[str], timeout: float = AGENT_RUN_TIMEOUT) -> int:
        """Run `argv` in the guest (as root, no shell); its exit code."""
        return self.run_captured(argv, timeout, capture=False)[0]

    def run_captured(
        self, argv: list[str], timeout: float = AGENT_RUN_TIMEOUT, capture: bool = True
    ) -> tuple[int, str]:
        """Run `argv` in the guest (as root, no shell); its exit code and output
        (stdout, then stderr)."""
        pid = self.call("guest-exec", path=argv[0], arg=argv[1:], capture_output=capture)["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            if status.get("exited"):
                out = b"".join(
                    base64.b64decode(status.get(k, "")) for k in ("out-data", "err-data")
                )
                return int(status.get("exitcode", -1)), out.decode(errors="replace")
            time.sleep(0.01)
        raise GuestAgentError(f"{argv[0]} did not finish in {timeout:.0f} s")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
