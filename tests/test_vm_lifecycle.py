"""vm.* against a real QEMU guest under TCG on this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from vmfixtures import FAKE_QEMU, TIMINGS, VmEnv, hold_port, make_project, vm_env

pytestmark = pytest.mark.vm


def test_cold_up_says_which_accel_and_why_and_reports_port_fallback(vm_session: VmEnv) -> None:
    out = vm_session.cold_up
    assert f"VM {vm_session.env['QEMU_VM_NAME']} is up after" in out.stderr
    # Asked for "auto": one line says what was chosen and why, whatever this machine has
    # (SPEC 9.1: here /dev/kvm exists and cannot run a guest).
    (line,) = [x for x in out.stderr.splitlines() if x.startswith("accel ")]
    chosen, why = line.removeprefix("accel ").split(": ", 1)
    assert chosen in ("kvm", "tcg") and why, line
    if chosen == "tcg":
        if os.path.exists("/dev/kvm"):
            assert "kvm" in why, line  # passed over, and why
        else:
            assert why == "no hardware accelerator on this host"
    if "guest printed nothing in 30 s: going on under TCG" in out.stderr:
        assert chosen != "tcg"  # a stall at the real start, remembered; TCG from then on
        chosen = "tcg"
    assert f"(accel {chosen}," in out.stderr
    if vm_session.extra["port_was_held"]:
        assert "SSH port 2222 is in use; using" in out.stderr
    info = vm_session.status()
    assert info["running"] and info["accel"] == chosen
    assert info["ssh_port"] != 2222 or not vm_session.extra["port_was_held"]
    # 9p unless asked: a 9p guest can be saved by vm.down and resumed by vm.up.
    assert info["fs_mode"] == "9p"


def test_warm_up_reuses_the_running_vm(vm: VmEnv) -> None:
    before = vm.status()
    boot_id = vm.invoke("vm.ssh", "--", "cat", "/proc/sys/kernel/random/boot_id").stdout
    started = time.monotonic()
    out = vm.invoke("vm.up")
    TIMINGS["warm vm.up (s)"] = round(time.monotonic() - started, 2)
    assert out.returncode == 0, out.stderr
    assert "is running" in out.stdout
    after = vm.status()
    assert after["pid"] == before["pid"]
    # No reboot: the guest kernel's boot id is unchanged.
    assert vm.invoke("vm.ssh", "--", "cat", "/proc/sys/kernel/random/boot_id").stdout == boot_id
    assert len(boot_id.strip()) == 36


def test_status_text_and_json(vm: VmEnv) -> None:
    text = vm.invoke("vm.status")
    assert text.returncode == 0
    assert "state:     running" in text.stdout
    assert "/work    <- " + str(vm.work_dir) in text.stdout
    out = vm.invoke("vm.status", "--json")
    assert out.returncode == 0
    info = json.loads(out.stdout)
    for key in ("name", "running", "pid", "ssh_port", "ssh_user", "accel", "fs_mode", "state_dir"):
        assert key in info
    assert info["ssh_user"] == "dev"
    assert info["state_dir"] == str(vm.state_dir)
    assert info["mounts"] == [
        {"guest": "/app", "host": str(vm.project), "access": "ro"},
        {"guest": "/target", "host": str(vm.project / "target"), "access": "ro"},
        {"guest": "/work", "host": str(vm.work_dir), "access": "rw"},
    ]


def test_ssh_passes_exit_code_and_quotes_arguments(vm: VmEnv) -> None:
    out = vm.invoke("vm.ssh", "--", "sh", "-c", "exit 7")
    assert out.returncode == 7
    out = vm.invoke("vm.ssh", "--", "printf", "[%s]\\n", "two words", "$HOME", "it's")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["[two words]", "[$HOME]", "[it's]"]
    # The Rust tool's spelling works too, through the same tasks.
    out = vm.cli("ssh", "--", "sh", "-c", "exit 5")
    assert out.returncode == 5


def test_guest_provisioned(vm: VmEnv) -> None:
    script = (
        "set -e; for c in ip nft iptables iperf3 ping brctl jq curl; do command -v $c; done; "
        "lsmod | grep -q sch_netem; cat /proc/sys/net/ipv4/ip_forward; "
        "unshare --user --map-root-user --net true && echo userns-ok"
    )
    out = vm.invoke("vm.ssh", "--", "env", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "userns-ok" in out.stdout
    assert "\n1\n" in out.stdout


def test_sshd_takes_keys_only_and_the_boot_orders_what_needs_the_network(vm: VmEnv) -> None:
    script = (
        "sudo sshd -T | grep -E '^(usepam|passwordauthentication|kbdinteractiveauthentication) '; "
        "systemctl show -p After --value cloud-init-network.service | tr ' ' '\\n' "
        "| grep -c wait-online || true; "
        "systemctl show -p Before --value systemd-networkd-wait-online.service | tr ' ' '\\n' "
        "| grep -x network-online.target; "
        "grep -c 'sshd_config.d/\\*.conf' /etc/ssh/sshd_config"
    )
    out = vm.invoke("vm.ssh", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "usepam no",
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        # The network stage reads a local seed: it does not wait for DHCP; network-online
        # (what user-data's packages and a user's units wait for) still does.
        "0",
        "network-online.target",
        "1",
    ]


def test_work_is_shared_read_write_and_app_read_only(vm: VmEnv) -> None:
    marker = f"written-{os.getpid()}-{time.time_ns()}"
    out = vm.invoke("vm.ssh", "--", "sh", "-c", f"echo {marker} > /work/from-guest.txt")
    assert out.returncode == 0, out.stderr
    assert (vm.work_dir / "from-guest.txt").read_text().strip() == marker
    out = vm.invoke("vm.ssh", "--", "sudo", "sh", "-c", "echo root > /work/from-root.txt")
    assert out.returncode == 0, out.stderr
    assert (vm.work_dir / "from-root.txt").read_text().strip() == "root"
    # The host's files are visible in /app, and it cannot be written, not even by root.
    out = vm.invoke("vm.ssh", "--", "sh", "-c", "cat /app/tasks.py >/dev/null && sudo touch /app/x")
    assert out.returncode != 0
    assert "Read-only file system" in out.stderr + out.stdout
    assert not (vm.project / "x").exists()


def test_up_with_other_paths_is_refused(vm: VmEnv) -> None:
    out = vm.invoke("vm.up", QEMU_VM_WORK_DIR="elsewhere")
    assert out.returncode == 2
    assert "--recreate" in out.stderr
    assert "/work: running with" in out.stderr
    assert not (vm.project / "elsewhere").exists()
    # Another fs mode asked for explicitly: refused the same way, nothing restarted.
    pid = vm.status()["pid"]
    out = vm.invoke("vm.up", QEMU_VM_FS="none")
    assert out.returncode == 2 and "fs mode 9p" in out.stderr and "--recreate" in out.stderr
    assert vm.status()["pid"] == pid


def test_explicit_busy_port_is_an_error(tmp_path) -> None:
    project = make_project(tmp_path / "p")
    blocker = hold_port(0)
    port = blocker.getsockname()[1]
    try:
        env = VmEnv(project, vm_env(project, name="busyport", QEMU_VM_SSH_PORT=str(port)))
        out = env.invoke("vm.up")
    finally:
        blocker.close()
    assert out.returncode == 69
    assert f"SSH port {port} (QEMU_VM_SSH_PORT) is in use" in out.stderr
    assert not (env.state_dir / "qemu.pid").exists()


def test_forced_kvm_that_dies_fails_fast_with_the_serial_log(tmp_path) -> None:
    # A forced accelerator is used as asked, even where it cannot run a guest; when its
    # QEMU dies, the wait must notice at once instead of probing SSH until the timeout
    # (SPEC 9.9). A stand-in QEMU whose "KVM" dies 2 s after it started, on any machine.
    project = make_project(tmp_path / "p")
    env = VmEnv(project, vm_env(project, name="forcedkvm", QEMU_VM_ACCEL="kvm"))
    started = time.monotonic()
    out = env.invoke("vm.up", timeout=300, QEMU_VM_QEMU_BIN=str(FAKE_QEMU), FAKE_QEMU_KVM="dies")
    TIMINGS["forced-kvm failure reported after (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 69, out.stderr
    assert "accel kvm: as QEMU_VM_ACCEL asks" in out.stderr
    # Our image stops at its gate first; another would be waiting for SSH.
    assert "QEMU exited before the guest reached the gate" in out.stderr
    assert "printed nothing" not in out.stderr  # no TCG fallback when asked for kvm
    assert not list(env.state_dir.glob("*.pid"))
    assert not list(env.state_dir.glob("*.sock"))


@pytest.mark.restarts_vm
def test_cleanup_after_qemu_is_killed(vm: VmEnv) -> None:
    info = vm.status()
    # 9p is QEMU's own: no helper processes. (Killing virtiofsd helpers is checked in
    # test_vm_tasks.py; a virtiofs guest's helpers, in the virtiofs test below.)
    assert info["fs_mode"] == "9p"
    assert json.loads((vm.state_dir / "runtime.json").read_text())["helpers"] == []
    os.kill(info["pid"], signal.SIGKILL)
    wait_gone(info["pid"])
    status = vm.invoke("vm.status")
    assert status.returncode == 3
    out = vm.invoke("vm.cleanup")
    assert out.returncode == 0, out.stderr
    assert "removed" in out.stdout and "qemu.pid" in out.stdout
    assert not (vm.state_dir / "qemu.pid").exists()
    assert not list(vm.state_dir.glob("virtiofs-*.sock"))
    again = vm.invoke("vm.cleanup")
    assert "nothing stale" in again.stdout


@pytest.mark.restarts_vm
def test_recreate_boots_a_fresh_disk(vm: VmEnv) -> None:
    before = vm.status()
    vm.invoke("vm.ssh", "--", "touch", "/home/dev/old-disk-marker")
    # Saved first: --recreate drops the saved guest with the disk.
    assert "saved (" in vm.invoke("vm.down").stdout
    assert (vm.state_dir / "saved-state").exists()
    out = vm.invoke("vm.up", "--recreate")
    assert out.returncode == 0, out.stderr
    assert "resumed" not in out.stderr and "is up after" in out.stderr
    assert not list(vm.state_dir.glob("saved-state*"))
    after = vm.status()
    assert after["running"] and after["pid"] != before["pid"]
    gone = vm.invoke("vm.ssh", "--", "test", "-e", "/home/dev/old-disk-marker")
    assert gone.returncode == 1


@pytest.mark.restarts_vm
def test_down_then_status(vm: VmEnv) -> None:
    pid = vm.status()["pid"]
    assert vm.invoke("vm.ssh", "--", "true").returncode == 0  # keeps a connection
    control = vm.state_dir / "ssh.ctl"
    assert control.is_socket()
    out = vm.invoke("vm.down")
    assert out.returncode == 0, out.stderr
    # The kept connection went first, its process with it.
    assert not control.exists()
    masters = subprocess.run(["pgrep", "-f", str(control)], capture_output=True, text=True)
    assert not masters.stdout.strip(), masters.stdout
    assert "saved (" in out.stdout and "the next vm.up resumes it" in out.stdout
    status = vm.invoke("vm.status", "--json")
    assert status.returncode == 3
    assert json.loads(status.stdout)["running"] is False
    assert not _alive(pid)
    assert not (vm.state_dir / "qemu.pid").exists()
    again = vm.invoke("vm.down")
    assert again.returncode == 0 and "not running" in again.stdout
    ssh = vm.invoke("vm.ssh", "--", "true")
    assert ssh.returncode == 69 and "vm.up" in ssh.stderr


def _alive(pid: int) -> bool:
    try:
        return bool(open(f"/proc/{pid}/cmdline").read())  # empty for a zombie
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 60) -> None:
    """Until `pid` has ended (a zombie counts); the timeout guards against a hang only."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still runs"
        time.sleep(0.05)


