"""QEMU: the command line (a pure function), process identity, QMP and the guest agent.

The command line differs by host OS (`QemuSpec.host_os`, a `sys.platform` value) and
guest arch: see `build_argv`.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from ..errors import VmUnavailable
from .firmware import Pflash
from .images import BaseImage

# A socket QEMU listens on: a unix socket's path, or (host, port) for TCP (Windows).
Address = Path | tuple[str, int]


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
    fs_mode: str  # virtiofs | 9p | none
    # The QEMU guest agent's virtio-serial port: a warm `up` asks it whether the guest
    # lives instead of paying an SSH handshake.
    qga_socket: Path | None = None
    shares: tuple[Share, ...] = ()
    base: BaseImage | None = None
    extra: tuple[str, ...] = field(default=())
    host_os: str = sys.platform  # linux | darwin | win32
    # UEFI boot: the code image and this VM's variables (None: -kernel, or SeaBIOS).
    firmware: Pflash | None = None
    # Windows: QMP and the guest agent on 127.0.0.1 ports instead of unix sockets.
    qmp_port: int | None = None
    qga_port: int | None = None
    # False: the seed's slot stays empty, for a guest that gets it hot-plugged later
    # (a new VM started from a template: templates.py).
    seed_attached: bool = True

    @property
    def windows(self) -> bool:
        return self.host_os == "win32"

    @property
    def qmp_address(self) -> Address:
        return ("127.0.0.1", self.qmp_port) if self.windows and self.qmp_port else self.qmp_socket

    @property
    def qga_address(self) -> Address | None:
        if self.windows and self.qga_port:
            return ("127.0.0.1", self.qga_port)
        return self.qga_socket

    @property
    def stderr_log(self) -> Path:
        """Windows: where the detached QEMU's own messages go (no -daemonize to wait on)."""
        return self.serial_log.with_name("qemu-stderr.log")


GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


def opt_escape(value: str | PurePath) -> str:
    """QEMU option values separate with commas; a literal comma is written twice."""
    return str(value).replace(",", ",,")


def cpu_model(accel: str, arch: str = "amd64") -> str:
    """`host` under KVM and HVF; `max` under TCG (all it can emulate).

    An arm64 `max` under TCG authenticates pointers with QEMU's own cheap algorithm
    (`pauth-impdef`) instead of the architected QARMA5: Debian's arm64 programs sign
    every return address, and QARMA5 made them run ~7x slower under emulation. The
    property exists only under TCG (QEMU refuses it with KVM or HVF).
    WHPX on x86 has no `host` model (QEMU: "requires KVM or HVF"), and `max` stops with
    "Unexpected VP exit code 4" on AMD hosts (QEMU issue 1043): QEMU's default model.
    """
    if accel == "whpx":
        return "max" if arch == "arm64" else "qemu64"
    if accel == "tcg":
        return "max,pauth-impdef=on" if arch == "arm64" else "max"
    return "host"


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


def accel_args(accel: str, arch: str = "amd64") -> list[str]:
    if accel == "tcg":
        # Multi-threaded TCG: one host thread per vCPU, the difference between
        # one busy core and all of them.
        return ["-accel", "tcg,thread=multi"]
    if accel == "whpx" and arch == "amd64":
        # WHPX's in-kernel irqchip loses interrupts on many hosts ("injection failed,
        # MSI ... lost", QEMU issue 346); on Arm hosts QEMU accepts only the default.
        return ["-accel", "whpx,kernel-irqchip=off"]
    return ["-accel", accel]


def machine_arg(arch: str, accel: str) -> str:
    """The -machine value: q35 on x86_64, virt on arm64."""
    if arch != "arm64":
        return "q35"
    if accel == "hvf":
        # highmem (virt's default, written out): guest RAM above 3 GiB needs the high
        # memory map, and guides for old QEMU on M1 set highmem=off, which caps RAM
        # below 4 GiB (the default 4096 MB guest would not start). The GIC stays
        # virt's default, the one HVF runs on every QEMU.
        return "virt,highmem=on"
    if accel == "kvm":
        return "virt,gic-version=host"  # the host's GIC, in the kernel
    # TCG (and WHPX on Arm): an emulated GICv3, so more than 8 vCPUs work.
    return "virt,gic-version=max"


