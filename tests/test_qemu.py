"""The QEMU command line, process identity, QMP and the guest agent."""

from __future__ import annotations

import base64
import json
import socket
import threading
from pathlib import Path

import pytest

from patchbay_vm_tasks.vm import qemu
from patchbay_vm_tasks.vm.images import BaseImage


def spec(**changes) -> qemu.QemuSpec:
    base = dict(
        qemu_bin="qemu-system-x86_64",
        name="vm1",
        arch="amd64",
        accel="tcg",
        mem_mb=2048,
        cpus=2,
        disk=Path("/s/disk.qcow2"),
        seed=Path("/s/seed.iso"),
        ssh_port=2222,
        pidfile=Path("/s/qemu.pid"),
        serial_log=Path("/s/serial.log"),
        qmp_socket=Path("/s/qmp.sock"),
        fs_mode="9p",
        shares=(
            qemu.Share("app", Path("/proj"), True),
            qemu.Share("work", Path("/proj/.w"), False),
        ),
    )
    base.update(changes)
    return qemu.QemuSpec(**base)


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize(
    ("accel", "arch", "accel_arg", "cpu", "machine"),
    [
        ("tcg", "amd64", "tcg,thread=multi", "max", "q35"),
        ("kvm", "amd64", "kvm", "host", "q35"),
        ("hvf", "arm64", "hvf", "host", "virt,highmem=on"),
        ("tcg", "arm64", "tcg,thread=multi", "max,pauth-impdef=on", "virt,gic-version=max"),
        ("kvm", "arm64", "kvm", "host", "virt,gic-version=host"),
        ("whpx", "amd64", "whpx,kernel-irqchip=off", "qemu64", "q35"),
        ("whpx", "arm64", "whpx", "max", "virt,gic-version=max"),
    ],
)
def test_accel_cpu_machine(accel, arch, accel_arg, cpu, machine) -> None:
    argv = qemu.build_argv(spec(accel=accel, arch=arch))
    assert after(argv, "-accel") == [accel_arg]
    assert after(argv, "-cpu") == [cpu]
    assert after(argv, "-machine") == [machine]


def test_daemonised_with_pidfile_qmp_serial_and_loopback_ssh() -> None:
    argv = qemu.build_argv(spec())
    assert "-daemonize" in argv
    assert after(argv, "-pidfile") == ["/s/qemu.pid"]
    assert after(argv, "-serial") == ["file:/s/serial.log"]
    assert after(argv, "-qmp") == ["unix:/s/qmp.sock,server=on,wait=off"]
    assert after(argv, "-netdev") == ["user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]
    assert after(argv, "-m") == ["2048M"] and after(argv, "-smp") == ["2"]
    drives = after(argv, "-drive")
    assert drives[0].startswith("file=/s/disk.qcow2,") and "format=qcow2" in drives[0]
    assert drives[1].startswith("file=/s/seed.iso,") and "readonly=on" in drives[1]


def test_9p_shares_readonly_where_asked() -> None:
    argv = qemu.build_argv(spec())
    assert after(argv, "-virtfs") == [
        "local,path=/proj,mount_tag=app,security_model=none,id=app,readonly=on",
        "local,path=/proj/.w,mount_tag=work,security_model=none,id=work",
    ]
    assert "-numa" not in argv


def test_virtiofs_needs_shared_memory_and_one_device_per_share() -> None:
    shares = (qemu.Share("app", Path("/p"), True, socket=Path("/s/virtiofs-app.sock")),)
    argv = qemu.build_argv(spec(fs_mode="virtiofs", shares=shares))
    assert after(argv, "-object") == ["memory-backend-memfd,id=mem,size=2048M,share=on"]
    assert after(argv, "-numa") == ["node,memdev=mem"]
    assert after(argv, "-chardev") == ["socket,id=fs-app,path=/s/virtiofs-app.sock"]
    assert "vhost-user-fs-pci,chardev=fs-app,tag=app" in after(argv, "-device")
    assert "-virtfs" not in argv


def test_direct_kernel_boot() -> None:
    base = BaseImage(Path("/c/disk.qcow2"), kernel=Path("/c/vmlinuz"), initrd=Path("/c/initrd.img"),
                     cmdline="root=/dev/vda rw console=ttyS0")  # fmt: skip
    argv = qemu.build_argv(spec(base=base))
    assert after(argv, "-kernel") == ["/c/vmlinuz"]
    assert after(argv, "-initrd") == ["/c/initrd.img"]
    assert after(argv, "-append") == ["root=/dev/vda rw console=ttyS0"]
    assert "-kernel" not in qemu.build_argv(spec(base=BaseImage(Path("/c/d.qcow2"))))


def test_commas_in_paths_are_escaped() -> None:
    argv = qemu.build_argv(spec(disk=Path("/a,b/disk.qcow2")))
    assert after(argv, "-drive")[0].startswith("file=/a,,b/disk.qcow2,if=none")
    assert qemu.opt_escape("x,y,z") == "x,,y,,z"


def test_is_ours_checks_the_command_line(tmp_path) -> None:
    import os

    assert qemu.is_ours(os.getpid(), "pytest") or qemu.is_ours(os.getpid(), "python")
    assert not qemu.is_ours(os.getpid(), str(tmp_path / "never-in-a-cmdline"))
    assert not qemu.is_ours(None, "x")
    assert not qemu.is_ours(2**22 + 12345, "x")  # no such process


@pytest.mark.parametrize(
    ("requested", "accel", "explicit", "cores", "expected"),
    [
        (4, "tcg", False, 2, 2),  # the default fitted to a 2-core host
        (4, "tcg", False, 8, 4),  # never more than the default
        (4, "tcg", True, 2, 4),  # QEMU_VM_CPUS=4 is honoured
        (4, "kvm", False, 2, 4),  # hardware acceleration keeps the default
        (4, "hvf", False, 1, 4),
        (4, "tcg", False, 1, 1),
    ],
)
def test_guest_cpus_fits_the_default_to_the_host_under_tcg(
    requested: int, accel: str, explicit: bool, cores: int, expected: int
) -> None:
    assert qemu.guest_cpus(requested, accel, explicit, cores) == expected


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
    with qemu.guest_agent(sock) as agent:
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
        with pytest.raises(qemu.GuestAgentError):
            qemu.guest_agent(sock, timeout=0.2)
    finally:
        server.close()
    with pytest.raises(qemu.GuestAgentError):
        qemu.guest_agent(tmp_path / "absent.sock", timeout=0.2)


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
