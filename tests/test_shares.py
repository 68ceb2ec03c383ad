"""Shares: virtiofsd flavours (SPEC 9.3), the fs mode choice, the guest mount script;
the SSH port choice; a lost guest connection."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from patchbay_vm_tasks.errors import VmUnavailable
from patchbay_vm_tasks.vm import guest, lifecycle, ports, provision, shares
from patchbay_vm_tasks.vm.qemu import Share

RUST_HELP = "Usage: virtiofsd [OPTIONS]\n  --shared-dir <SHARED_DIR>\n  --readonly\n"
C_HELP = "usage: virtiofsd [options]\n    -o source=PATH             shared directory tree\n"


def fake_daemon(tmp_path: Path, name: str, help_text: str) -> str:
    path = tmp_path / name
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{help_text}EOF\n")
    path.chmod(0o755)
    return str(path)


def test_detects_the_rust_flavour(tmp_path) -> None:
    d = shares.detect_flavour(fake_daemon(tmp_path, "rust", RUST_HELP))
    assert d and d.flavour == "rust" and d.readonly_flag


def test_detects_the_c_flavour(tmp_path) -> None:
    d = shares.detect_flavour(fake_daemon(tmp_path, "c", C_HELP))
    assert d and d.flavour == "c"


def test_something_else_is_not_a_virtiofsd(tmp_path) -> None:
    assert shares.detect_flavour(fake_daemon(tmp_path, "x", "hello\n")) is None
    assert shares.detect_flavour(str(tmp_path / "missing")) is None


def test_flag_sets_per_flavour() -> None:
    share = Share("app", Path("/proj"), True, socket=Path("/s/virtiofs-app.sock"))
    rust = shares.virtiofsd_argv(shares.Virtiofsd("/v", "rust", readonly_flag=True), share)
    assert rust == [
        "/v", "--socket-path=/s/virtiofs-app.sock", "--shared-dir=/proj",
        "--cache=auto", "--sandbox=none", "--readonly",
    ]  # fmt: skip
    c = shares.virtiofsd_argv(shares.Virtiofsd("/v", "c"), share)
    assert c == [
        "/v", "--socket-path=/s/virtiofs-app.sock",
        "-o", "source=/proj", "-o", "cache=auto", "-o", "sandbox=chroot",
    ]  # fmt: skip
    assert not any(a.startswith("--shared-dir") for a in c)


@pytest.mark.parametrize(
    ("requested", "help_text", "expected"),
    [
        ("auto", RUST_HELP, "9p"),  # resumable; virtiofs only when asked
        ("auto", "hello\n", "9p"),
        ("9p", RUST_HELP, "9p"),
        ("virtiofs", RUST_HELP, "virtiofs"),
    ],
)
def test_choose_fs_mode(tmp_path, requested, help_text, expected) -> None:
    daemon = fake_daemon(tmp_path, "d", help_text)
    mode, found, why = shares.choose_fs_mode(requested, daemon)
    assert mode == expected
    assert (found is not None) == (expected == "virtiofs")
    assert why


def test_virtiofs_asked_but_unusable_is_an_error(tmp_path) -> None:
    with pytest.raises(VmUnavailable, match="QEMU_VM_FS=virtiofs, but"):
        shares.choose_fs_mode("virtiofs", fake_daemon(tmp_path, "d", "hello\n"))


@pytest.mark.skipif(os.geteuid() != 0, reason="the C virtiofsd is only usable as root")
def test_the_c_flavour_is_used_as_root(tmp_path) -> None:
    mode, found, _ = shares.choose_fs_mode("virtiofs", fake_daemon(tmp_path, "c", C_HELP))
    assert mode == "virtiofs" and found and found.flavour == "c"


@pytest.mark.parametrize("fs_mode", ["virtiofs", "9p"])
def test_mount_script_is_valid_shell_and_mounts_each_share(fs_mode) -> None:
    mounts = [
        ("/app", Path("/p"), "ro"),
        ("/target", Path("/p/t"), "ro"),
        ("/work", Path("/w"), "rw"),
    ]
    script = shares.mount_script(mounts, fs_mode, "dev")
    subprocess.run(["sh", "-n", "-c", script], check=True)
    fstype = "9p" if fs_mode == "9p" else "virtiofs"
    assert f"mount -t {fstype} -o ro" in script and "app /app" in script
    assert "target /target" in script and "work /work" in script
    assert script.count("pb_mounted /") == 3
    if fs_mode == "9p":
        assert "trans=virtio" in script


def test_free_default_port_is_kept_and_busy_one_replaced() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        busy = held.getsockname()[1]
        other = ports.pick_ssh_port(busy, explicit=False)
        assert other != busy and ports.port_is_free(other)
        with pytest.raises(VmUnavailable, match=f"SSH port {busy} .* is in use"):
            ports.pick_ssh_port(busy, explicit=True)
    assert ports.pick_ssh_port(other, explicit=True) == other


def test_a_lost_guest_is_a_transport_error_not_a_failed_command(tmp_path) -> None:
    # Nothing listens on port 9: the same as a VM that died under a running task.
    (tmp_path / "kh").write_text("")
    conn = guest.connection(9, "dev", tmp_path / "nokey", tmp_path / "kh")
    with pytest.raises(VmUnavailable) as e:
        guest.run_argv(conn, ["true"])
    assert "lost the connection to the guest" in str(e.value)
    assert e.value.exit_code == 69


def test_status_text() -> None:
    info = {
        "name": "vm", "version": "1.2.3", "running": True, "pid": 42, "ssh_port": 2222,
        "ssh_user": "dev", "arch": "arm64", "accel": "tcg", "fs_mode": "9p",
        "state_dir": "/p/.qemu-vm/vm",
        "mounts": [{"guest": "/app", "host": "/p", "access": "ro"}],
    }  # fmt: skip
    text = lifecycle.format_status(info)
    assert "state:     running (PID 42)" in text
    assert "dev@127.0.0.1 port 2222" in text and "fs mode:   9p" in text
    assert "/app     <- /p (ro)" in text
    assert "arch:      arm64" in text and "version:   patchbay-vm-tasks 1.2.3" in text
    stopped = lifecycle.format_status(info | {"running": False, "pid": None})
    assert "not running" in stopped and "port" not in stopped
    # With the resolved settings (as `status` gives them): what an `up` would use.
    asked = {"cpus": 2, "cpus_explicit": True, "mem_mb": 1024, "arch": "amd64", "ssh_port": 2222}
    asked |= {"ssh_port_explicit": False, "image_url": "debian:trixie"}
    stopped = lifecycle.format_status(info | {"running": False, "pid": None, "settings": asked})
    assert "would use: 2 CPUs, 1024 MB, amd64, ssh port 2222 (default)" in stopped
    assert "image:     debian:trixie" in stopped


def test_9p_caches_pages_and_writes_them_back_within_a_second() -> None:
    assert shares.mount_options("9p", "ro")[1].endswith("cache=mmap")
    assert shares.mount_options("9p", "rw")[1].endswith("cache=mmap")
    assert shares.mount_options("virtiofs", "rw") == ("virtiofs", "rw")
    script = shares.mount_script([("/work", Path("/w"), "rw")], "9p", "dev")
    assert "vm.dirty_writeback_centisecs = 100" in script
    assert "echo 100 > /proc/sys/vm/dirty_writeback_centisecs" in script
    assert "sysctl" not in shares.mount_script([("/work", Path("/w"), "rw")], "virtiofs", "dev")


def test_mount_script_keeps_the_mounts_in_the_guests_fstab() -> None:
    mounts = [("/app", Path("/p"), "ro"), ("/work", Path("/w"), "rw")]
    script = shares.mount_script(mounts, "virtiofs", "dev")
    assert shares.fstab_script(
        ["app /app virtiofs ro,nofail,x-patchbay-vm 0 0",
         "work /work virtiofs rw,nofail,x-patchbay-vm 0 0"]
    ) in script  # fmt: skip


ROOT = "/dev/vda / ext4 defaults 0 1"
OURS = ["app /app 9p ro,nofail,x-patchbay-vm 0 0", "work /work 9p rw,nofail,x-patchbay-vm 0 0"]


@pytest.mark.parametrize(
    ("before", "lines", "after"),
    [
        (f"{ROOT}\n", OURS, f"{ROOT}\n{OURS[0]}\n{OURS[1]}\n"),
        # Lines of an earlier version (other options) are replaced, never duplicated.
        (f"{ROOT}\nwork /work 9p rw,old,x-patchbay-vm 0 0\n# kept\n", OURS,
         f"{ROOT}\n# kept\n{OURS[0]}\n{OURS[1]}\n"),
        (f"{ROOT}", OURS, f"{ROOT}\n{OURS[0]}\n{OURS[1]}\n"),  # no newline at the end
        (None, OURS, f"{OURS[0]}\n{OURS[1]}\n"),  # no fstab at all
        (f"{ROOT}\n{OURS[1]}\n", [], f"{ROOT}\n"),  # fs none: ours dropped
        ("", [], ""),
    ],
)  # fmt: skip
def test_fstab_script_makes_our_lines_exactly_the_given_ones(tmp_path, before, lines, after):
    fstab = tmp_path / "fstab"
    if before is not None:
        fstab.write_text(before)
    subprocess.run(["sh", "-euc", shares.fstab_script(lines, str(fstab))], check=True)
    assert fstab.read_text() == after
    assert not (tmp_path / "fstab.patchbay").exists()


def test_fstab_script_leaves_a_right_fstab_alone(tmp_path) -> None:
    fstab = tmp_path / "fstab"
    fstab.write_text(f"{ROOT}\n{OURS[0]}\n{OURS[1]}\n")
    inode = fstab.stat().st_ino
    subprocess.run(["sh", "-euc", shares.fstab_script(OURS, str(fstab))], check=True)
    assert fstab.stat().st_ino == inode  # not replaced: nothing to change


def test_mount_points_are_told_from_the_mount_table_with_builtins() -> None:
    script = shares._MOUNTED + "\npb_mounted /proc && echo proc; pb_mounted /pro || echo pro"
    out = subprocess.run(["sh", "-euc", script], capture_output=True, text=True, check=True)
    assert out.stdout == "proc\npro\n"


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (None, "sch_netem\n"),
        ("9p\n", "9p\nsch_netem\n"),
        ("9p\nsch_netem\n", "9p\nsch_netem\n"),
        ("sch_netem", "sch_netem"),  # no newline at the end: still there
        ("sch_netem_x\n", "sch_netem_x\nsch_netem\n"),
    ],
)
def test_ensure_line_appends_only_a_missing_line(tmp_path, before, after) -> None:
    conf = tmp_path / "modules.conf"
    if before is not None:
        conf.write_text(before)
    script = provision.ensure_line_script(str(conf), "sch_netem")
    subprocess.run(["sh", "-euc", script], check=True)
    assert conf.read_text() == after


TABLE = """/dev/vda / ext4 rw,relatime 0 0
app /app 9p ro,relatime,cache=mmap,access=client,msize=524288,trans=virtio 0 0
work /work\\040dir 9p rw,relatime,cache=mmap,msize=524288,trans=virtio 0 0
"""


@pytest.mark.parametrize(
    ("mounts", "all_there"),
    [
        ([("/app", Path("/p"), "ro"), ("/work dir", Path("/w"), "rw")], True),
        ([("/app", Path("/p"), "ro"), ("/target", Path("/t"), "ro")], False),
        ([("/ap", Path("/p"), "ro")], False),  # a prefix is not a mount point
        ([], True),
    ],
)
def test_warm_up_reads_the_guests_mount_table(mounts, all_there) -> None:
    assert shares.all_mounted(TABLE, mounts) is all_there


# --- fs mode none: no shares, guest-local folders ---------------------------------

NONE_MOUNTS = [
    ("/app", Path("/p"), "ro"),
    ("/target", Path("/p/t"), "ro"),
    ("/work", Path("/w"), "rw"),
]


def test_fs_mode_none_is_chosen_without_looking_for_a_virtiofsd(capsys) -> None:
    mode, daemon, why = shares.choose_fs_mode("none", "/nonexistent/virtiofsd")
    assert (mode, daemon) == ("none", None)
    assert "QEMU_VM_FS=none" in why
    assert "copied to and from the guest, not shared" in capsys.readouterr().err


def test_fs_mode_none_has_no_shares_in_the_qemu_argv(tmp_path) -> None:
    assert shares.make_shares(NONE_MOUNTS, "none", tmp_path) == []


def test_fs_mode_none_script_makes_the_folders_for_the_guest_user() -> None:
    script = shares.mount_script(NONE_MOUNTS, "none", "dev")
    subprocess.run(["sh", "-n", "-c", script], check=True)
    assert "mount " not in script and "modprobe" not in script
    for folder in ("/app", "/target", "/work"):
        assert f"mkdir -p {folder}; chown dev: {folder}" in script
    # Share lines of an earlier boot are dropped from fstab, none are added.
    assert shares.fstab_script([]) in script and "nofail" not in script
    assert f"touch {shares.COPIED_MARK}" in script


def test_fs_mode_setting_accepts_none() -> None:
    from patchbay_vm_tasks import settings

    assert settings.FsMode("none") is settings.FsMode.NONE
    assert settings.FS_MODES == ("auto", "virtiofs", "9p", "none")
    s = settings.resolve(env={"QEMU_VM_FS": "none"}, project_dir=Path("/tmp"))
    assert s.fs_mode == "none"