def _chardev_socket(address: Address, ident: str) -> str:
    if isinstance(address, tuple):
        host, port = address
        return f"socket,id={ident},host={host},port={port},server=on,wait=off"
    return f"socket,id={ident},path={opt_escape(address)},server=on,wait=off"


def qmp_arg(address: Address) -> str:
    if isinstance(address, tuple):
        # Windows: TCP on loopback. Any local user could connect to it (unlike a unix
        # socket in the state dir); QEMU for Windows has unix sockets, Python there has not.
        host, port = address
        return f"tcp:{host}:{port},server=on,wait=off"
    return f"unix:{opt_escape(address)},server=on,wait=off"


SEED_PORT, SEED_NODE, SEED_DEVICE = "seedport", "seed0", "seeddev"


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
        reply = qmp(qmp_address, command, arguments=args)
        if "error" in reply:
            raise OSError(f"{command} of the seed: {reply['error'].get('desc')}")


def build_argv(spec: QemuSpec) -> list[str]:
    """The whole QEMU command line for `spec`, as a list.

    Per host OS: POSIX QEMU daemonises itself and writes its PID file; QEMU for Windows
    cannot (`-daemonize` is POSIX only), so `start` runs it as a detached process, and
    its QMP and guest agent sockets are TCP on 127.0.0.1 (Python on Windows has no
    AF_UNIX to talk to a unix socket). macOS has no memfd, so no virtiofs there;
    Windows QEMU has neither 9p nor virtiofs: fs mode `none` only. Raises ValueError
    for a spec the host's QEMU cannot run.
    """
    if spec.windows and spec.fs_mode != "none":
        raise ValueError(f"QEMU for Windows has no {spec.fs_mode}: use fs mode none")
    if spec.host_os == "darwin" and spec.fs_mode == "virtiofs":
        raise ValueError("QEMU on macOS has no virtiofs (no memfd): use 9p")
    if spec.windows and not (spec.qmp_port and (spec.qga_port or not spec.qga_socket)):
        raise ValueError("on Windows, QMP and the guest agent need TCP ports (qmp_port, qga_port)")
    argv = [
        spec.qemu_bin,
        "-name",
        f"{opt_escape(spec.name)},process=qemu-{opt_escape(spec.name)}",
        "-machine",
        machine_arg(spec.arch, spec.accel),
        *accel_args(spec.accel, spec.arch),
        "-cpu",
        cpu_model(spec.accel, spec.arch),
        "-smp",
        str(spec.cpus),
        "-m",
        f"{spec.mem_mb}M",
    ]
    if not spec.windows:
        argv += ["-daemonize", "-pidfile", str(spec.pidfile)]
    argv += [
        "-display",
        "none",
        # No VGA (the guest's fbcon drew the boot log on it under TCG), parallel port,
        # CD-ROM or floppy: only the devices named below.
        "-nodefaults",
        "-monitor",
        "none",
        "-serial",
        f"file:{spec.serial_log}",
    ]
    argv += ["-qmp", qmp_arg(spec.qmp_address)]
    if spec.firmware:
        # UEFI from two flash units: the shared code read-only, this VM's variables.
        argv += [
            "-drive",
            f"if=pflash,format=raw,unit=0,readonly=on,file={opt_escape(spec.firmware.code)}",
            "-drive",
            f"if=pflash,format=raw,unit=1,file={opt_escape(spec.firmware.vars)}",
        ]
    # virtio-*-pci on both machines: q35 and arm64 virt (PCIe, no ISA bus) have PCI.
    argv += [
        "-drive",
        f"file={opt_escape(spec.disk)},if=none,id=disk0,format=qcow2,discard=unmap",
        "-device",
        "virtio-blk-pci,drive=disk0",
        # The seed sits behind a PCIe root port, where it can also be hot-plugged.
        "-device",
        f"pcie-root-port,id={SEED_PORT},chassis=1",
    ]
    if spec.seed_attached:
        argv += [
            "-drive",
            f"file={opt_escape(spec.seed)},if=none,id={SEED_NODE},format=raw,readonly=on",
            "-device",
            f"virtio-blk-pci,drive={SEED_NODE},bus={SEED_PORT},id={SEED_DEVICE}",
        ]
    argv += [
        "-netdev",
        f"user,id=net0,hostfwd=tcp:127.0.0.1:{spec.ssh_port}-:22",
        "-device",
        "virtio-net-pci,netdev=net0",
        "-device",
        "virtio-rng-pci",
    ]
    qga = spec.qga_address
    if qga:
        argv += [
            "-chardev",
            _chardev_socket(qga, "qga0"),
            "-device",
            "virtio-serial-pci,id=vserial0",
            "-device",
            f"virtserialport,bus=vserial0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
        ]
    if spec.base and spec.base.kernel:
        argv += ["-kernel", str(spec.base.kernel), "-append", spec.base.cmdline]
        if spec.base.initrd:
            argv += ["-initrd", str(spec.base.initrd)]
    if spec.fs_mode == "none":
        pass  # no shared folders: files are copied over SSH
    elif spec.fs_mode == "virtiofs":
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


