"""The QEMU command line (vm/qemu.py)."""

from __future__ import annotations

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
