"""Copying instead of sharing (QEMU_VM_FS=none): which files move (pure), and push/pull
against an SFTP client that serves a local folder as the guest's /."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from types import SimpleNamespace

import paramiko
import pytest

from patchbay_vm_tasks.settings import FsMode
from patchbay_vm_tasks.sim import inputs, staging
from patchbay_vm_tasks.vm import sync
from patchbay_vm_tasks.vm.record import VmRecord
from patchbay_vm_tasks.vm.sync import FileState


class LocalSftp:
    """The parts of paramiko's SFTPClient that sync.py uses, on `root` (the guest's /).

    Counts the files written, so tests see what moved."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.puts: list[str] = []

    def _p(self, path: str) -> Path:
        assert path.startswith("/"), path
        return self.root / path.lstrip("/")

    def listdir_attr(self, path: str) -> list[paramiko.SFTPAttributes]:
        out = []
        for name in sorted(os.listdir(self._p(path))):
            a = paramiko.SFTPAttributes.from_stat(os.lstat(self._p(path) / name), name)
            a.st_mtime = int(a.st_mtime)  # SFTP v3: whole seconds
            out.append(a)
        return out

    def listdir(self, path: str) -> list[str]:
        return sorted(os.listdir(self._p(path)))

    def open(self, path: str, mode: str = "r"):
        return open(self._p(path), mode + "b")

    def put(self, local: str, remote: str, confirm: bool = True) -> None:
        shutil.copyfile(local, self._p(remote))
        self.puts.append(remote)

    def get(self, remote: str, local: str) -> None:
        shutil.copyfile(self._p(remote), local)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._p(path), mode)

    def utime(self, path: str, times: tuple[int, int]) -> None:
        os.utime(self._p(path), times)

    def posix_rename(self, old: str, new: str) -> None:
        os.replace(self._p(old), self._p(new))

    def mkdir(self, path: str) -> None:
        os.mkdir(self._p(path))

    def remove(self, path: str) -> None:
        os.unlink(self._p(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))


class FakeConn:
    def __init__(self, root: Path) -> None:
        self.client = LocalSftp(root)
        self.commands: list[str] = []

    def sftp(self) -> LocalSftp:
        return self.client

    def run(self, command: str, **_kwargs) -> SimpleNamespace:
        self.commands.append(command)  # chown / rm as root in the guest: noted, not run
        return SimpleNamespace(exited=0, stdout="", stderr="")


# --- pure parts ---------------------------------------------------------------------


def test_plan_push_sends_new_changed_and_not_as_sent() -> None:
    entry = [10, 5_500_000_000, 0o755]
    as_sent = FileState(10, 5, 0o755)
    host = {"same": entry, "new": entry, "edited": [11, 6_000_000_000, 0o755], "gone": entry}
    manifest = {"same": entry, "edited": entry, "gone": entry}
    remote = {"same": as_sent, "new": None, "edited": as_sent, "gone": None}
    assert sync.plan_push(host, manifest, remote) == ["edited", "gone", "new"]
    # Same size, edited within the same second: only the manifest's ns tell.
    assert sync.plan_push({"f": [10, 5_600_000_000, 0o755]}, {"f": entry}, {"f": as_sent}) == ["f"]
    # The guest's copy lost its executable bit (or was edited there): sent again.
    assert sync.plan_push(host, manifest, {**remote, "same": FileState(10, 5, 0o644)}) == [
        "edited",
        "gone",
        "new",
        "same",
    ]


def test_plan_pull_fetches_what_differs() -> None:
    remote = {"a": FileState(1, 1, 0o644), "b": FileState(2, 2, 0o644), "c": FileState(3, 3, 0)}
    local = {"a": FileState(1, 1, 0o600), "b": FileState(2, 9, 0o644), "c": None}
    assert sync.plan_pull(remote, local) == ["b", "c"]


def test_stale_entries_are_the_ones_gone_from_the_host() -> None:
    assert sync.stale_entries({"x": [], "y": []}, lambda rel: rel == "x") == ["y"]


def test_split_guest_paths_by_root() -> None:
    roots = {"/app": Path("/p"), "/target": Path("/t"), "/work": Path("/w")}
    out = sync.split_guest_paths(
        [
            "/work/.patchbay-bin/patchbay",
            "/app/sims/a.toml",
            "/app/sims/topos/t.toml",
            "/target/x86_64-unknown-linux-musl/release/examples/ping",
            "/work/binaries/tool",
            "/work/binaries/tool",
        ],
        roots,
    )
    assert out == {
        "/work": [".patchbay-bin/patchbay", "binaries/tool"],
        "/app": ["sims/a.toml", "sims/topos/t.toml"],
        "/target": ["x86_64-unknown-linux-musl/release/examples/ping"],
    }
    with pytest.raises(sync.TaskError, match="lies under none"):
        sync.split_guest_paths(["/etc/passwd"], roots)
    with pytest.raises(sync.TaskError):
        sync.split_guest_paths(["/work/../etc/passwd"], roots)


