"""QEMU: the command line (a pure function), accelerator choice, process identity, QMP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from .images import BaseImage


@dataclass(frozen=True)
class Share:
    tag: str  # mount tag in the guest: app, target, work
    host_path: Path
    readonly: bool
    socket: Path | None = None  # virtiofs: the virtiofsd socket


@dataclass(frozen=True)
class QemuSpec:
    qemu_bin: str
    name: str
    arch: str  # amd64 | arm64
    accel: str  # kvm | hvf | tcg
    mem_mb: int
    cpus: int
    disk: Path
    seed: Path
    ssh_port: int
    pidfile: Path
    serial_log: Path
    qmp_socket: Path
    fs_mode: str  # virtiofs | 9p
    # The QEMU guest agent's virtio-serial port: a warm `up` asks it whether the guest
    # lives instead of paying an SSH handshake.
    qga_socket: Path | None = None
    shares: tuple[Share, ...] = ()
    base: BaseImage | None = None
    extra: tuple[str, ...] = field(default=())


GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


def opt_escape(value: str | Path) -> str:
    """QEMU option values separate with commas; a literal comma is written twice."""
    return str(value).replace(",", ",,")


def cpu_model(accel: str) -> str:
    return "max" if accel == "tcg" else "host"


# The settings' default (SPEC 3); a count other than this one was asked for.
DEFAULT_CPUS = 4


def guest_cpus(requested: int, accel: str, explicit: bool, host_cores: int | None = None) -> int:
    """The vCPU count to boot with.

    Under TCG each vCPU is a host thread that emulates all the time it runs: more
    vCPUs than host cores only makes them take turns (the default of 4 on a 2-core
    machine slowed the first boot). An explicit count, and KVM/HVF, keep `requested`.
    """
    if accel != "tcg" or explicit:
        return requested
    return max(1, min(requested, host_cores or os.cpu_count() or 1))


def accel_args(accel: str) -> list[str]:
    if accel == "tcg":
        # Multi-threaded TCG: one host thread per vCPU, the difference between
        # one busy core and all of them.
        return ["-accel", "tcg,thread=multi"]
    return ["-accel", accel]


def build_argv(spec: QemuSpec) -> list[str]:
    """The whole QEMU command line for `spec`, as a list."""
    machine = "virt" if spec.arch == "arm64" else "q35"
    argv = [
        spec.qemu_bin,
        "-name",
        f"{opt_escape(spec.name)},process=qemu-{opt_escape(spec.name)}",
        "-machine",
        machine,
        *accel_args(spec.accel),
        "-cpu",
        cpu_model(spec.accel),
        "-smp",
        str(spec.cpus),
        "-m",
        f"{spec.mem_mb}M",
        "-daemonize",
        "-pidfile",
        str(spec.pidfile),
        "-display",
        "none",
        # No VGA (the guest's fbcon drew the boot log on it under TCG), parallel port,
        # CD-ROM or floppy: only the devices named below.
        "-nodefaults",
        "-monitor",
        "none",
        "-serial",
        f"file:{spec.serial_log}",
        "-qmp",
        f"unix:{opt_escape(spec.qmp_socket)},server=on,wait=off",
        "-drive",
        f"file={opt_escape(spec.disk)},if=none,id=disk0,format=qcow2,discard=unmap",
        "-device",
        "virtio-blk-pci,drive=disk0",
        "-drive",
        f"file={opt_escape(spec.seed)},if=none,id=seed0,format=raw,readonly=on",
        "-device",
        "virtio-blk-pci,drive=seed0",
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
    ]
    if spec.qga_socket:
        argv += [
            "-chardev",
            f"socket,id=qga0,path={opt_escape(spec.qga_socket)},server=on,wait=off",
            "-device",
            "virtio-serial-pci,id=vserial0",
            "-device",
            f"virtserialport,bus=vserial0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
        ]
    if spec.base and spec.base.kernel:
        argv += ["-kernel", str(spec.base.kernel), "-append", spec.base.cmdline]
        if spec.base.initrd:
            argv += ["-initrd", str(spec.base.initrd)]
    if spec.fs_mode == "virtiofs":
        # vhost-user needs guest RAM that virtiofsd can map: a shared memfd backend.
        argv += [
            "-object",
            f"memory-backend-memfd,id=mem,size={spec.mem_mb}M,share=on",
            "-numa",
            "node,memdev=mem",
        ]
        for share in spec.shares:
            argv += [
                "-chardev",
                f"socket,id=fs-{share.tag},path={opt_escape(share.socket)}",
                "-device",
                f"vhost-user-fs-pci,chardev=fs-{share.tag},tag={share.tag}",
            ]
    else:
        for share in spec.shares:
            opts = [
                "local",
                f"path={opt_escape(share.host_path)}",
                f"mount_tag={share.tag}",
                "security_model=none",
                f"id={share.tag}",
            ]
            if share.readonly:
                opts.append("readonly=on")
            argv += ["-virtfs", ",".join(opts)]
    argv += list(spec.extra)
    return argv


# --- accelerator -----------------------------------------------------------------


def candidate_accels(requested: str, system: str | None = None) -> list[str]:
    """Accelerators to try, best first."""
    system = system or sys.platform
    if requested != "auto":
        return [requested]
    if system.startswith("linux") and os.path.exists("/dev/kvm"):
        return ["kvm", "tcg"]
    if system == "darwin":
        return ["hvf", "tcg"]
    return ["tcg"]


def probe_accel(qemu_bin: str, accel: str, arch: str, timeout: float = 10.0) -> str | None:
    """Start a tiny firmware-only guest with `accel`; None when it runs, else why not.

    `/dev/kvm` existing says little (SPEC 9.1): on this project's machines KVM is
    nested through a module that aborts a `-cpu host` guest at once. The probe
    boots the same CPU model a real start would use and waits for the firmware
    to print its banner on the debug console.
    """
    if accel == "tcg":
        return None
    if arch == "arm64":
        # No ISA debug console on `virt`: check that QEMU accepts the accelerator.
        argv = [qemu_bin, "-machine", "virt", "-accel", accel, "-cpu", "host", "-display", "none"]
        argv += ["-nodefaults", "-S", "-monitor", "none"]
        return _run_probe(argv, None, timeout)
    with tempfile.TemporaryDirectory(prefix="patchbay-accel-") as tmp:
        log = Path(tmp) / "debugcon.log"
        argv = [
            qemu_bin,
            "-machine",
            "q35",
            *accel_args(accel),
            "-cpu",
            cpu_model(accel),
            "-m",
            "64M",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
            "-chardev",
            f"file,id=dbg,path={opt_escape(log)}",
            "-device",
            "isa-debugcon,iobase=0x402,chardev=dbg",
        ]
        return _run_probe(argv, log, timeout)


def _run_probe(argv: list[str], log: Path | None, timeout: float) -> str | None:
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as e:
        return str(e)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if log is not None and log.exists() and b"No bootable device" in log.read_bytes():
                return None
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                if log is None and proc.returncode == 0:
                    return None
                return err.splitlines()[0] if err else f"QEMU exited with {proc.returncode}"
            time.sleep(0.1)
        if log is None:
            return None  # still running with -S: the accelerator was accepted
        return f"the firmware printed nothing in {timeout:.0f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def choose_accel(qemu_bin: str, requested: str, arch: str) -> tuple[str, list[str]]:
    """The accelerator to boot with, and notes on the ones that were passed over."""
    notes = []
    candidates = candidate_accels(requested)
    for accel in candidates:
        why_not = probe_accel(qemu_bin, accel, arch)
        if why_not is None:
            return accel, notes
        if requested != "auto":
            return accel, [
                f"{accel} failed a test boot ({why_not}); using it as QEMU_VM_ACCEL asks"
            ]
        notes.append(f"{accel} is present but cannot boot a guest here ({why_not}); falling back")
    return "tcg", notes


# --- processes -------------------------------------------------------------------


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str] | None:
    """The command line of `pid`, or None when there is no such process."""
    if os.path.isdir("/proc/self"):
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # Empty for a zombie: dead, whatever its PID file says.
        return raw.decode(errors="replace").split("\0")[:-1] or None
    # macOS has no /proc.
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 and out.stdout.strip() else None


def is_ours(pid: int | None, marker: str) -> bool:
    """True when `pid` is alive and its command line holds `marker` (a path of our state dir).

    A PID file alone is not proof (SPEC 9.11): the number may have been reused.
    """
    if not pid:
        return False
    cmd = process_cmdline(pid)
    return bool(cmd) and any(marker in arg for arg in cmd)


def wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process_cmdline(pid) is None:
            return True
        time.sleep(0.1)
    return process_cmdline(pid) is None


def terminate(pid: int, marker: str, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, to a process that is verifiably ours."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not is_ours(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, grace):
            return


# --- QMP -------------------------------------------------------------------------


def qmp(
    socket_path: Path, command: str, timeout: float = 5.0, arguments: dict | None = None
) -> dict:
    """Run one QMP command; returns its response."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(socket_path))
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


