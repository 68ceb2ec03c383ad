"""Per-platform settings and argv: guest arch, firmware, accelerators, host OS (issue 11).

Everything here runs from a fake environment: no QEMU is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks import firmware, settings
from patchbay_vm_tasks.errors import UsageError, VmUnavailable


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
    assert s.firmware == expected
    assert s.asked_for()["firmware"] == expected


def test_firmware_path_is_from_the_project_dir(tmp_path) -> None:
    s = resolve(tmp_path, env={"QEMU_VM_FIRMWARE": "fw/code.fd"})
    assert s.firmware == str(tmp_path.resolve() / "fw" / "code.fd")


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
    fw = firmware.find_firmware("arm64", "darwin", "/opt/homebrew/bin/q", override, root=tmp_path)
    assert fw.code == firmware._under(tmp_path, override)
    assert fw.vars_template == (firmware._under(tmp_path, template) if template else None)
    assert fw.origin == "QEMU_VM_FIRMWARE"


def test_firmware_override_that_is_missing_is_a_usage_error(tmp_path) -> None:
    with pytest.raises(UsageError, match="QEMU_VM_FIRMWARE: no file at /nope.fd"):
        firmware.find_firmware("arm64", "linux", None, "/nope.fd", root=tmp_path)
    fake_fs(tmp_path, {"/fw/custom.fd": MIB})
    with pytest.raises(UsageError, match="no OVMF variable store template"):
        firmware.find_firmware("amd64", "linux", None, "/fw/custom.fd", root=tmp_path)


@pytest.mark.parametrize(
    ("arch", "setting", "has_kernel", "mode"),
    [
        ("amd64", "auto", True, firmware.BootMode.KERNEL),
        ("arm64", "auto", True, firmware.BootMode.KERNEL),
        ("amd64", "auto", False, firmware.BootMode.BIOS),
        ("amd64", "bios", False, firmware.BootMode.BIOS),
        ("amd64", "uefi", False, firmware.BootMode.UEFI),
        ("amd64", "/fw/OVMF_CODE.fd", False, firmware.BootMode.UEFI),
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
