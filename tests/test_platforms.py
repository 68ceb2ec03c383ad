"""Per-platform settings and argv: guest arch, firmware, accelerators, host OS (issue 11).

Everything here runs from a fake environment: no QEMU is started.
"""

from __future__ import annotations

import importlib
import json
import socket
import subprocess
import threading
from pathlib import Path, PureWindowsPath

import invoke
import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.errors import UsageError, VmUnavailable
from patchbay_vm_tasks.vm import binfmt, firmware, images, process, qemu, qmp
from patchbay_vm_tasks.vm.images import BaseImage


def resolve(tmp_path: Path, config=None, env=None, flags=None) -> settings.VmSettings:
    return settings.resolve(config=config, env=env or {}, flags=flags, project_dir=tmp_path)


def registered() -> dict:
    """The `vm:` config section as Invoke hands it over: the registered defaults."""
    config = settings.config_defaults()
    config.pop("project_dir")
    return config


# --- the arch setting ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "arch", "qemu_bin"),
    [
        ("amd64", "amd64", "qemu-system-x86_64"),
        ("x86_64", "amd64", "qemu-system-x86_64"),
        ("arm64", "arm64", "qemu-system-aarch64"),
        ("aarch64", "arm64", "qemu-system-aarch64"),
        ("ARM64", "arm64", "qemu-system-aarch64"),
    ],
)
def test_arch_from_the_environment_normalised_and_its_defaults_follow(
    tmp_path, value, arch, qemu_bin
) -> None:
    # Through the registered defaults, as a task sees them: the host arch's image_url
    # and qemu_bin in the config layer must not beat the chosen arch's.
    s = resolve(tmp_path, config=registered(), env={"QEMU_VM_ARCH": value})
    assert s.arch == arch
    assert s.qemu_bin == qemu_bin
    assert s.image_url == settings.default_image_url(arch)
    assert s.asked_for()["arch"] == arch


def test_arch_from_invoke_config_and_flags(tmp_path) -> None:
    config = {**registered(), "arch": "aarch64"}
    assert resolve(tmp_path, config=config).arch == "arm64"
    assert resolve(tmp_path, config=config, env={"QEMU_VM_ARCH": "amd64"}).arch == "amd64"
    assert resolve(tmp_path, flags={"arch": "arm64"}).qemu_bin == "qemu-system-aarch64"


def test_arch_defaults_to_the_host(tmp_path) -> None:
    assert resolve(tmp_path).arch == settings.host_arch()
    assert resolve(tmp_path, config=registered()).arch == settings.host_arch()
    assert settings.config_defaults()["arch"] == settings.host_arch()
    assert settings.config_defaults("arm64")["qemu_bin"] == "qemu-system-aarch64"


def test_explicit_image_and_qemu_beat_the_arch_defaults(tmp_path) -> None:
    env = {"QEMU_VM_ARCH": "arm64", "QEMU_VM_IMAGE_URL": "debian:trixie"}
    s = resolve(tmp_path, config={**registered(), "qemu_bin": "/opt/q/qemu"}, env=env)
    assert (s.image_url, s.qemu_bin) == ("debian:trixie", "/opt/q/qemu")


@pytest.mark.parametrize("value", ["riscv64", "i386", "arm"])
def test_unknown_arch_names_the_variable_and_the_choices(tmp_path, value) -> None:
    with pytest.raises(UsageError) as e:
        resolve(tmp_path, env={"QEMU_VM_ARCH": value})
    assert f"QEMU_VM_ARCH: {value!r} is not one of amd64, arm64, x86_64, aarch64" in str(e.value)
    assert e.value.exit_code == 2


# --- the firmware setting --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "auto"),
        ({"QEMU_VM_FIRMWARE": "uefi"}, "uefi"),
        ({"QEMU_VM_FIRMWARE": "bios", "QEMU_VM_ARCH": "amd64"}, "bios"),
        ({"QEMU_VM_FIRMWARE": "/fw/code.fd"}, "/fw/code.fd"),
    ],
)
def test_firmware_setting(tmp_path, env, expected) -> None:
    s = resolve(tmp_path, env=env)
    # A mode (a str enum), or the path of a code image.
    assert s.firmware == (Path(expected) if expected.startswith("/") else expected)
    assert s.asked_for()["firmware"] == expected


def test_firmware_path_is_from_the_project_dir(tmp_path) -> None:
    s = resolve(tmp_path, env={"QEMU_VM_FIRMWARE": "fw/code.fd"})
    assert s.firmware == tmp_path.resolve() / "fw" / "code.fd"
    assert s.asked_for()["firmware"] == str(tmp_path.resolve() / "fw" / "code.fd")