def test_binary_arg_paths_and_folder_chain() -> None:
    args = ["a:path:/work/binaries/a", "b:path:/target/t/release/b", "c:fetch:http://x"]
    assert staging.binary_arg_paths(args) == ["/work/binaries/a", "/target/t/release/b"]
    assert sync.folder_chain(["a/b/c", "a/d", "e"]) == ["a", "a/b"]


def test_new_runs_are_made_during_the_run_or_latest() -> None:
    before = {"sim-250101-000000"}
    after = before | {"sim-250101-000100", "sim-250101-000100-1"}
    assert staging.new_runs(before, after, "sim-250101-000000") == sorted(after)
    assert staging.new_runs(after, after, None) == []


def test_copies_files_only_without_shares() -> None:
    assert sync.copies_files(VmRecord(fs_mode=FsMode.NONE))
    assert not sync.copies_files(VmRecord(fs_mode=FsMode.NINEP))


def test_sim_inputs_are_the_files_the_reader_reads(tmp_path: Path) -> None:
    (tmp_path / "sims" / "topos").mkdir(parents=True)
    (tmp_path / "sims" / "topos" / "t.toml").write_text('[[router]]\nname = "r"\n')
    (tmp_path / "sims" / "base.toml").write_text("")
    (tmp_path / "sims" / "unrelated.toml").write_text("")
    sim = tmp_path / "sims" / "a.toml"
    sim.write_text('[[extends]]\nfile = "base.toml"\n[sim]\nname = "a"\ntopology = "t"\n')
    found = inputs.sim_inputs([sim], tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "sims/a.toml",
        "sims/base.toml",
        "sims/topos/t.toml",
    ]


# --- push and pull on a local "guest" -----------------------------------------------


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path, FakeConn]:
    host = tmp_path / "host"
    guest = tmp_path / "guest"
    (guest / "work").mkdir(parents=True)
    (host / ".patchbay-bin").mkdir(parents=True)
    (host / "binaries" / "tests").mkdir(parents=True)
    os.chmod(host / "binaries" / "tests", 0o777)
    runner = host / ".patchbay-bin" / "patchbay"
    runner.write_bytes(b"#!/bin/sh\n" * 100)
    runner.chmod(0o755)
    (host / "binaries" / "tests" / "net-1").write_bytes(b"ELF")
    (host / "binaries" / "tests" / "net-1").chmod(0o755)
    return host, guest, FakeConn(guest)


RELS = [".patchbay-bin/patchbay", "binaries/tests/net-1"]


def test_push_copies_modes_and_then_only_what_changed(world) -> None:
    host, guest, conn = world
    first = sync.push(conn, host, "/work", RELS)
    assert (first.files, first.unchanged) == (2, 0)
    assert first.bytes == 1000 + 3
    sent = guest / "work" / ".patchbay-bin" / "patchbay"
    assert sent.read_bytes() == (host / ".patchbay-bin" / "patchbay").read_bytes()
    assert stat.S_IMODE(sent.stat().st_mode) == 0o755
    assert stat.S_IMODE((guest / "work" / "binaries" / "tests").stat().st_mode) == 0o777
    assert not list((guest / "work").rglob("*.patchbay-part"))

    again = sync.push(conn, host, "/work", RELS)
    assert (again.files, again.unchanged) == (0, 2)

    (host / "binaries" / "tests" / "net-1").write_bytes(b"ELF2")
    third = sync.push(conn, host, "/work", RELS)
    assert (third.files, third.unchanged) == (1, 1)
    assert conn.client.puts[-1].endswith("net-1.patchbay-part")


def test_push_removes_what_the_host_dropped_and_repairs_the_guest(world) -> None:
    host, guest, conn = world
    sync.push(conn, host, "/work", RELS)
    # A new build: the old binary is gone from the host, a new one is staged.
    (host / "binaries" / "tests" / "net-1").unlink()
    (host / "binaries" / "tests" / "net-2").write_bytes(b"ELF")
    out = sync.push(conn, host, "/work", [".patchbay-bin/patchbay", "binaries/tests/net-2"])
    assert (out.files, out.removed) == (1, 1)
    assert not (guest / "work" / "binaries" / "tests" / "net-1").exists()
    # Something in the guest removed a file we sent: the manifest alone does not hide it.
    (guest / "work" / ".patchbay-bin" / "patchbay").unlink()
    fixed = sync.push(conn, host, "/work", [".patchbay-bin/patchbay", "binaries/tests/net-2"])
    assert fixed.files == 1


