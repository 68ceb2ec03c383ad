"""Settings: defaults < invoke config < QEMU_VM_* environment < flags (SPEC 3)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.errors import UsageError


def resolve(tmp_path: Path, config=None, env=None, flags=None) -> settings.VmSettings:
    return settings.resolve(config=config, env=env or {}, flags=flags, project_dir=tmp_path)


def test_defaults(tmp_path: Path) -> None:
    s = resolve(tmp_path)
    assert (s.name, s.mem_mb, s.cpus, s.disk_gb, s.ssh_port, s.ssh_user) == (
        "patchbay-vm", 4096, 4, 40, 2222, "dev",
    )  # fmt: skip
    assert s.accel == "auto" and s.fs_mode == "auto"
    assert not s.ssh_port_explicit
    assert s.work_dir == tmp_path.resolve() / ".patchbay-work"
    assert s.target_dir == tmp_path.resolve() / "target"
    assert s.state_dir == tmp_path.resolve() / ".qemu-vm" / "patchbay-vm"
    assert s.image_url.endswith(f"/debian-13-generic-{s.arch}.qcow2")
    assert s.image_cache_dir.parts[-3:] == ("share", "patchbay", "qemu-images")


@pytest.mark.parametrize(
    ("config", "env", "flags", "expected_mem"),
    [
        ({}, {}, {}, 4096),
        ({"mem_mb": 1024}, {}, {}, 1024),
        ({"mem_mb": 1024}, {"QEMU_VM_MEM_MB": "2048"}, {}, 2048),
        ({"mem_mb": 1024}, {"QEMU_VM_MEM_MB": "2048"}, {"mem_mb": 3072}, 3072),
        ({}, {"QEMU_VM_MEM_MB": ""}, {"mem_mb": None}, 4096),  # empty / unset do not count
    ],
)
def test_precedence(tmp_path, config, env, flags, expected_mem) -> None:
    assert resolve(tmp_path, config, env, flags).mem_mb == expected_mem


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"QEMU_VM_NAME": "other"}, "name", "other"),
        ({"QEMU_VM_CPUS": "2"}, "cpus", 2),
        ({"QEMU_VM_DISK_GB": "8"}, "disk_gb", 8),
        ({"QEMU_VM_SSH_USER": "me"}, "ssh_user", "me"),
        ({"QEMU_VM_IMAGE_URL": "debian:trixie"}, "image_url", "debian:trixie"),
        ({"QEMU_VM_QEMU_BIN": "/opt/q"}, "qemu_bin", "/opt/q"),
        ({"QEMU_VM_VIRTIOFSD_BIN": "/opt/v"}, "virtiofsd_bin", "/opt/v"),
        ({"QEMU_VM_ACCEL": "tcg"}, "accel", "tcg"),
        ({"QEMU_VM_FS": "9p"}, "fs_mode", "9p"),
        ({"QEMU_VM_BOOT_TIMEOUT": "30"}, "boot_timeout", 30.0),
    ],
)
def test_each_environment_variable(tmp_path, env, field, value) -> None:
    assert getattr(resolve(tmp_path, env=env), field) == value


def test_explicit_port_is_remembered(tmp_path) -> None:
    assert resolve(tmp_path, env={"QEMU_VM_SSH_PORT": "2300"}).ssh_port_explicit
    assert resolve(tmp_path, config={"ssh_port": 2300}).ssh_port_explicit
    assert resolve(tmp_path, env={"QEMU_VM_SSH_PORT": "2300"}).ssh_port == 2300


def test_work_dir_relative_to_project(tmp_path) -> None:
    s = resolve(tmp_path, env={"QEMU_VM_WORK_DIR": "out/w"})
    assert s.work_dir == tmp_path.resolve() / "out" / "w"
    assert s.mounts()[2] == ("/work", tmp_path.resolve() / "out" / "w", "rw")


def test_target_dir_from_cargo_metadata(tmp_path) -> None:
    (tmp_path / "Cargo.toml").write_text('[package]\nname = "x"\nversion = "0.1.0"\n')
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "lib.rs").write_text("")
    (tmp_path / ".cargo").mkdir()
    (tmp_path / ".cargo" / "config.toml").write_text('[build]\ntarget-dir = "elsewhere"\n')
    assert resolve(tmp_path).target_dir == tmp_path.resolve() / "elsewhere"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"QEMU_VM_MEM_MB": "lots"}, "QEMU_VM_MEM_MB: 'lots' is not a valid int"),
        ({"QEMU_VM_CPUS": "0"}, "QEMU_VM_CPUS: must be greater than zero"),
        ({"QEMU_VM_SSH_PORT": "70000"}, "QEMU_VM_SSH_PORT: 70000 is not a TCP port"),
        ({"QEMU_VM_ACCEL": "xen"}, "QEMU_VM_ACCEL: 'xen' is not one of auto, kvm, hvf, whpx, tcg"),
        ({"QEMU_VM_FS": "nfs"}, "QEMU_VM_FS: 'nfs' is not one of auto, virtiofs, 9p"),
        ({"QEMU_VM_NAME": "../x"}, "QEMU_VM_NAME: '../x' may hold only"),
    ],
)
def test_bad_values(tmp_path, env, message) -> None:
    with pytest.raises(UsageError, match=None) as e:
        resolve(tmp_path, env=env)
    assert message in str(e.value)
    assert e.value.exit_code == 2


def test_unknown_config_key(tmp_path) -> None:
    with pytest.raises(UsageError, match="invoke config vm.memory: unknown setting"):
        resolve(tmp_path, config={"memory": 1})


@pytest.mark.parametrize(
    ("machine", "arch", "qemu"),
    [
        ("x86_64", "amd64", "qemu-system-x86_64"),
        ("aarch64", "arm64", "qemu-system-aarch64"),
        ("arm64", "arm64", "qemu-system-aarch64"),
    ],
)
def test_arch_defaults(machine, arch, qemu) -> None:
    assert settings.host_arch(machine) == arch
    assert settings.default_qemu_bin(arch) == qemu
    # The generic image: its kernel has 9p as well as virtiofs (SPEC 9.2).
    assert settings.default_image_url(arch).endswith(f"debian-13-generic-{arch}.qcow2")
