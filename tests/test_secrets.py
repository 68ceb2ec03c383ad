"""Secrets on disk (issue 19): the state dir is 0700, the seed ISO (which holds the guest's
host private key in clear) and the private keys 0600, created so, and never written
through a link or a leftover temp file. Modes are checked with stat: the tests run as
root, which os.access would let read anything."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from patchbay_vm_tasks import files
from patchbay_vm_tasks.vm import cloudinit, keys
from patchbay_vm_tasks.vm.state import StateDir


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def open_umask() -> object:
    """umask 0: modes come from the code alone, not from a strict umask."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.fixture
def creations(monkeypatch) -> list[tuple[str, int]]:
    """(name, mode) of every temp file at the moment it is created."""
    seen: list[tuple[str, int]] = []
    real = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        fd, name = real(*args, **kwargs)
        seen.append((Path(name).name, stat.S_IMODE(os.fstat(fd).st_mode)))
        return fd, name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    return seen


def test_private_key_is_0600_from_its_creation(tmp_path, open_umask, creations) -> None:
    key = keys.ensure_keypair(tmp_path / "id_ed25519", "c")
    assert mode(key.private_path) == 0o600
    assert mode(tmp_path / "id_ed25519.pub") == 0o644
    assert creations and all(m == 0o600 for _n, m in creations)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["id_ed25519", "id_ed25519.pub"]


def test_a_leftover_0644_temp_file_does_not_make_the_key_readable(tmp_path, open_umask) -> None:
    leftover = tmp_path / "id_ed25519.tmp"
    leftover.write_text("old")
    os.chmod(leftover, 0o644)
    key = keys.ensure_keypair(tmp_path / "id_ed25519", "c")
    assert mode(key.private_path) == 0o600
    assert "PRIVATE KEY" in key.private_text
    assert leftover.read_text() == "old"  # not ours to write


def test_a_link_at_the_temp_name_or_the_key_is_not_written_through(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    state = tmp_path / "state"
    state.mkdir()
    os.symlink(outside / "victim", state / "id_ed25519.tmp")
    os.symlink(outside / "new-file", state / "id_ed25519")  # dangling: a key is made
    key = keys.ensure_keypair(state / "id_ed25519", "c")
    assert not key.private_path.is_symlink() and mode(key.private_path) == 0o600
    assert (outside / "victim").read_text() == "keep"
    assert sorted(os.listdir(outside)) == ["victim"]


def test_known_hosts_replaces_a_link(tmp_path) -> None:
    outside = tmp_path / "victim"
    outside.write_text("keep")
    os.symlink(outside, tmp_path / "known_hosts")
    host = keys.ensure_keypair(tmp_path / "hk", "h")
    keys.write_known_hosts(tmp_path / "known_hosts", 2222, host)
    assert not (tmp_path / "known_hosts").is_symlink()
    assert outside.read_text() == "keep"


SEED = {"user-data": "#cloud-config\n{}\n", "meta-data": "{}\n", "network-config": "{}\n"}


def test_seed_iso_is_0600_from_its_creation(tmp_path, open_umask, creations) -> None:
    iso = tmp_path / "seed.iso"
    cloudinit.write_seed_iso(SEED, iso)
    assert mode(iso) == 0o600
    assert [m for _n, m in creations] == [0o600]
    assert cloudinit.read_seed_iso(iso) == SEED


def test_an_old_0644_seed_or_a_link_is_replaced(tmp_path, open_umask) -> None:
    iso = tmp_path / "seed.iso"
    iso.write_text("old")
    os.chmod(iso, 0o644)
    cloudinit.write_seed_iso(SEED, iso)
    assert mode(iso) == 0o600
    victim = tmp_path / "victim"
    victim.write_text("keep")
    iso.unlink()
    os.symlink(victim, iso)
    os.symlink(victim, tmp_path / "seed.iso.tmp")  # the old fixed temp name
    cloudinit.write_seed_iso(SEED, iso)
    assert not iso.is_symlink() and mode(iso) == 0o600
    assert victim.read_text() == "keep"


def test_state_dir_is_made_0700(tmp_path, open_umask) -> None:
    state = StateDir(tmp_path / "project" / ".qemu-vm" / "dev")
    with state.lock(timeout=5):
        pass
    assert mode(state.root) == 0o700
    assert mode(state.root.parent) == 0o700


def test_an_older_open_state_dir_and_seed_are_tightened(tmp_path, open_umask) -> None:
    root = tmp_path / ".qemu-vm" / "dev"
    root.mkdir(parents=True, mode=0o755)
    os.chmod(root, 0o755)
    os.chmod(root.parent, 0o755)
    (root / "seed.iso").write_text("seed")
    os.chmod(root / "seed.iso", 0o644)
    (root / "disk.qcow2").write_text("disk")
    os.chmod(root / "disk.qcow2", 0o644)
    StateDir(root).ensure()
    assert mode(root) == 0o700 and mode(root.parent) == 0o700
    assert mode(root / "seed.iso") == 0o600
    assert mode(root / "disk.qcow2") == 0o644  # behind a 0700 dir; QEMU's own file


def test_write_atomic_gives_the_mode_through_the_descriptor(tmp_path, open_umask) -> None:
    files.write_atomic(tmp_path / "secret", b"s", 0o600)
    files.write_atomic(tmp_path / "public", b"p", 0o644)
    assert (mode(tmp_path / "secret"), mode(tmp_path / "public")) == (0o600, 0o644)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["public", "secret"]