def test_pull_brings_a_run_home_then_only_changes(world) -> None:
    host, guest, conn = world
    run = guest / "work" / "sim-250101-000000"
    (run / "ping").mkdir(parents=True)
    (run / "ping" / "sim.json").write_text('{"status": "ok"}')
    (run / "manifest.json").write_text("{}")
    os.symlink("ping/sim.json", run / "link")
    out = sync.pull(conn, "/work/sim-250101-000000", host / "sim-250101-000000")
    assert (out.files, out.failed) == (2, [])
    assert (host / "sim-250101-000000" / "ping" / "sim.json").read_text() == '{"status": "ok"}'
    assert os.readlink(host / "sim-250101-000000" / "link") == "ping/sim.json"
    again = sync.pull(conn, "/work/sim-250101-000000", host / "sim-250101-000000")
    assert (again.files, again.unchanged) == (0, 2)


def test_pull_names_the_files_it_could_not_read(world, monkeypatch) -> None:
    host, guest, conn = world
    run = guest / "work" / "sim-250101-000000"
    run.mkdir()
    (run / "secret").write_text("x")
    (run / "ok").write_text("y")
    real_get = conn.client.get

    def get(remote: str, local: str) -> None:
        if remote.endswith("secret"):  # a key the runner wrote 0600 as root
            raise PermissionError(13, "Permission denied")
        real_get(remote, local)

    monkeypatch.setattr(conn.client, "get", get)
    out = sync.pull(conn, "/work/sim-250101-000000", host / "r")
    assert out.files == 1 and (host / "r" / "ok").read_text() == "y"
    assert out.failed == ["/work/sim-250101-000000/secret: Permission denied"]
    assert not list((host / "r").glob("*.patchbay-part"))


def test_sims_own_path_binaries_are_copied_when_under_a_root(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "tool").write_bytes(b"x")
    sim = tmp_path / "a.toml"
    sim.write_text(
        '[sim]\nname = "a"\n'
        '[[binary]]\nname = "tool"\npath = "/app/bin/tool"\n'
        '[[binary]]\nname = "gone"\npath = "/app/bin/gone"\n'
        '[[binary]]\nname = "sys"\npath = "/usr/bin/true"\n'
        '[[binary]]\nname = "built"\npath = "target:release/built"\n'
    )
    roots = {"/app": tmp_path, "/target": tmp_path / "target", "/work": tmp_path / "w"}
    assert staging.sim_binary_paths([sim], roots) == ["/app/bin/tool"]
    (tmp_path / "target" / "release").mkdir(parents=True)
    (tmp_path / "target" / "release" / "built").write_bytes(b"y")
    assert staging.sim_binary_paths([sim], roots) == ["/app/bin/tool", "/target/release/built"]


def test_overrides_are_staged_with_their_mtime_and_not_rewritten(tmp_path: Path) -> None:
    from patchbay_vm_tasks.sim import binaries

    src = tmp_path / "tool"
    src.write_bytes(b"x")
    os.utime(src, ns=(1_000_000_000, 1_000_000_000))
    spec = binaries.BinarySpec(name="tool", mode="path", value=str(src))
    work = tmp_path / "work"
    binaries.stage_override(spec, work, "t", tmp_path / "target", tmp_path)
    dest = work / "binaries" / "tool"
    assert dest.stat().st_mtime_ns == 1_000_000_000 and os.access(dest, os.X_OK)
    inode = dest.stat().st_ino
    binaries.stage_override(spec, work, "t", tmp_path / "target", tmp_path)
    assert dest.stat().st_ino == inode  # not written again


def test_bring_runs_home_pulls_the_new_runs_and_points_latest(world) -> None:
    host, guest, conn = world
    work = guest / "work"
    for name in ("sim-250101-000000", "sim-250101-000100", "sim-250101-000200"):
        (work / name / "ping").mkdir(parents=True)
        (work / name / "ping" / "sim.json").write_text(name)
    os.symlink("sim-250101-000200", work / "latest")
    settings = SimpleNamespace(ssh_user="dev", work_dir=host, keep_runs=2)
    before = {"sim-250101-000000", "sim-250101-000100"}
    done = staging.bring_runs_home(conn, settings, before)
    assert done.files == 1
    assert (host / "latest" / "ping" / "sim.json").read_text() == "sim-250101-000200"
    assert not (host / "sim-250101-000100").exists()  # older runs are not fetched
    assert "chown -R dev: -- /work/sim-250101-000200" in conn.commands[0]
    # keep_runs 2: the oldest guest run goes, as the host prunes its own.
    assert "rm -rf -- /work/sim-250101-000000" in conn.commands[1]