@functools.cache  # asked by the boot, the template and the resume paths alike
def version(qemu_bin: str) -> str:
    """`QEMU emulator version 7.2.19 (...)` -> `7.2.19`; "" when it cannot be told."""
    try:
        out = subprocess.run(
            [qemu_bin, "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    words = first.split()
    return words[3] if len(words) > 3 and words[2] == "version" else first.strip()


# --- starting ----------------------------------------------------------------------

# Windows creation flags (absent from `subprocess` elsewhere): no console, and not in
# the caller's process group, so a Ctrl-C in the task's console does not reach QEMU.
_DETACHED = getattr(subprocess, "DETACHED_PROCESS", 0x00000008) | getattr(
    subprocess, "CREATE_NEW_PROCESS_GROUP", 0x00000200
)
# Windows: how long QEMU may take to open its QMP port (what -daemonize waits for).
WINDOWS_START_TIMEOUT = 30.0


def start(
    spec: QemuSpec,
    run=subprocess.run,
    popen=subprocess.Popen,
    connects=None,
) -> int:
    """Start QEMU for `spec`, detached from this process; returns its PID.

    POSIX: `-daemonize` returns once QEMU is set up (errors in the argv come back on
    its stderr), and QEMU writes `-pidfile`. Windows: a detached process, its PID
    file written here, and its stderr in `spec.stderr_log`; started once its QMP port
    answers. `run`, `popen`, `connects` are for the tests.
    """
    argv = build_argv(spec)
    spec.pidfile.unlink(missing_ok=True)
    if not spec.windows:
        proc = run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise VmUnavailable(
                f"QEMU failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n"
                f"command: {' '.join(argv)}"
            )
        pid = read_pid(spec.pidfile)
        if not pid:
            raise VmUnavailable(f"QEMU started but wrote no PID file {spec.pidfile}")
        return pid
    with spec.stderr_log.open("wb") as err:
        child = popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            creationflags=_DETACHED,
            close_fds=True,
        )
    spec.pidfile.write_text(f"{child.pid}\n")
    connects = connects or _tcp_answers
    deadline = time.monotonic() + WINDOWS_START_TIMEOUT
    while True:
        code = child.poll()
        if code is not None:
            spec.pidfile.unlink(missing_ok=True)
            message = spec.stderr_log.read_text(errors="replace").strip()
            raise VmUnavailable(
                f"QEMU failed to start (exit {code}): {message}\ncommand: {' '.join(argv)}"
            )
        if connects(spec.qmp_address):
            return child.pid
        if time.monotonic() > deadline:
            return child.pid  # running; the boot wait that follows judges the guest
        time.sleep(0.1)


def _tcp_answers(address: Address) -> bool:
    try:
        with _connect(address, 0.5):
            return True
    except OSError:
        return False


def _connect(address: Address, timeout: float) -> socket.socket:
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


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on now (Windows: QMP's and the guest agent's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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
    if sys.platform == "win32":
        # No /proc, no ps: ask WMI. One string, since a state dir path may hold spaces.
        query = f"(Get-CimInstance Win32_Process -Filter 'ProcessId={int(pid)}').CommandLine"
        argv = ["powershell", "-NoProfile", "-NonInteractive", "-Command", query]
        out = subprocess.run(argv, capture_output=True, text=True)
        line = out.stdout.strip()
        return [line] if out.returncode == 0 and line else None
    # macOS has no /proc. The whole line too, for a marker path with spaces.
    out = subprocess.run(["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True)
    line = out.stdout.strip()
    return [*line.split(), line] if out.returncode == 0 and line else None


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
    # Windows has no SIGKILL; its SIGTERM is TerminateProcess, which cannot be ignored.
    for sig in (signal.SIGTERM, getattr(signal, "SIGKILL", signal.SIGTERM)):
        if not is_ours(pid, marker):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if wait_gone(pid, grace):
            return


# --- QMP -------------------------------------------------------------------------


def qmp(
    socket_path: Address, command: str, timeout: float = 5.0, arguments: dict | None = None
) -> dict:
    """Run one QMP command; returns its response. `socket_path`: a unix socket, or
    (host, port) on Windows (QemuSpec.qmp_address)."""
    with _connect(socket_path, timeout) as s:
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


def quit_now(pid: int, qmp_socket: Address, marker: str) -> str:
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


def guest_agent(socket_path: Address, timeout: float = 1.0):
    """A connected guest agent client (a context manager): `.call(command, **arguments)`."""
    return _GuestAgent(socket_path, timeout)


class _GuestAgent:
    def __init__(self, socket_path: Address, timeout: float) -> None:
        self.sock: socket.socket | None = None
        try:
            self.sock = _connect(socket_path, timeout)
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

    def set_time(self) -> None:
        """The guest's clock to the host's, set by the agent itself: a command started
        for it (`date -s`) runs 0.1-2 s after its time was taken under TCG. The agent
        then runs `hwclock -w`, which our image has not got; the clock is set anyway."""
        try:
            self.call("guest-set-time", time=time.time_ns())
        except GuestAgentError as e:
            if "hwclock" not in str(e):
                raise

    def read_file(self, path: str, limit: int = 1 << 20) -> bytes:
        """A guest file's bytes, read by the agent itself: no process started in the
        guest (each costs 0.1-0.6 s under TCG). GuestAgentError when it cannot be read."""
        handle = self.call("guest-file-open", path=path, mode="r")
        data = b""
        try:
            while len(data) < limit:
                chunk = self.call("guest-file-read", handle=handle, count=65536)
                data += base64.b64decode(chunk.get("buf-b64", ""))
                if chunk.get("eof") or not chunk.get("count"):
                    break
        finally:
            self.call("guest-file-close", handle=handle)
        return data

    def run(self, argv: list[str], timeout: float = 5.0) -> int:
        """Run `argv` in the guest (as root, no shell); its exit code."""
        return self.run_captured(argv, timeout, capture=False)[0]

    def run_captured(
        self, argv: list[str], timeout: float = 5.0, capture: bool = True
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


def shutdown(pid: int, qmp_socket: Address, marker: str, powerdown_wait: float = 30.0) -> str:
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
