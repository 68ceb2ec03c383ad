"""A running VM asked for another arch or fs mode is refused before anything is touched
(exit 2, with the --recreate hint), as other shared folders are."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.errors import UsageError
from patchbay_vm_tasks.vm import lifecycle
from patchbay_vm_tasks.vm.record import VmRecord


def _settings(tmp_path: Path, **env: str) -> settings.VmSettings:
    return settings.resolve(env={"QEMU_VM_NAME": "t", **env}, project_dir=tmp_path)


@pytest.mark.parametrize(
    ("env", "running", "refused"),
    [
        ({"QEMU_VM_ARCH": "arm64"}, {"arch": "amd64"}, "runs an amd64 guest and arm64 is asked"),
        ({"QEMU_VM_ARCH": "amd64"}, {"arch": "arm64"}, "runs an arm64 guest and amd64 is asked"),
        ({"QEMU_VM_ARCH": "amd64"}, {}, None),  # a record from before the setting: amd64
        ({"QEMU_VM_ARCH": "aarch64"}, {"arch": "arm64"}, None),
    ],
)
def test_another_arch_is_refused(tmp_path, env, running, refused) -> None:
    s = _settings(tmp_path, **env)
    if refused is None:
        lifecycle._check_same_arch(s, VmRecord.from_json(running))
        return
    with pytest.raises(UsageError, match=refused) as e:
        lifecycle._check_same_arch(s, VmRecord.from_json(running))
    assert "--recreate" in str(e.value) and e.value.exit_code == 2


@pytest.mark.parametrize(
    ("asked", "running", "refused"),
    [
        ("none", "9p", True),
        ("virtiofs", "9p", True),
        ("9p", "virtiofs", True),
        ("auto", "virtiofs", False),  # auto takes what runs
        ("9p", "9p", False),
    ],
)
def test_another_fs_mode_asked_for_is_refused(tmp_path, asked, running, refused) -> None:
    s = _settings(tmp_path, QEMU_VM_FS=asked)
    if not refused:
        lifecycle._check_same_fs_mode(s, VmRecord.from_json({"fs_mode": running}))
        return
    with pytest.raises(UsageError, match=f"fs mode {running} and QEMU_VM_FS asks for {asked}"):
        lifecycle._check_same_fs_mode(s, VmRecord.from_json({"fs_mode": running}))
