"""The saved guest state's rules, without a VM: what it is bound to, when it is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchbay_vm_tasks.vm import qemu as qemu_mod
from patchbay_vm_tasks.vm import savedstate
from patchbay_vm_tasks.vm.state import StateDir

ARGV = ["qemu", "-m", "2048M", "-netdev", "user,id=net0,hostfwd=tcp:127.0.0.1:2222-:22"]


def fp(argv=ARGV, port=2222, version="7.2.22", files=(), seed="iid-1") -> dict:
    return savedstate.fingerprint(list(argv), {"ssh": port}, version, list(files), seed)


def test_the_ssh_port_is_not_part_of_the_guest() -> None:
    moved = [a.replace("2222", "2400") for a in ARGV]
    assert savedstate.difference(fp(), fp(argv=moved, port=2400)) is None


def test_windows_qmp_and_agent_ports_are_not_part_of_the_guest_either() -> None:
    def argv(qmp: int, qga: int) -> list[str]:
        return [
            "-qmp", f"tcp:127.0.0.1:{qmp},server=on,wait=off",
            "-chardev", f"socket,id=qga0,host=127.0.0.1,port={qga},server=on,wait=off",
            "-m", "2048M",
        ]  # fmt: skip

    old = savedstate.normalised_argv(argv(5000, 5001), {"qmp": 5000, "qga": 5001})
    new = savedstate.normalised_argv(argv(6000, 6001), {"qmp": 6000, "qga": 6001})
    assert old == new and "tcp:127.0.0.1:<qmp>,server=on,wait=off" in old
    # A number that merely contains the port is left alone.
    assert savedstate.normalised_argv(["-m", "50001M"], {"qga": 5000}) == ["-m", "50001M"]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"version": "8.2.0"}, "QEMU changed (7.2.22 -> 8.2.0)"),
        ({"seed": "iid-2"}, "the cloud-init seed changed"),
        ({"argv": [*ARGV[:2], "4096M", *ARGV[3:]]}, "hardware changed (2048M / 4096M)"),
        ({"argv": [*ARGV, "-device", "virtio-rng-pci"]}, "hardware changed"),
    ],
)
def test_any_other_change_refuses_the_state_and_says_which(change: dict, says: str) -> None:
    why = savedstate.difference(fp(), fp(**change))
    assert why is not None and says in why


def test_a_changed_base_image_file_refuses_the_state(tmp_path: Path) -> None:
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"old")
    saved = fp(files=[kernel])
    assert savedstate.difference(saved, fp(files=[kernel])) is None
    kernel.write_bytes(b"a new kernel")
    assert savedstate.difference(saved, fp(files=[kernel])) == "the base image changed"
    kernel.unlink()
    assert savedstate.difference(saved, fp(files=[kernel])) == "the base image changed"


def _saved(tmp_path: Path) -> StateDir:
    """A state dir as `save` leaves it: disk, state file, record."""
    state = StateDir(tmp_path)
    state.disk.write_bytes(b"disk")
    state.saved_state.write_bytes(b"x" * 100)
    meta = {
        "format": savedstate.FORMAT,
        "state_bytes": 100,
        "disk": savedstate.file_identity(state.disk),
        "efi_vars": None,  # direct kernel boot: no firmware vars
        "fingerprint": fp(),
        "record": {},
    }
    state.saved_meta.write_text(json.dumps(meta))
    return state


def test_a_whole_state_with_its_disk_unchanged_is_usable(tmp_path: Path) -> None:
    meta, why = savedstate.read(_saved(tmp_path))
    assert why is None and meta is not None and meta["state_bytes"] == 100


def test_no_saved_state_is_no_reason_to_warn(tmp_path: Path) -> None:
    assert savedstate.read(StateDir(tmp_path)) == (None, None)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda s: s.disk.write_bytes(b"the disk moved on"), "the disk changed"),
        (lambda s: s.efi_vars.write_bytes(b"boot entries"), "firmware's variables changed"),
        (lambda s: s.saved_state.write_bytes(b"x" * 10), "truncated"),
        (lambda s: s.saved_state.unlink(), "the state file is missing"),
        (lambda s: s.saved_meta.write_text("{not json"), "unreadable"),
        (lambda s: s.saved_meta.write_text('{"format": 99}'), "another version"),
        (lambda s: s.saved_meta.unlink(), "a state file without its record"),
    ],
)
def test_a_damaged_state_or_a_moved_on_disk_is_refused(tmp_path: Path, damage, says) -> None:
    state = _saved(tmp_path)
    damage(state)
    meta, why = savedstate.read(state)
    assert meta is None and why is not None and says in why


def test_discard_removes_every_part_and_says_whether_there_was_one(tmp_path: Path) -> None:
    state = _saved(tmp_path)
    (tmp_path / "saved-state.partial").write_bytes(b"half")
    (tmp_path / "saved-state.json.partial").write_text("{")
    assert savedstate.discard(state) is True
    assert not list(tmp_path.glob("saved-state*"))
    assert savedstate.discard(state) is False
    assert state.disk.exists()


def test_qemu_version_is_read_from_the_binary() -> None:
    import shutil

    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"  # CI installs it
    assert qemu_mod.version(qemu)[0].isdigit()
    assert qemu_mod.version("/nonexistent/qemu") == ""  # cannot be told


@pytest.mark.parametrize(
    ("version", "write", "uri"),
    [
        ("7.2.22", True, "exec:cat > '/s d/saved-state'"),
        ("7.2.22", False, "exec:cat '/s d/saved-state'"),
        ("8.1.5", False, "exec:cat '/s d/saved-state'"),
        ("8.2.0", True, "file:/s d/saved-state"),  # QEMU for Windows has no cat
        ("10.0.2", False, "file:/s d/saved-state"),
    ],
)
def test_migration_uri_is_a_file_from_qemu_8_2(version: str, write: bool, uri: str) -> None:
    assert savedstate.migration_uri(Path("/s d/saved-state"), version, write) == uri
