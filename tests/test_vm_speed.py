"""Issue 9 behaviour on a real TCG guest: a warm `vm.up` without SSH, mounts the guest
keeps, Ctrl-C during a boot. Timings are the benchmark's (`invoke bench.run`), not
asserted here."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from vmfixtures import VmEnv, make_project, vm_env

from patchbay_vm_tasks import qemu

pytestmark = pytest.mark.vm

ACCEPTED = "sudo journalctl --no-pager -o cat | grep -c 'Accepted publickey for' || true"


def _ssh_logins(vm: VmEnv) -> int:
    """sshd's accepted logins so far, this query's own included when it made the kept
    connection (`vm.ssh` keeps one, so later queries add none)."""
    out = vm.invoke("vm.ssh", "--", "sh", "-c", ACCEPTED)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


def test_warm_up_opens_no_ssh_session(vm: VmEnv) -> None:
    record = json.loads((vm.state_dir / "runtime.json").read_text())
    assert record["guest_agent"] is True, record
    before = _ssh_logins(vm)
    for _ in range(3):
        out = vm.invoke("vm.up")
        assert out.returncode == 0, out.stderr
        assert "is running" in out.stdout
    # None: the three ups asked the guest agent, and the count went over the
    # connection `vm.ssh` keeps.
    assert _ssh_logins(vm) == before


def test_ssh_keeps_one_connection_across_calls(vm: VmEnv) -> None:
    before = _ssh_logins(vm)
    assert (vm.state_dir / "ssh.ctl").is_socket()
    for code in (0, 3, 0):
        out = vm.invoke("vm.ssh", "--", "sh", "-c", f"echo through; exit {code}")
        assert (out.returncode, out.stdout) == (code, "through\n"), out.stderr
    assert _ssh_logins(vm) == before


def test_the_guest_keeps_its_mounts_in_fstab(vm: VmEnv) -> None:
    out = vm.invoke("vm.ssh", "--", "grep", "-c", "x-patchbay-vm", "/etc/fstab")
    assert out.stdout.strip() == "3", out.stdout + out.stderr


def test_warm_up_remounts_a_share_the_guest_lost(vm: VmEnv) -> None:
    out = vm.invoke("vm.ssh", "--", "sudo", "umount", "/work")
    assert out.returncode == 0, out.stderr
    out = vm.invoke("vm.up")
    assert out.returncode == 0, out.stderr
    out = vm.invoke("vm.ssh", "--", "mountpoint", "-q", "/work")
    assert out.returncode == 0, "vm.up did not mount /work again"


def test_ctrl_c_during_a_boot_stops_everything_at_once(tmp_path) -> None:
    project = make_project(tmp_path / "p")
    env = VmEnv(project, vm_env(project, name="speedint"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "invoke", "vm.up"],
        cwd=project,
        env=env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        # A shell's background job ignores SIGINT, and Python keeps an ignored SIGINT
        # ignored: give the task the terminal's default, as a user's Ctrl-C meets it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        pidfile = env.state_dir / "qemu.pid"
        deadline = time.monotonic() + 300
        while not pidfile.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pidfile.exists(), "QEMU never started"
        qemu_pid = int(pidfile.read_text())
        time.sleep(2)  # well inside the boot
        proc.send_signal(signal.SIGINT)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=60)
        stopped_after = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        env.invoke("vm.down", timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"
    assert not qemu.process_cmdline(qemu_pid), "QEMU still runs"  # a zombie has no cmdline
    leftovers = subprocess.run(
        ["pgrep", "-f", str(env.state_dir)], capture_output=True, text=True
    ).stdout
    assert not leftovers.strip(), f"still running: {leftovers}"
    assert not list(env.state_dir.glob("*.pid"))
