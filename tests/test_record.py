"""The record of a running VM (vm/record.py): runtime.json keeps the keys and values the
earlier versions wrote, and a record of an earlier version (a VM it started may still
run) is read as those versions read it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.settings import Accel, FsMode
from patchbay_vm_tasks.vm.firmware import Pflash
from patchbay_vm_tasks.vm.images import BaseImage
from patchbay_vm_tasks.vm.record import Mount, VmRecord, base_from_json, mounts_of
from patchbay_vm_tasks.vm.state import StateDir

BASE = BaseImage(Path("/c/disk.qcow2"), kernel=Path("/c/vmlinuz"), initrd=Path("/c/initrd.img"),
                 cmdline="root=/dev/vda rw patchbay.gate", gated=True)  # fmt: skip
MOUNTS = [
    {"guest": "/app", "host": "/p", "access": "ro"},
    {"guest": "/target", "host": "/p/target", "access": "ro"},
    {"guest": "/work", "host": "/p/.patchbay-work", "access": "rw"},
]
ARGV = ["qemu-system-x86_64", "-name", "vm1,process=qemu-vm1"]

# runtime.json of a VM booted from a template, as the versions before the typed record
# wrote it (their dict, key for key, in their order).
BOOTED = {
    "name": "vm1",
    "ssh_port": 2222,
    "ssh_user": "dev",
    "accel": "tcg",
    "cpus": 2,
    "fs_mode": "9p",
    "mounts": MOUNTS,
    "base_image": "/c/disk.qcow2",
    "base": {
        "disk": "/c/disk.qcow2",
        "format": "qcow2",
        "kernel": "/c/vmlinuz",
        "initrd": "/c/initrd.img",
        "cmdline": "root=/dev/vda rw patchbay.gate",
    },  # fmt: skip
    "image_url": "debian:trixie",
    "accel_asked": "auto",
    "seed_id": "iid-patchbay-0123",
    "arch": "amd64",
    "firmware": None,
    "helpers": [],
    "seed_hotplug": False,
    "pid": 4321,
    "started_at": 1700000000.5,
    "qemu_argv": ARGV,
    "from_template": True,
    "ssh_ready_seconds": 12.3,
    "guest_agent": True,
}


def booted_record() -> VmRecord:
    """BOOTED as boot.py makes it."""
    record = VmRecord(
        name="vm1",
        ssh_port=2222,
        ssh_user="dev",
        accel=Accel.TCG,
        cpus=2,
        fs_mode=FsMode.NINEP,
        mounts=[Mount(**m) for m in MOUNTS],
        base_image=str(BASE.disk),
        base=BASE,
        image_url="debian:trixie",
        accel_asked=Accel.AUTO,
        seed_id="iid-patchbay-0123",
        arch="amd64",
        firmware=None,
        seed_hotplug=True,
    )
    record.pid, record.started_at, record.qemu_argv = 4321, 1700000000.5, ARGV
    record.from_template = True
    record.seed_hotplug = False
    record.ssh_ready_seconds = 12.3
    record.guest_agent = True
    return record


def test_a_booted_vms_record_is_written_as_before() -> None:
    written = booted_record().to_json()
    assert written == BOOTED
    assert list(written) == list(BOOTED)  # and in the same order
    # Plain JSON values: the enums are their strings.
    assert json.loads(json.dumps(written)) == BOOTED


def test_what_only_some_starts_know_is_written_only_when_set() -> None:
    cold = booted_record()
    cold.from_template = False
    cold.guest_agent = False  # an image without the agent: said, not left out
    written = cold.to_json()
    assert "from_template" not in written and written["guest_agent"] is False
    # Before QEMU runs (a virtiofsd helper is started first): no pid, argv, times.
    early = VmRecord.from_json({k: v for k, v in BOOTED.items() if k in list(BOOTED)[:16]})
    assert list(early.to_json()) == list(BOOTED)[:16]
    # Windows' control ports.
    win = VmRecord.from_json({**BOOTED, "qmp_port": 4444, "qga_port": 4445})
    assert win.to_json()["qmp_port"] == 4444
    assert win.qmp_address(StateDir(Path("/s"))) == ("127.0.0.1", 4444)
    assert booted_record().qmp_address(StateDir(Path("/s"))) == Path("/s/qmp.sock")
    assert booted_record().qga_address(StateDir(Path("/s"))) == Path("/s/qga.sock")


def test_a_resumed_vms_record_has_the_keys_a_resume_wrote() -> None:
    saved = VmRecord.from_json(booted_record().saved_json())
    resumed = VmRecord(**{**saved.__dict__, "name": "vm1", "ssh_user": "dev",
                          "mounts": [Mount(**m) for m in MOUNTS], "base_image": "/c/disk.qcow2",
                          "seed_id": "iid-patchbay-0123", "ssh_port": 2223})  # fmt: skip
    resumed.pid, resumed.started_at, resumed.qemu_argv = 99, 1700000100.0, ARGV
    resumed.guest_agent, resumed.resumed, resumed.resume_seconds = True, True, 3.21
    written = resumed.to_json()
    # No seed_hotplug, ssh_ready_seconds or from_template: a resume never wrote them.
    assert set(written) == {
        "accel", "cpus", "fs_mode", "base", "image_url", "accel_asked", "arch", "firmware",
        "name", "ssh_user", "mounts", "base_image", "helpers", "seed_id", "ssh_port",
        "pid", "started_at", "qemu_argv", "guest_agent", "resumed", "resume_seconds",
    }  # fmt: skip
    assert written["resumed"] is True and written["base"] == BOOTED["base"]


def test_what_a_save_keeps_is_the_hardware_part() -> None:
    kept = booted_record().saved_json()
    assert list(kept) == [
        "accel", "cpus", "fs_mode", "base", "image_url", "accel_asked", "arch", "firmware",
    ]  # fmt: skip
    assert kept["accel"] == "tcg" and kept["base"] == BOOTED["base"] and kept["firmware"] is None
    uefi = VmRecord.from_json({**BOOTED, "firmware": ["/fw/code.fd", "/s/efi-vars.fd"]})
    assert uefi.firmware == Pflash(Path("/fw/code.fd"), Path("/s/efi-vars.fd"))
    assert uefi.saved_json()["firmware"] == ["/fw/code.fd", "/s/efi-vars.fd"]


def test_a_record_reads_back_as_written() -> None:
    record = VmRecord.from_json(BOOTED)
    assert record.to_json() == BOOTED
    assert record.accel is Accel.TCG and record.fs_mode is FsMode.NINEP
    assert record.base == base_from_json(BOOTED["base"])
    assert record.mounts[2] == Mount("/work", "/p/.patchbay-work", "rw")


@pytest.mark.parametrize(
    "old",
    [
        # The smallest records the tests plant for a running VM.
        {"name": "runvm", "pid": 1234, "ssh_port": 2345, "ssh_user": "dev"},
        {"name": "deadvm", "pid": 1234, "ssh_port": 2345, "helpers": [77]},
        # Before `arch`, `base`, `seed_id` (the first versions), with nulls.
        {
            "name": "vm",
            "ssh_port": 2222,
            "ssh_user": "dev",
            "accel": "kvm",
            "fs_mode": "virtiofs",
            "mounts": MOUNTS,
            "base_image": "/c/d.qcow2",
            "helpers": [5, 6],
            "pid": 9,
            "started_at": 1.0,
            "firmware": None,
        },  # fmt: skip
    ],
)
def test_a_record_of_an_earlier_version_is_read_as_it_was(old) -> None:
    record = VmRecord.from_json(old)
    assert record.arch == "amd64"  # the only arch there was before the setting
    assert record.seed_id is None and record.base is None  # why_not_saveable says so
    assert record.helpers == old.get("helpers", [])
    assert record.from_template is False and record.guest_agent is None
    assert record.ssh_port == old["ssh_port"] and record.pid == old["pid"]


def test_read_takes_only_a_record(tmp_path) -> None:
    state = StateDir(tmp_path)
    assert VmRecord.read(state) is None  # none
    for text in ("{", "[]", "{}", '{"accel": "warp"}', '{"mounts": [{"guest": "/app"}]}'):
        state.runtime.write_text(text)
        assert VmRecord.read(state) is None, text
    booted_record().write(state)
    assert json.loads(state.runtime.read_text()) == BOOTED
    assert VmRecord.read(state) == VmRecord.from_json(BOOTED)


def test_mounts_of_the_settings(tmp_path) -> None:
    s = settings.resolve(env={"QEMU_VM_TARGET_DIR": "t"}, project_dir=tmp_path)
    root = str(tmp_path.resolve())
    assert [m.to_json() for m in mounts_of(s)] == [
        {"guest": "/app", "host": root, "access": "ro"},
        {"guest": "/target", "host": f"{root}/t", "access": "ro"},
        {"guest": "/work", "host": f"{root}/.patchbay-work", "access": "rw"},
    ]
