"""The guest agent client (vm/qmp.py) against a stand-in agent, and the boot's
provisioning through it."""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path

import pytest

from patchbay_vm_tasks.vm import qmp


def _fake_agent(path: Path, stale: bytes = b"") -> threading.Thread:
    """A guest agent on a unix socket: answers guest-sync (after a stale line an earlier
    client left), guest-ping, guest-exec (exit 3) and guest-exec-status."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)
    sent = [0]  # bytes of the file read so far

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(stale)
            for line in f:
                msg = json.loads(line)
                cmd, args = msg["execute"], msg.get("arguments", {})
                if cmd == "guest-file-read":  # 70000 bytes of "m", in two reads
                    left = 70000 - sent[0]
                    n = min(left, args["count"])
                    sent[0] += n
                    file = {"count": n, "buf-b64": base64.b64encode(b"m" * n).decode(),
                            "eof": left == n}  # fmt: skip
                if cmd == "guest-set-time":  # as on our image: no hwclock to write
                    desc = "failed to exec '/sbin/hwclock': No such file or directory"
                    f.write(json.dumps({"error": {"desc": desc}}).encode() + b"\n")
                    f.flush()
                    continue
                status = {"exited": True, "exitcode": 3}
                if args.get("capture-output") is not False:
                    status |= {"out-data": base64.b64encode(b"out\n").decode(),
                               "err-data": base64.b64encode(b"err\n").decode()}  # fmt: skip
                answer = {
                    "guest-sync": args.get("id"),
                    "guest-ping": {},
                    "guest-exec": {"pid": 42},
                    "guest-exec-status": status,
                    "guest-file-open": 7,
                    "guest-file-read": file if cmd == "guest-file-read" else None,
                    "guest-file-close": {},
                }[cmd]
                f.write(json.dumps({"return": answer}).encode() + b"\n")
                f.flush()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_guest_agent_skips_stale_answers_and_runs_commands(tmp_path: Path) -> None:
    sock = tmp_path / "qga.sock"
    _fake_agent(sock, stale=b'{"return": 12345}\n')
    with qmp.guest_agent(sock) as agent:
        assert agent.call("guest-ping") == {}
        assert agent.run(["/bin/sh", "-c", "exit 3"]) == 3
        assert agent.run_captured(["/bin/sh", "-c", "exit 3"]) == (3, "out\nerr\n")
        agent.set_time()  # the missing hwclock is no failure: the clock is set
        # Read by the agent itself, in pieces, until it says eof.
        assert agent.read_file("/proc/self/mounts") == b"m" * 70000


def test_guest_agent_that_does_not_answer_is_an_error(tmp_path: Path) -> None:
    sock = tmp_path / "qga.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock))
    server.listen(1)  # accepts, never answers: an image without the agent
    try:
        with pytest.raises(qmp.GuestAgentError):
            qmp.guest_agent(sock, timeout=0.2)
    finally:
        server.close()
    with pytest.raises(qmp.GuestAgentError):
        qmp.guest_agent(tmp_path / "absent.sock", timeout=0.2)


def test_provisioning_through_the_agent_reports_its_output(tmp_path: Path) -> None:
    from patchbay_vm_tasks.vm import boot

    sock = tmp_path / "qga.sock"
    _fake_agent(sock)
    run = boot._AgentProvisioning(sock, "exit 3", timeout=30, set_time=True)
    run.start()
    run.join(30)
    assert not run.done
    assert "provisioning failed in the guest (exit 3)" in str(run.error)
    assert "out\nerr" in str(run.error)


def test_provisioning_gives_the_agent_up_once_ssh_answers(tmp_path: Path) -> None:
    from patchbay_vm_tasks.vm import boot

    run = boot._AgentProvisioning(tmp_path / "absent.sock", "true", timeout=600, set_time=False)
    run.start()
    run.give_up.set()
    run.join(5)
    assert not run.is_alive() and not run.done and run.error is None  # over SSH, then