def test_two_concurrent_ups_boot_one_virtiofs_vm_that_down_cannot_save(tmp_path) -> None:
    # A second VM, booted because this test is about booting: with virtiofs (the shared
    # VM has 9p, the default), and raced by two `vm.up` at once (SPEC 9.12).
    project = make_project(tmp_path / "p")
    env = VmEnv(project, vm_env(project, name="vfs", QEMU_VM_FS="virtiofs"))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "invoke", "vm.up"],
            cwd=project, env=env.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, stdin=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]  # fmt: skip
    try:
        outs = [p.communicate(timeout=900) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outs
        booted = [err for _out, err in outs if "is up after" in err]
        reused = [out for out, _err in outs if "is running" in out]
        assert len(booted) == 1 and len(reused) == 1, outs
        info = env.status()
        assert info["fs_mode"] == "virtiofs"
        # One virtiofsd per share, each running while the guest does.
        helpers = json.loads((env.state_dir / "runtime.json").read_text())["helpers"]
        assert len(helpers) == 3 and all(_alive(pid) for pid in helpers), helpers
        script = (
            "mount | grep -c ' type virtiofs '; echo hi > /work/ninep.txt; "
            "sudo touch /app/nope 2>&1; cat /app/tasks.py | head -1"
        )
        out = env.invoke("vm.ssh", "--", "sh", "-c", script)
        assert out.stdout.splitlines()[0] == "3", out.stdout + out.stderr
        assert "Read-only file system" in out.stdout
        assert (env.work_dir / "ninep.txt").read_text() == "hi\n"
        assert not (project / "nope").exists()
        # vhost-user-fs cannot be migrated: the guest is shut down, and says why.
        down = env.invoke("vm.down", timeout=120)
        assert "not saved: its shares are virtiofs" in down.stdout, down.stdout
        assert not list(env.state_dir.glob("saved-state*"))
        assert [pid for pid in helpers if _alive(pid)] == []  # down stopped its helpers
        assert not [*env.state_dir.glob("virtiofs-*.sock"), *env.state_dir.glob("virtiofsd-*.pid")]
    finally:
        env.invoke("vm.down", timeout=120)


def test_ssh_without_a_command_opens_a_shell(vm: VmEnv) -> None:
    # A real terminal: the task hands over to `ssh -t` with the pinned key.
    import pty

    pid, fd = pty.fork()
    if pid == 0:  # child: the task, on the pty
        os.chdir(vm.project)
        os.execve(sys.executable, [sys.executable, "-m", "invoke", "vm.ssh"], vm.env)
    os.write(fd, b"echo marker-$((6*7)); exit 4\n")
    output = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # the pty closes when the shell exits
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert b"marker-42" in output, output
    assert os.waitstatus_to_exitcode(status) == 4


def test_unreachable_image_server_falls_back_to_the_debian_build(vm_session, capsys) -> None:
    # The official image cannot be had here; with mmdebstrap present, vm.up builds the
    # guest instead and says so. The session VM's build is in the cache by now.
    from patchbay_vm_tasks import settings
    from patchbay_vm_tasks.vm import images

    cache = settings.resolve(env={}, project_dir=vm_session.project).image_cache_dir
    base = images.ensure_base_image(
        "http://127.0.0.1:9/debian-13-generic-amd64.qcow2", cache, "amd64", "http://unused"
    )
    assert base.kernel and base.kernel.exists() and base.disk.exists()
    assert base.disk.parent.name.startswith("debian-trixie-amd64-")
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9/SHA512SUMS: Connection refused" in err
    # Nothing is built: the message says the cached build is used (issue 8).
    assert "using the cached debian:trixie guest image instead" in err
    assert "building" not in err