def quit_now(pid: int, qmp_socket: Path, marker: str) -> str:
    """Stop our QEMU at once: QMP `quit`, then signals. For a guest with nothing to save
    (a boot that failed or was interrupted), where an ACPI powerdown only waits."""
    if not is_ours(pid, marker):
        return "already stopped"
    with contextlib.suppress(OSError, ValueError):
        qmp(qmp_socket, "quit", timeout=2.0)
        if wait_gone(pid, 3.0):
            return "quit"
    terminate(pid, marker, grace=2.0)
    return "killed"


# --- the QEMU guest agent --------------------------------------------------------


class GuestAgentError(Exception):
    pass


def guest_agent(socket_path: Path, timeout: float = 1.0):
    """A connected guest agent client (a context manager): `.call(command, **arguments)`."""
    return _GuestAgent(socket_path, timeout)


class _GuestAgent:
    def __init__(self, socket_path: Path, timeout: float) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(str(socket_path))
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

    def run(self, argv: list[str], timeout: float = 5.0) -> int:
        """Run `argv` in the guest (as root, no shell); its exit code."""
        pid = self.call("guest-exec", path=argv[0], arg=argv[1:])["pid"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.call("guest-exec-status", pid=pid)
            if status.get("exited"):
                return int(status.get("exitcode", -1))
            time.sleep(0.01)
        raise GuestAgentError(f"{argv[0]} did not finish in {timeout:.0f} s")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shutdown(pid: int, qmp_socket: Path, marker: str, powerdown_wait: float = 30.0) -> str:
    """Stop our QEMU: ACPI powerdown, then QMP quit, then signals. Returns how it went."""
    steps = (("system_powerdown", powerdown_wait, "powered down"), ("quit", 5.0, "quit"))
    for command, wait, how in steps:
        if not is_ours(pid, marker):
            return "already stopped"
        try:
            qmp(qmp_socket, command)
        except (OSError, ValueError):
            continue
        if wait_gone(pid, wait):
            return how
    terminate(pid, marker)
    return "killed"
