"""Per-platform settings and argv: guest arch, firmware, accelerators, host OS (issue 11).

Everything here runs from a fake environment: no QEMU is started.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.errors import UsageError


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
