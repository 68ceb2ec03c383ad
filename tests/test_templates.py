"""Templates of an image (templates.py): what a template is bound to, finding,
pruning, the seed's slot on QEMU's command line, the gate in the image recipe."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest
from test_qemu import after, spec

from patchbay_vm_tasks.vm import images, qemu, savedstate, templates
from patchbay_vm_tasks.vm.images import BaseImage


def base_files(tmp_path: Path) -> list[Path]:
    files = [tmp_path / "disk.qcow2", tmp_path / "vmlinuz", tmp_path / "initrd.img"]
    for f in files:
        if not f.exists():
            f.write_bytes(b"x")
    return files


def with_base(tmp_path: Path, **changes) -> qemu.QemuSpec:
    disk, kernel, initrd = base_files(tmp_path)
    base = BaseImage(disk, kernel=kernel, initrd=initrd, cmdline="root=/dev/vda patchbay.gate")
    return spec(base=base, qga_socket=Path("/s/qga.sock"), **changes)


def test_seed_sits_behind_a_root_port_and_can_be_left_out() -> None:
    full = qemu.build_argv(spec())
    assert "pcie-root-port,id=seedport,chassis=1" in after(full, "-device")
    assert "virtio-blk-pci,drive=seed0,bus=seedport,id=seeddev" in after(full, "-device")
    assert any("seed.iso" in d for d in after(full, "-drive"))
    seedless = qemu.build_argv(spec(seed_attached=False))
    assert "pcie-root-port,id=seedport,chassis=1" in after(seedless, "-device")
    assert not any("seed" in d for d in after(seedless, "-drive"))
    assert not any("drive=seed0" in d for d in after(seedless, "-device"))
    # Only the seed's two options differ: the devices around it keep their slots.
    at = full.index("file=/s/seed.iso,if=none,id=seed0,format=raw,readonly=on") - 1
    assert full[:at] + full[at + 4 :] == seedless


def test_two_vms_of_one_image_and_hardware_share_a_key(tmp_path: Path) -> None:
    one = with_base(tmp_path)
    other = dataclasses.replace(
        one,
        name="vm2",
        # Another path to a QEMU of the same version (a wrapper, another prefix).
        qemu_bin="/opt/qemu/bin/qemu-system-x86_64",
        disk=Path("/elsewhere/disk.qcow2"),
        seed=Path("/elsewhere/seed.iso"),
        ssh_port=40000,
        pidfile=Path("/elsewhere/qemu.pid"),
        serial_log=Path("/elsewhere/serial.log"),
        qmp_socket=Path("/elsewhere/qmp.sock"),
        qga_socket=Path("/elsewhere/qga.sock"),
        shares=tuple(dataclasses.replace(s, host_path=Path("/p2") / s.tag) for s in one.shares),
        extra=savedstate.RESUME_ARGS,
        seed_attached=False,
    )
    files = base_files(tmp_path)
    assert templates.key(one, "7.2.0", 8, files) == templates.key(other, "7.2.0", 8, files)


@pytest.mark.parametrize(
    "change",
    [
        {"mem_mb": 4096},
        {"cpus": 4},
        {"accel": "kvm"},
        {"fs_mode": "none"},
        {"qga_socket": None},
        {"shares": (qemu.Share("app", Path("/proj"), True),)},  # one share fewer
        {
            "shares": (
                qemu.Share("app", Path("/proj"), False),
                qemu.Share("work", Path("/w"), False),
            )
        },
    ],
    ids=["memory", "cpus", "accel", "fs-mode", "no-agent", "shares", "share-writable"],
)
def test_other_hardware_gets_another_key(tmp_path: Path, change: dict) -> None:
    one = with_base(tmp_path)
    files = base_files(tmp_path)
    k = templates.key(one, "7.2.0", 8, files)
    assert templates.key(dataclasses.replace(one, **change), "7.2.0", 8, files) != k


def test_qemu_version_disk_size_and_base_files_change_the_key(tmp_path: Path) -> None:
    one = with_base(tmp_path)
    files = base_files(tmp_path)
    k = templates.key(one, "7.2.0", 8, files)
    assert templates.key(one, "8.2.0", 8, files) != k
    assert templates.key(one, "7.2.0", 16, files) != k
    files[1].write_bytes(b"another kernel")
    assert templates.key(one, "7.2.0", 8, files) != k


def make_template(cache: Path, name: str, state: bytes = b"S" * 100) -> templates.Template:
    tpl = templates.Template(cache / name)
    tpl.root.mkdir(parents=True)
    tpl.state.write_bytes(state)
    tpl.disk.write_bytes(b"D" * 50)
    meta = {
        "format": templates.FORMAT,
        "state_bytes": len(state),
        "disk": savedstate.file_identity(tpl.disk),
    }
    tpl.meta.write_text(json.dumps(meta))
    return tpl


def test_find_takes_only_a_whole_template(tmp_path: Path) -> None:
    assert templates.find(tmp_path, "absent") is None
    tpl = make_template(tmp_path, "good")
    assert templates.find(tmp_path, "good") == tpl
    make_template(tmp_path, "truncated").state.write_bytes(b"S" * 10)
    assert templates.find(tmp_path, "truncated") is None
    changed = make_template(tmp_path, "disk-changed")
    recorded = changed.disk.stat().st_mtime_ns
    changed.disk.write_bytes(b"E" * 50)  # the same size, written later: its mtime moves
    # (set here, as the file system's timestamp granularity may not show 1 ms)
    os.utime(changed.disk, ns=(recorded + 10**9, recorded + 10**9))
    assert templates.find(tmp_path, "disk-changed") is None
    make_template(tmp_path, "no-meta").meta.unlink()
    assert templates.find(tmp_path, "no-meta") is None
    make_template(tmp_path, "other-format").meta.write_text('{"format": 99}')
    assert templates.find(tmp_path, "other-format") is None


def test_prune_keeps_the_most_recently_used(tmp_path: Path) -> None:
    for i, name in enumerate(["a", "b", "c"]):
        tpl = make_template(tmp_path, name)
        os.utime(tpl.meta, (1000 + i, 1000 + i))
    templates.find(tmp_path, "a")  # used now: the newest
    gone = templates.prune(tmp_path, 2)
    assert gone == [tmp_path / "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "c"]


def test_copy_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    tpl = make_template(tmp_path / "cache", "t")
    dest = tmp_path / "vm" / "disk.qcow2"
    dest.parent.mkdir()
    templates.copy_disk(tpl, dest)
    assert dest.read_bytes() == tpl.disk.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["disk.qcow2"]


def test_wait_for_gate_reads_the_serial_log(tmp_path: Path) -> None:
    log = tmp_path / "serial.log"
    gate = b"[    1.0] booting\r\npatchbay-gate: waiting for the seed\r\n"
    log.write_bytes(gate)
    polls: list[float] = []
    templates.wait_for_gate(log, alive=lambda: True, timeout=60, on_progress=polls.append)
    assert polls == []  # there at the first look: no wait
    # The gate line turns up while it polls: it returns at the next look.
    log.write_bytes(b"still booting\n")

    def poll(waited: float) -> None:
        polls.append(waited)
        if len(polls) == 3:
            log.write_bytes(gate)

    waited = templates.wait_for_gate(log, alive=lambda: True, timeout=60, on_progress=poll)
    assert len(polls) == 3 and waited >= polls[-1]
    log.write_bytes(b"still booting\n")
    with pytest.raises(ChildProcessError):
        templates.wait_for_gate(log, alive=lambda: False, timeout=5)
    with pytest.raises(TimeoutError):
        templates.wait_for_gate(log, alive=lambda: True, timeout=0.2)


def test_the_image_recipe_carries_the_gate() -> None:
    assert "patchbay-gate.service" in images.GUEST_FILES
    for name, dest in images.GUEST_FILES.items():
        assert (images.GUEST_FILES_DIR / name).is_file(), name
        assert dest.startswith("/")
    assert "systemctl enable --quiet patchbay-gate.service" in images._CUSTOMIZE
    unit = (images.GUEST_FILES_DIR / "patchbay-gate.service").read_text()
    assert f"ConditionKernelCommandLine={images.GATE_PARAM}" in unit
    assert "Before=cloud-init-local.service" in unit
    assert "After=" in unit and "cloud-init-main.service" in unit


def test_a_gate_edit_rebuilds_the_image(monkeypatch, tmp_path: Path) -> None:
    before = images.build_key("trixie", "amd64")
    for name in images.GUEST_FILES:
        (tmp_path / name).write_text((images.GUEST_FILES_DIR / name).read_text() + "\n# edited\n")
    monkeypatch.setattr(images, "GUEST_FILES_DIR", tmp_path)
    assert images.build_key("trixie", "amd64") != before


def test_gate_script_passes_at_once_with_a_seed_and_is_valid_sh() -> None:
    script = images.GUEST_FILES_DIR / "patchbay-gate"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert templates.GATE_WAITING.decode() in text
