"""QEMU's command line: a pure function of a `QemuSpec`, and the pieces it is made of.

The command line differs by host OS (`QemuSpec.host_os`, a `sys.platform` value) and
guest arch: see `build_argv`. Starting and stopping QEMU is in process.py; talking to it
(QMP) and to the guest agent in qmp.py.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import TypeVar

from ..settings import Accel, FsMode
from .firmware import Pflash
from .images import BaseImage
from .ports import LOOPBACK

# A socket QEMU listens on: a unix socket's path, or (host, port) for TCP (Windows).
Address = Path | tuple[str, int]


_SocketPath = TypeVar("_SocketPath", Path, None)


def socket_address(port: int | None, path: _SocketPath) -> tuple[str, int] | _SocketPath:
    """A QEMU socket's address: the loopback port when it has one (Windows), else the
    unix socket at `path`."""
    return (LOOPBACK, port) if port else path


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
    accel: Accel  # kvm | hvf | whpx | tcg
    mem_mb: int
    cpus: int
    disk: Path
    seed: Path
    ssh_port: int
    pidfile: Path
    serial_log: Path
    qmp_socket: Path
    fs_mode: FsMode  # virtiofs | 9p | none
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
        return socket_address(self.qmp_port if self.windows else None, self.qmp_socket)

    @property
    def qga_address(self) -> Address | None:
        return socket_address(self.qga_port if self.windows else None, self.qga_socket)

    @property
    def stderr_log(self) -> Path:
        """Windows: where the detached QEMU's own messages go (no -daemonize to wait on)."""
        return self.serial_log.with_name("qemu-stderr.log")


GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


def opt_escape(value: str | PurePath) -> str:
    """QEMU option values separate with commas; a literal comma is written twice."""
    return str(value).replace(",", ",,")


def cpu_model(accel: Accel, arch: str = "amd64") -> str:
    """`host` under KVM and HVF; `max` under TCG (all it can emulate).

    An arm64 `max` under TCG authenticates pointers with QEMU's own cheap algorithm
    (`pauth-impdef`) instead of the architected QARMA5: Debian's arm64 programs sign
    every return address, and QARMA5 made them run ~7x slower under emulation. The
    property exists only under TCG (QEMU refuses it with KVM or HVF).
    WHPX on x86 has no `host` model (QEMU: "requires KVM or HVF"), and `max` stops with
    "Unexpected VP exit code 4" on AMD hosts (QEMU issue 1043): QEMU's default model.
    """
    if accel == Accel.WHPX:
        return "max" if arch == "arm64" else "qemu64"
    if accel == Accel.TCG:
        return "max,pauth-impdef=on" if arch == "arm64" else "max"
    return "host"


def guest_cpus(requested: int, accel: Accel, explicit: bool, host_cores: int | None = None) -> int:
    """The vCPU count to boot with.

    Under TCG each vCPU is a host thread that emulates all the time it runs: more
    vCPUs than host cores only makes them take turns (the default of 4 on a 2-core
    machine slowed the first boot). An explicit count, and KVM/HVF, keep `requested`.
    """
    if accel != Accel.TCG or explicit:
        return requested
    return max(1, min(requested, host_cores or os.cpu_count() or 1))


def accel_args(accel: Accel, arch: str = "amd64") -> list[str]:
    if accel == Accel.TCG:
        # Multi-threaded TCG: one host thread per vCPU, the difference between
        # one busy core and all of them.
        return ["-accel", "tcg,thread=multi"]
    if accel == Accel.WHPX and arch == "amd64":
        # WHPX's in-kernel irqchip loses interrupts on many hosts ("injection failed,
        # MSI ... lost", QEMU issue 346); on Arm hosts QEMU accepts only the default.
        return ["-accel", "whpx,kernel-irqchip=off"]
    return ["-accel", accel]


def machine_arg(arch: str, accel: Accel) -> str:
    """The -machine value: q35 on x86_64, virt on arm64."""
    if arch != "arm64":
        return "q35"
    if accel == Accel.HVF:
        # highmem (virt's default, written out): guest RAM above 3 GiB needs the high
        # memory map, and guides for old QEMU on M1 set highmem=off, which caps RAM
        # below 4 GiB (the default 4096 MB guest would not start). The GIC stays
        # virt's default, the one HVF runs on every QEMU.
        return "virt,highmem=on"
    if accel == Accel.KVM:
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


def build_argv(spec: QemuSpec) -> list[str]:
    """The whole QEMU command line for `spec`, as a list.

    Per host OS: POSIX QEMU daemonises itself and writes its PID file; QEMU for Windows
    cannot (`-daemonize` is POSIX only), so `start` runs it as a detached process, and
    its QMP and guest agent sockets are TCP on 127.0.0.1 (Python on Windows has no
    AF_UNIX to talk to a unix socket). macOS has no memfd, so no virtiofs there;
    Windows QEMU has neither 9p nor virtiofs: fs mode `none` only. Raises ValueError
    for a spec the host's QEMU cannot run.
    """
    if spec.windows and spec.fs_mode != FsMode.NONE:
        raise ValueError(f"QEMU for Windows has no {spec.fs_mode}: use fs mode none")
    if spec.host_os == "darwin" and spec.fs_mode == FsMode.VIRTIOFS:
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
        f"user,id=net0,hostfwd=tcp:{LOOPBACK}:{spec.ssh_port}-:22",
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
    if spec.fs_mode == FsMode.NONE:
        pass  # no shared folders: files are copied over SSH
    elif spec.fs_mode == FsMode.VIRTIOFS:
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


# How long `qemu-system-* --version` (or `-accel help`) may take: QEMU answers at once;
# a binary that does not is no usable QEMU.
QUERY_TIMEOUT = 10.0


@functools.cache  # asked by the boot, the template and the resume paths alike
def version(qemu_bin: str) -> str:
    """`QEMU emulator version 7.2.19 (...)` -> `7.2.19`; "" when it cannot be told."""
    try:
        out = subprocess.run(
            [qemu_bin, "--version"], capture_output=True, text=True, timeout=QUERY_TIMEOUT
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    first = out.splitlines()[0] if out else ""
    words = first.split()
    return words[3] if len(words) > 3 and words[2] == "version" else first.strip()