def test_seabios_on_arm64_is_refused(tmp_path) -> None:
    with pytest.raises(UsageError, match="QEMU_VM_FIRMWARE: 'bios'"):
        resolve(tmp_path, env={"QEMU_VM_FIRMWARE": "bios", "QEMU_VM_ARCH": "arm64"})


# --- firmware discovery, from a fake filesystem ----------------------------------

BREW_ARM = "/opt/homebrew/share/qemu"
BREW_INTEL = "/usr/local/share/qemu"
MIB = 1024 * 1024


def fake_fs(root: Path, files: dict[str, int]) -> None:
    """Files (path -> size) under `root`, standing for `/`."""
    for path, size in files.items():
        p = firmware._under(root, path)
        p.parent.mkdir(parents=True, exist_ok=True)
        with p.open("wb") as f:
            f.truncate(size)


@pytest.mark.parametrize(
    ("case", "arch", "system", "qemu_path", "files", "code", "template"),
    [
        (
            "macOS Apple Silicon Homebrew",
            "arm64", "darwin", "/opt/homebrew/bin/qemu-system-aarch64",
            {f"{BREW_ARM}/edk2-aarch64-code.fd": 64 * MIB,
             f"{BREW_ARM}/edk2-arm-vars.fd": 64 * MIB},
            f"{BREW_ARM}/edk2-aarch64-code.fd", f"{BREW_ARM}/edk2-arm-vars.fd",
        ),
        (
            "macOS Intel Homebrew (/usr/local), QEMU found elsewhere",
            "arm64", "darwin", "/somewhere/bin/qemu-system-aarch64",
            {f"{BREW_INTEL}/edk2-aarch64-code.fd": 64 * MIB,
             f"{BREW_INTEL}/edk2-arm-vars.fd": 64 * MIB},
            f"{BREW_INTEL}/edk2-aarch64-code.fd", f"{BREW_INTEL}/edk2-arm-vars.fd",
        ),
        (
            "beside the QEMU binary wins over Homebrew's",
            "arm64", "darwin", "/opt/q/bin/qemu-system-aarch64",
            {"/opt/q/share/qemu/edk2-aarch64-code.fd": 64 * MIB,
             f"{BREW_ARM}/edk2-aarch64-code.fd": 64 * MIB},
            "/opt/q/share/qemu/edk2-aarch64-code.fd", None,
        ),
        (
            "macOS x86_64 guest, OVMF from Homebrew",
            "amd64", "darwin", "/opt/homebrew/bin/qemu-system-x86_64",
            {f"{BREW_ARM}/edk2-x86_64-code.fd": 3 * MIB, f"{BREW_ARM}/edk2-i386-vars.fd": 3 * MIB},
            f"{BREW_ARM}/edk2-x86_64-code.fd", f"{BREW_ARM}/edk2-i386-vars.fd",
        ),
        (
            "Debian qemu-efi-aarch64 (AAVMF)",
            "arm64", "linux", "/usr/bin/qemu-system-aarch64",
            {"/usr/share/AAVMF/AAVMF_CODE.fd": 64 * MIB, "/usr/share/AAVMF/AAVMF_VARS.fd": 64 * MIB,
             "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd": 2 * MIB},
            "/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd",
        ),
        (
            "Debian -bios image only: a blank store",
            "arm64", "linux", "/usr/bin/qemu-system-aarch64",
            {"/usr/share/qemu-efi-aarch64/QEMU_EFI.fd": 2 * MIB},
            "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", None,
        ),
        (
            "Debian ovmf",
            "amd64", "linux", "/usr/bin/qemu-system-x86_64",
            {"/usr/share/OVMF/OVMF_CODE_4M.fd": 3 * MIB,
             "/usr/share/OVMF/OVMF_VARS_4M.fd": MIB // 2,
             "/usr/share/OVMF/OVMF_CODE.fd": 2 * MIB, "/usr/share/OVMF/OVMF_VARS.fd": MIB // 8},
            "/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd",
        ),
        (
            "Fedora edk2-aarch64",
            "arm64", "linux", "/usr/bin/qemu-system-aarch64",
            {"/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw": 64 * MIB,
             "/usr/share/edk2/aarch64/vars-template-pflash.raw": 64 * MIB,
             "/usr/share/edk2/aarch64/QEMU_EFI.fd": 2 * MIB},
            "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
            "/usr/share/edk2/aarch64/vars-template-pflash.raw",
        ),
        (
            "Fedora edk2-ovmf",
            "amd64", "linux", "/usr/bin/qemu-system-x86_64",
            {"/usr/share/edk2/ovmf/OVMF_CODE.fd": 2 * MIB,
             "/usr/share/edk2/ovmf/OVMF_VARS.fd": MIB // 8},
            "/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd",
        ),
        (
            "QEMU's own share dir on Linux (a source install)",
            "arm64", "linux", "/usr/local/bin/qemu-system-aarch64",
            {f"{BREW_INTEL}/edk2-aarch64-code.fd": 64 * MIB,
             "/usr/share/AAVMF/AAVMF_CODE.fd": 64 * MIB},
            f"{BREW_INTEL}/edk2-aarch64-code.fd", None,
        ),
        (
            "Windows installer: share beside the .exe",
            "arm64", "win32", "C:/Program Files/qemu/qemu-system-aarch64.exe",
            {"C:/Program Files/qemu/share/edk2-aarch64-code.fd": 64 * MIB,
             "C:/Program Files/qemu/share/edk2-arm-vars.fd": 64 * MIB,
             "/usr/share/AAVMF/AAVMF_CODE.fd": 64 * MIB},
            "C:/Program Files/qemu/share/edk2-aarch64-code.fd",
            "C:/Program Files/qemu/share/edk2-arm-vars.fd",
        ),
        (
            "Windows, QEMU not on PATH: the default install dir",
            "amd64", "win32", None,
            {"C:/Program Files/qemu/share/edk2-x86_64-code.fd": 3 * MIB,
             "C:/Program Files/qemu/share/edk2-i386-vars.fd": 3 * MIB},
            "C:/Program Files/qemu/share/edk2-x86_64-code.fd",
            "C:/Program Files/qemu/share/edk2-i386-vars.fd",
        ),
    ],
)  # fmt: skip
def test_firmware_discovery(tmp_path, case, arch, system, qemu_path, files, code, template) -> None:
    fake_fs(tmp_path, files)
    fw = firmware.find_firmware(arch, system, qemu_path, root=tmp_path)
    assert fw.arch == arch
    assert fw.code == firmware._under(tmp_path, code), case
    assert fw.vars_template == (firmware._under(tmp_path, template) if template else None), case


@pytest.mark.parametrize(
    ("arch", "system", "advice"),
    [
        ("arm64", "darwin", "brew install qemu"),
        ("amd64", "darwin", "brew install qemu"),
        ("arm64", "linux", "apt-get install qemu-efi-aarch64"),
        ("arm64", "linux", "dnf install edk2-aarch64"),
        ("amd64", "linux", "apt-get install ovmf"),
        ("amd64", "linux", "dnf install edk2-ovmf"),
        ("arm64", "win32", "QEMU for Windows installer"),
    ],
)
def test_no_firmware_says_what_to_install(tmp_path, arch, system, advice) -> None:
    with pytest.raises(VmUnavailable) as e:
        firmware.find_firmware(arch, system, "/usr/bin/qemu", root=tmp_path)
    assert advice in str(e.value)
    assert "QEMU_VM_FIRMWARE" in str(e.value)


def test_ovmf_without_a_vars_template_is_passed_over(tmp_path) -> None:
    # OVMF does not start from a blank variable store, unlike AAVMF.
    fake_fs(tmp_path, {"/usr/share/OVMF/OVMF_CODE_4M.fd": 3 * MIB})
    with pytest.raises(VmUnavailable, match="apt-get install ovmf"):
        firmware.find_firmware("amd64", "linux", None, root=tmp_path)


@pytest.mark.parametrize(
    ("files", "override", "template"),
    [
        ({"/fw/AAVMF_CODE.fd": 64 * MIB, "/fw/AAVMF_VARS.fd": 64 * MIB}, "/fw/AAVMF_CODE.fd",
         "/fw/AAVMF_VARS.fd"),
        ({"/fw/my-uefi.fd": 2 * MIB}, "/fw/my-uefi.fd", None),
    ],
)  # fmt: skip
def test_firmware_override_wins(tmp_path, files, override, template) -> None:
    fake_fs(tmp_path, {**files, f"{BREW_ARM}/edk2-aarch64-code.fd": 64 * MIB})
    fw = firmware.find_firmware(
        "arm64", "darwin", "/opt/homebrew/bin/q", Path(override), root=tmp_path
    )
    assert fw.code == firmware._under(tmp_path, override)
    assert fw.vars_template == (firmware._under(tmp_path, template) if template else None)
    assert fw.origin == "QEMU_VM_FIRMWARE"


def test_firmware_override_that_is_missing_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(UsageError, match="QEMU_VM_FIRMWARE: no file at /nope.fd"):
        firmware.find_firmware("arm64", "linux", None, Path("/nope.fd"), root=tmp_path)
    fake_fs(tmp_path, {"/fw/custom.fd": MIB})
    with pytest.raises(UsageError, match="no OVMF variable store template"):
        firmware.find_firmware("amd64", "linux", None, Path("/fw/custom.fd"), root=tmp_path)


@pytest.mark.parametrize(
    ("arch", "setting", "has_kernel", "mode"),
    [
        ("amd64", "auto", True, firmware.BootMode.KERNEL),
        ("arm64", "auto", True, firmware.BootMode.KERNEL),
        ("amd64", "auto", False, firmware.BootMode.BIOS),
        ("amd64", "bios", False, firmware.BootMode.BIOS),
        ("amd64", "uefi", False, firmware.BootMode.UEFI),
        ("amd64", Path("/fw/OVMF_CODE.fd"), False, firmware.BootMode.UEFI),
        ("arm64", "auto", False, firmware.BootMode.UEFI),
        ("arm64", "uefi", False, firmware.BootMode.UEFI),
    ],
)
def test_boot_mode(arch, setting, has_kernel, mode) -> None:
    assert firmware.boot_mode(arch, setting, has_kernel) is mode


# --- the per-VM firmware files ---------------------------------------------------


def test_vars_made_once_from_the_template_and_never_rewritten(tmp_path) -> None:
    template = tmp_path / "AAVMF_VARS.fd"
    template.write_bytes(b"TEMPLATE" + bytes(64 * MIB - 8))
    fw = firmware.Firmware("arm64", tmp_path / "AAVMF_CODE.fd", template, "test")
    vars_path = tmp_path / "state" / "efi-vars.fd"
    assert firmware.ensure_vars(fw, vars_path) == vars_path
    assert vars_path.read_bytes()[:8] == b"TEMPLATE" and vars_path.stat().st_size == 64 * MIB
    with vars_path.open("r+b") as f:
        f.write(b"GUESTSET")  # the guest wrote a boot entry
    template.write_bytes(b"NEWTEMPL" + bytes(64 * MIB - 8))  # the package was upgraded
    firmware.ensure_vars(fw, vars_path)
    assert vars_path.read_bytes()[:8] == b"GUESTSET"


def test_arm64_without_a_template_gets_a_blank_64_mib_store(tmp_path) -> None:
    fw = firmware.Firmware("arm64", tmp_path / "QEMU_EFI.fd", None, "test")
    vars_path = firmware.ensure_vars(fw, tmp_path / "efi-vars.fd")
    assert vars_path.stat().st_size == 64 * MIB
    with vars_path.open("rb") as f:
        assert f.read(4096) == bytes(4096)


def test_ovmf_vars_keep_their_size(tmp_path) -> None:
    template = tmp_path / "OVMF_VARS_4M.fd"
    template.write_bytes(b"V" * 540672)
    fw = firmware.Firmware("amd64", tmp_path / "OVMF_CODE_4M.fd", template, "test")
    assert firmware.ensure_vars(fw, tmp_path / "v.fd").read_bytes() == template.read_bytes()


def test_small_arm64_code_image_is_padded_in_the_state_dir(tmp_path) -> None:
    code = tmp_path / "QEMU_EFI.fd"
    code.write_bytes(b"EFI" * 1000)
    fw = firmware.Firmware("arm64", code, None, "test")
    state = tmp_path / "state"
    flash = firmware.prepare(fw, state, state / "efi-vars.fd")
    assert flash.code == state / "efi-code.fd"
    assert flash.code.stat().st_size == 64 * MIB
    assert flash.code.read_bytes()[:3000] == code.read_bytes()
    assert flash.vars == state / "efi-vars.fd"
    # A 64 MiB image (Homebrew's, AAVMF) is used where it is.
    big = tmp_path / "AAVMF_CODE.fd"
    with big.open("wb") as f:
        f.truncate(64 * MIB)
    assert firmware.flash_code(firmware.Firmware("arm64", big, None, "t"), state) == big


def test_pflash_for_needs_no_firmware_for_kernel_or_seabios_boots(tmp_path) -> None:
    args = ("qemu-system-x86_64", tmp_path, tmp_path / "efi-vars.fd")
    assert firmware.pflash_for("amd64", "auto", False, *args) is None
    assert firmware.pflash_for("arm64", "auto", True, *args) is None
    assert not (tmp_path / "efi-vars.fd").exists()


# --- the QEMU command line per platform ------------------------------------------

FLASH = firmware.Pflash(code=Path("/fw/code.fd"), vars=Path("/s/efi-vars.fd"))
KERNEL = BaseImage(Path("/c/d.qcow2"), kernel=Path("/c/vmlinuz"), cmdline="root=/dev/vda")
SHARES = (qemu.Share("app", Path("/proj"), True), qemu.Share("work", Path("/proj/.w"), False))


def qspec(host_os: str, arch: str, accel: str, **changes) -> qemu.QemuSpec:
    values = dict(
        qemu_bin="qemu-system-" + ("aarch64" if arch == "arm64" else "x86_64"),
        name="vm1",
        arch=arch,
        accel=accel,
        mem_mb=4096,
        cpus=2,
        disk=Path("/s/disk.qcow2"),
        seed=Path("/s/seed.iso"),
        ssh_port=2222,
        pidfile=Path("/s/qemu.pid"),
        serial_log=Path("/s/serial.log"),
        qmp_socket=Path("/s/qmp.sock"),
        qga_socket=Path("/s/qga.sock"),
        fs_mode="none" if host_os == "win32" else "9p",
        shares=() if host_os == "win32" else SHARES,
        host_os=host_os,
    )
    if host_os == "win32":
        values.update(qmp_port=4444, qga_port=4445)
    values.update(changes)
    return qemu.QemuSpec(**values)


def after(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def has(argv: list[str], text: str) -> bool:
    return any(text in a for a in argv)


# platform, arch, accel, firmware, fs mode -> machine, accel arg, cpu
ARM_TCG_CPU = "max,pauth-impdef=on"  # QARMA5 costs ~7x under TCG
PLATFORMS = [
    ("linux", "amd64", "kvm", None, "virtiofs", "q35", "kvm", "host"),
    ("linux", "amd64", "tcg", None, "9p", "q35", "tcg,thread=multi", "max"),
    ("linux", "amd64", "tcg", FLASH, "9p", "q35", "tcg,thread=multi", "max"),
    ("linux", "amd64", "kvm", FLASH, "none", "q35", "kvm", "host"),
    ("linux", "arm64", "tcg", FLASH, "9p", "virt,gic-version=max", "tcg,thread=multi", ARM_TCG_CPU),
    (
        "linux",
        "arm64",
        "tcg",
        None,
        "virtiofs",
        "virt,gic-version=max",
        "tcg,thread=multi",
        ARM_TCG_CPU,
    ),
    ("linux", "arm64", "kvm", FLASH, "virtiofs", "virt,gic-version=host", "kvm", "host"),
    ("darwin", "arm64", "hvf", FLASH, "9p", "virt,highmem=on", "hvf", "host"),
    ("darwin", "arm64", "hvf", None, "9p", "virt,highmem=on", "hvf", "host"),
    (
        "darwin",
        "arm64",
        "tcg",
        FLASH,
        "9p",
        "virt,gic-version=max",
        "tcg,thread=multi",
        ARM_TCG_CPU,
    ),
    ("darwin", "amd64", "hvf", None, "9p", "q35", "hvf", "host"),
    ("darwin", "amd64", "tcg", FLASH, "none", "q35", "tcg,thread=multi", "max"),
    ("win32", "amd64", "whpx", None, "none", "q35", "whpx,kernel-irqchip=off", "qemu64"),
    ("win32", "amd64", "tcg", FLASH, "none", "q35", "tcg,thread=multi", "max"),
    ("win32", "arm64", "whpx", FLASH, "none", "virt,gic-version=max", "whpx", "max"),
    (
        "win32",
        "arm64",
        "tcg",
        FLASH,
        "none",
        "virt,gic-version=max",
        "tcg,thread=multi",
        ARM_TCG_CPU,
    ),
]


@pytest.mark.parametrize(
    ("host_os", "arch", "accel", "flash", "fs_mode", "machine", "accel_arg", "cpu"), PLATFORMS
)
def test_argv_per_platform(host_os, arch, accel, flash, fs_mode, machine, accel_arg, cpu) -> None:
    changes: dict = {"firmware": flash, "fs_mode": fs_mode}
    if fs_mode == "virtiofs":
        changes["shares"] = (qemu.Share("app", Path("/p"), True, socket=Path("/s/fs-app.sock")),)
    if fs_mode == "none":
        changes["shares"] = ()
    argv = qemu.build_argv(qspec(host_os, arch, accel, **changes))
    assert after(argv, "-machine") == [machine]
    assert after(argv, "-accel") == [accel_arg]
    assert after(argv, "-cpu") == [cpu]
    # virtio over PCI on both machines (arm64 virt has no ISA bus).
    assert "virtio-blk-pci,drive=disk0" in after(argv, "-device")
    assert "virtio-net-pci,netdev=net0" in after(argv, "-device")
    assert not has(argv, "isa-")

    pflash = [d for d in after(argv, "-drive") if d.startswith("if=pflash")]
    if flash:
        assert pflash == [
            "if=pflash,format=raw,unit=0,readonly=on,file=/fw/code.fd",
            "if=pflash,format=raw,unit=1,file=/s/efi-vars.fd",
        ]
    else:
        assert pflash == []  # SeaBIOS on x86_64, or -kernel

    if host_os == "win32":
        assert "-daemonize" not in argv and "-pidfile" not in argv
        assert after(argv, "-qmp") == ["tcp:127.0.0.1:4444,server=on,wait=off"]
        assert "socket,id=qga0,host=127.0.0.1,port=4445,server=on,wait=off" in after(
            argv, "-chardev"
        )
        assert not has(argv, "unix:") and not has(argv, "path=/s/q")
    else:
        assert "-daemonize" in argv and after(argv, "-pidfile") == ["/s/qemu.pid"]
        assert after(argv, "-qmp") == ["unix:/s/qmp.sock,server=on,wait=off"]
        assert "socket,id=qga0,path=/s/qga.sock,server=on,wait=off" in after(argv, "-chardev")
    if host_os == "darwin":
        assert not has(argv, "memfd") and not has(argv, "vhost-user")

    if fs_mode == "none":
        assert "-virtfs" not in argv and not has(argv, "vhost-user") and not has(argv, "memfd")
    elif fs_mode == "9p":
        assert len(after(argv, "-virtfs")) == 2 and not has(argv, "memfd")
    else:
        assert after(argv, "-object") == ["memory-backend-memfd,id=mem,size=4096M,share=on"]
        assert "-virtfs" not in argv


@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_direct_kernel_boot_kept_on_both_arches(arch) -> None:
    argv = qemu.build_argv(qspec("linux", arch, "tcg", base=KERNEL))
    assert after(argv, "-kernel") == ["/c/vmlinuz"] and after(argv, "-append") == ["root=/dev/vda"]
    assert not has(argv, "pflash")


@pytest.mark.parametrize(
    ("host_os", "fs_mode", "message"),
    [
        ("win32", "9p", "QEMU for Windows has no 9p"),
        ("win32", "virtiofs", "QEMU for Windows has no virtiofs"),
        ("darwin", "virtiofs", "no virtiofs"),
    ],
)
def test_shares_a_host_qemu_cannot_make_are_refused(host_os, fs_mode, message) -> None:
    with pytest.raises(ValueError, match=message):
        qemu.build_argv(qspec(host_os, "amd64", "tcg", fs_mode=fs_mode))


def test_windows_needs_tcp_ports_for_qmp() -> None:
    with pytest.raises(ValueError, match="TCP ports"):
        qemu.build_argv(qspec("win32", "amd64", "tcg", qmp_port=None))


def test_windows_drive_letter_paths_survive_escaping() -> None:
    state = PureWindowsPath(r"C:\Users\a,b\proj\.qemu-vm\vm1")
    flash = firmware.Pflash(
        code=PureWindowsPath(r"C:\Program Files\qemu\share\edk2-aarch64-code.fd"),
        vars=state / "efi-vars.fd",
    )
    spec = qspec(
        "win32", "arm64", "tcg",
        disk=state / "disk.qcow2", seed=state / "seed.iso", pidfile=state / "qemu.pid",
        serial_log=state / "serial.log", firmware=flash,
    )  # fmt: skip
    argv = qemu.build_argv(spec)
    drives = after(argv, "-drive")
    assert r"file=C:\Program Files\qemu\share\edk2-aarch64-code.fd" in drives[0]
    assert drives[1].endswith(r"file=C:\Users\a,,b\proj\.qemu-vm\vm1\efi-vars.fd")
    assert drives[2].startswith(r"file=C:\Users\a,,b\proj\.qemu-vm\vm1\disk.qcow2,if=none")
    assert after(argv, "-serial") == [r"file:C:\Users\a,b\proj\.qemu-vm\vm1\serial.log"]
    assert qemu.opt_escape(PureWindowsPath(r"D:\x")) == r"D:\x"


# --- starting QEMU ---------------------------------------------------------------


class FakeChild:
    def __init__(self, pid: int, exits: int | None = None) -> None:
        self.pid, self.exits = pid, exits

    def poll(self) -> int | None:
        return self.exits


def test_start_on_windows_is_detached_and_writes_the_pidfile(tmp_path) -> None:
    calls = []

    def popen(argv, **kwargs):
        calls.append((argv, kwargs))
        return FakeChild(4321)

    spec = qspec("win32", "amd64", "tcg", pidfile=tmp_path / "qemu.pid",
                 serial_log=tmp_path / "serial.log")  # fmt: skip
    pid = process.start(spec, popen=popen, connects=lambda address: address == ("127.0.0.1", 4444))
    assert pid == 4321
    assert (tmp_path / "qemu.pid").read_text() == "4321\n"
    argv, kwargs = calls[0]
    assert "-daemonize" not in argv
    flags = kwargs["creationflags"]
    assert flags & 0x00000008 and flags & 0x00000200  # DETACHED_PROCESS, CREATE_NEW_PROCESS_GROUP
    assert kwargs["stdin"] is subprocess.DEVNULL


def test_start_on_windows_reports_an_early_exit(tmp_path) -> None:
    def popen(argv, stderr, **kwargs):
        stderr.write(b"qemu-system-x86_64.exe: -accel whpx: No accelerator found\n")
        return FakeChild(4321, exits=1)

    spec = qspec("win32", "amd64", "whpx", pidfile=tmp_path / "qemu.pid",
                 serial_log=tmp_path / "serial.log")  # fmt: skip
    with pytest.raises(VmUnavailable, match="No accelerator found"):
        process.start(spec, popen=popen, connects=lambda address: False)
    assert not (tmp_path / "qemu.pid").exists()


def test_start_on_posix_daemonises_and_reads_the_pidfile(tmp_path) -> None:
    pidfile = tmp_path / "qemu.pid"

    def run(argv, **kwargs):
        assert "-daemonize" in argv
        pidfile.write_text("999\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    assert process.start(qspec("linux", "amd64", "tcg", pidfile=pidfile), run=run) == 999

    def fails(argv, **kwargs):
        return subprocess.CompletedProcess(argv, 1, "", "qemu: could not open disk")

    with pytest.raises(VmUnavailable, match="could not open disk"):
        process.start(qspec("darwin", "arm64", "hvf", pidfile=pidfile), run=fails)


def test_qmp_over_tcp(tmp_path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(b'{"QMP": {}}\n')
            f.flush()
            for line in f:
                cmd = json.loads(line)["execute"]
                answer = {"status": "running"} if cmd == "query-status" else {}
                f.write(json.dumps({"return": answer}).encode() + b"\n")
                f.flush()
        server.close()

    threading.Thread(target=serve, daemon=True).start()
    answer = qmp.execute(("127.0.0.1", port), "query-status")
    assert answer == {"return": {"status": "running"}}


# --- test.run's default target ----------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "target"),
    [
        ("arm64", "aarch64-unknown-linux-musl"),
        ("aarch64", "aarch64-unknown-linux-musl"),
        ("amd64", "x86_64-unknown-linux-musl"),
        ("x86_64", "x86_64-unknown-linux-musl"),
    ],
)
def test_test_run_builds_for_the_guest_arch(tmp_path, monkeypatch, arch, target) -> None:
    test_tasks = importlib.import_module("patchbay_vm_tasks.tasks.test")
    for var in ("QEMU_VM_ARCH", "QEMU_VM_TARGET_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("QEMU_VM_ARCH", arch)
    checked = []

    class Stop(Exception):
        pass

    def check_target(wanted, installed, cwd=None):
        checked.append(wanted)
        raise Stop  # before cargo runs or a VM boots

    monkeypatch.setattr(test_tasks.cargo, "check_target", check_target)
    monkeypatch.setattr(test_tasks.cargo, "installed_targets", lambda cwd=None: set())
    c = invoke.Context(invoke.Config(overrides={"vm": {"project_dir": str(tmp_path)}}))
    with pytest.raises(Stop):
        test_tasks.run(c)
    assert checked == [target]
    with pytest.raises(Stop):
        test_tasks.run(c, target="x86_64-unknown-linux-gnu")  # an explicit one wins
    assert checked[-1] == "x86_64-unknown-linux-gnu"


# --- binfmt_misc for building the other arch's image ------------------------------

ENTRY_F = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POCF\n"


def binfmt_fs(tmp_path: Path, mounted=True, entry=None, conf=True, status="enabled"):
    binfmt_dir, conf_dir = tmp_path / "binfmt_misc", tmp_path / "binfmt.d"
    binfmt_dir.mkdir(parents=True)
    conf_dir.mkdir(parents=True)
    if mounted:
        (binfmt_dir / "register").write_text("")
        (binfmt_dir / "status").write_text(status + "\n")
    if entry is not None:
        (binfmt_dir / "qemu-aarch64").write_text(entry)
    if conf:
        (conf_dir / "qemu-aarch64.conf").write_text(":qemu-aarch64:M::...:F\n")
    return {"binfmt_dir": binfmt_dir, "conf_dir": conf_dir, "host_machine": "x86_64"}


@pytest.mark.parametrize(
    ("fs", "ready", "problem", "commands"),
    [
        (dict(entry=ENTRY_F), True, "", []),
        (dict(mounted=False, conf=False), False, "not mounted",
         ["mount -t binfmt_misc", "apt-get install qemu-user-static", "register"]),
        (dict(mounted=False), False, "not mounted", ["mount -t binfmt_misc", "register"]),
        (dict(conf=False), False, "no qemu-aarch64 entry",
         ["apt-get install qemu-user-static", "register"]),
        (dict(), False, "no qemu-aarch64 entry",
         ["cat {conf_dir}/qemu-aarch64.conf > {bd}/register"]),
        (dict(entry=ENTRY_F.replace("enabled", "disabled", 1)), False, "entry is disabled",
         ["echo 1 > {bd}/qemu-aarch64"]),
        (dict(entry=ENTRY_F, status="disabled"), False, "binfmt_misc is disabled",
         ["echo 1 > {bd}/status"]),
        (dict(entry=ENTRY_F.replace("POCF", "POC")), False, "lacks the F flag",
         ["echo -1 > {bd}/qemu-aarch64", "register"]),
    ],
)  # fmt: skip
def test_binfmt_detection(tmp_path, fs, ready, problem, commands) -> None:
    env = binfmt_fs(tmp_path, **fs)
    state = binfmt.check("arm64", **env)
    assert state.ready is ready
    assert problem in state.problem
    assert len(state.commands) == len(commands)
    for cmd, part in zip(state.commands, commands, strict=True):
        assert part.format(bd=env["binfmt_dir"], conf_dir=env["conf_dir"]) in cmd
        assert cmd.startswith("sudo ")


def test_binfmt_not_needed_for_the_host_arch(tmp_path) -> None:
    assert binfmt.check("arm64", host_machine="aarch64", binfmt_dir=tmp_path).ready
    assert binfmt.check("amd64", host_machine="x86_64", binfmt_dir=tmp_path).ready
    # An amd64 guest built on an arm64 host needs the x86_64 entry.
    state = binfmt.check("amd64", host_machine="arm64", binfmt_dir=tmp_path, conf_dir=tmp_path)
    assert not state.ready and "qemu-x86_64" in state.commands[-1]


@pytest.mark.parametrize(
    ("arch", "host", "env"),
    [
        ("arm64", "x86_64", {"QEMU_CPU": "cortex-a72"}),  # emulated: a CPU without PAuth
        ("arm64", "aarch64", {}),  # native: no qemu-user
        ("amd64", "x86_64", {}),
        ("amd64", "arm64", {}),  # qemu-x86_64's default model is cheap already
    ],
)
def test_build_env_picks_the_emulated_cpu(arch, host, env) -> None:
    assert binfmt.build_env(arch, host_machine=host) == env


def test_the_emulated_cpu_is_one_qemu_user_has() -> None:
    # Real qemu-user (CI installs qemu-user-static): an unknown model would stop
    # every program of a foreign build with "unable to find CPU model".
    for arch, model in binfmt.EMULATED_CPU.items():
        out = subprocess.run(
            [f"qemu-{binfmt.QEMU_ARCH[arch]}-static", "-cpu", "help"],
            capture_output=True,
            text=True,
        )  # fmt: skip (qemu-user exits 1 after listing them)
        assert model in out.stdout.split()


def test_binfmt_require_prints_the_commands(tmp_path) -> None:
    with pytest.raises(VmUnavailable) as e:
        binfmt.require("arm64", **binfmt_fs(tmp_path, mounted=False))
    assert "building an arm64 guest on this amd64 host" in str(e.value)
    assert "  sudo mount -t binfmt_misc" in str(e.value)
    binfmt.require("arm64", **binfmt_fs(tmp_path / "ok", entry=ENTRY_F))


@pytest.mark.parametrize(("arch", "console"), [("amd64", "ttyS0"), ("arm64", "ttyAMA0")])
def test_built_image_kernel_prints_on_the_machines_serial_port(tmp_path, arch, console) -> None:
    out = images._build_dir("trixie", arch, tmp_path)
    out.mkdir(parents=True)
    (out / "build.json").write_text("{}")  # cached: nothing is built
    image = images.build_debian_image("trixie", arch, "http://deb.example", tmp_path)
    assert f" console={console} " in f" {image.cmdline} "
    assert "panic=1" in image.cmdline.split()  # a panicking guest reboots, not hangs


def test_a_foreign_arch_build_without_arch_test_says_what_to_install(tmp_path: Path) -> None:
    env = binfmt_fs(tmp_path, entry=ENTRY_F)
    binfmt.require("arm64", which=lambda name: f"/usr/bin/{name}", **env)  # all there
    with pytest.raises(VmUnavailable, match="sudo apt-get install arch-test"):
        binfmt.require("arm64", which=lambda name: None, **env)
    binfmt.require("amd64", which=lambda name: None, **env)  # the host's own arch
