"""VM tests of the host-side tools of issue 8: `vm.ssh-config` used by OpenSSH with
strict host key checking, `vm.cp` both ways, `vm.list`, down-then-up on the same port."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from vmfixtures import DEFAULT_SSH_PORT, VmEnv, hold_port, port_kept_busy

pytestmark = pytest.mark.vm


def ssh_config_file(vm: VmEnv, tmp_path: Path) -> Path:
    out = vm.invoke("vm.ssh-config")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Host {vm.env['QEMU_VM_NAME']}\n")
    # The Rust-style command prints the same block.
    assert vm.cli("ssh-config").stdout == out.stdout
    path = tmp_path / "ssh_config"
    path.write_text(out.stdout)
    return path


def openssh(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


@pytest.mark.skipif(not shutil.which("ssh"), reason="no OpenSSH client")
def test_ssh_config_works_with_ssh_and_scp_strictly(vm: VmEnv, tmp_path: Path) -> None:
    config = ssh_config_file(vm, tmp_path)
    name = vm.env["QEMU_VM_NAME"]
    out = openssh("ssh", "-F", str(config), "-o", "BatchMode=yes", name, "true")
    assert out.returncode == 0, out.stderr
    local = tmp_path / "to-guest.txt"
    local.write_text("over scp\n")
    out = openssh("scp", "-F", str(config), "-o", "BatchMode=yes", str(local), f"{name}:/tmp/")
    assert out.returncode == 0, out.stderr
    out = openssh("ssh", "-F", str(config), "-o", "BatchMode=yes", name, "cat /tmp/to-guest.txt")
    assert out.stdout == "over scp\n"
    # Strict: the same block with a known_hosts that pins another key is refused.
    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    port = vm.status()["ssh_port"]
    wrong = tmp_path / "wrong_known_hosts"
    key_type, key_b64 = (tmp_path / "other.pub").read_text().split()[:2]
    wrong.write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    state_known_hosts = str(vm.state_dir / "known_hosts")
    bad = tmp_path / "bad_config"
    bad.write_text(config.read_text().replace(state_known_hosts, str(wrong)))
    assert str(wrong) in bad.read_text()
    out = openssh("ssh", "-F", str(bad), "-o", "BatchMode=yes", name, "true")
    assert out.returncode == 255


@pytest.mark.skipif(not shutil.which("rsync"), reason="no rsync")
def test_rsync_over_the_ssh_config(vm: VmEnv, tmp_path: Path) -> None:
    config = ssh_config_file(vm, tmp_path)
    src = tmp_path / "tree"
    (src / "a").mkdir(parents=True)
    (src / "a" / "f.txt").write_text("rsynced\n")
    name = vm.env["QEMU_VM_NAME"]
    out = openssh("rsync", "-a", "-e", f"ssh -F {config}", f"{src}/", f"{name}:/tmp/rs/")
    assert out.returncode == 0, out.stderr
    assert vm.invoke("vm.ssh", "--", "cat", "/tmp/rs/a/f.txt").stdout == "rsynced\n"


def test_cp_both_ways(vm: VmEnv, tmp_path: Path) -> None:
    data = bytes(range(256)) * 4000  # binary, about 1 MB
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    out = vm.invoke("vm.cp", str(src), "guest:/tmp/")  # into a folder: keeps the name
    assert out.returncode == 0, out.stderr
    assert "copied" in out.stdout and "guest:/tmp/blob.bin" in out.stdout
    out = vm.invoke("vm.cp", str(src), "guest:renamed.bin")  # relative: the user's home
    assert out.returncode == 0, out.stderr
    sums = vm.invoke("vm.ssh", "--", "sha256sum", "/tmp/blob.bin", "renamed.bin").stdout
    assert len({line.split()[0] for line in sums.splitlines()}) == 1
    back = tmp_path / "back"
    back.mkdir()
    out = vm.invoke("vm.cp", "guest:/tmp/blob.bin", str(back))
    assert out.returncode == 0, out.stderr
    assert (back / "blob.bin").read_bytes() == data
    out = vm.cli("cp", "guest:renamed.bin", str(tmp_path / "again.bin"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "again.bin").read_bytes() == data
    # Refused, with the reason: a guest folder, a missing guest file, a host folder.
    out = vm.invoke("vm.cp", "guest:/etc", str(tmp_path))
    assert out.returncode == 2 and "is a directory" in out.stderr
    out = vm.invoke("vm.cp", "guest:/nonexistent.txt", str(tmp_path))
    assert out.returncode == 2 and "does not exist in the guest" in out.stderr
    out = vm.invoke("vm.cp", str(back), "guest:/tmp/")
    assert out.returncode == 2 and "is a directory" in out.stderr
    out = vm.invoke("vm.cp", str(src), "guest:/etc/")
    assert out.returncode == 1 and "permission denied" in out.stderr


def test_list_shows_the_running_vm(vm: VmEnv) -> None:
    out = vm.invoke("vm.list", "--json")
    assert out.returncode == 0, out.stderr
    mine = [v for v in json.loads(out.stdout) if v["name"] == vm.env["QEMU_VM_NAME"]]
    assert mine and mine[0]["state"] == "running"
    assert mine[0]["ssh_port"] == vm.status()["ssh_port"]


def test_guest_timeout_wrapper_and_no_stale_apt_proxy(vm: VmEnv) -> None:
    # test.run --timeout wraps each binary in coreutils' timeout in the guest.
    # 124: `timeout` cut the sleep off (run to its end, it would exit 0); the task's own
    # timeout guards against a hang only.
    out = vm.invoke("vm.ssh", "--", "timeout", "--kill-after=5", "1s", "sleep", "300", timeout=120)
    assert out.returncode == 124, out.stderr
    # Booted without a proxy set: no apt proxy is pinned in the guest.
    out = vm.invoke("vm.ssh", "--", "test", "-e", "/etc/apt/apt.conf.d/90patchbay-proxy")
    assert out.returncode == 1


@pytest.mark.restarts_vm
def test_down_then_up_at_once_keeps_the_port(vm: VmEnv) -> None:
    port = vm.status()["ssh_port"]
    assert vm.invoke("vm.down").returncode == 0
    # At once, with the port asked for explicitly: the TIME_WAIT sockets of the last
    # session must not make it "in use".
    out = vm.invoke("vm.up", QEMU_VM_SSH_PORT=str(port))
    assert out.returncode == 0, out.stderr
    assert vm.status()["ssh_port"] == port
    assert vm.invoke("vm.down").returncode == 0
    if port == DEFAULT_SSH_PORT:
        # The last session must have had another port for the fallback to come back to.
        probe = hold_port(0)
        assert probe is not None
        port = probe.getsockname()[1]
        probe.close()
        out = vm.invoke("vm.up", QEMU_VM_SSH_PORT=str(port))
        assert out.returncode == 0, out.stderr
        assert vm.invoke("vm.down").returncode == 0
    # With the default port taken (by us, or by whoever holds it): the last session's port.
    with port_kept_busy(DEFAULT_SSH_PORT):
        out = vm.invoke("vm.up")
    assert out.returncode == 0, out.stderr
    assert vm.status()["ssh_port"] == port
    assert f"SSH port {DEFAULT_SSH_PORT} is in use; using {port}, as last time" in out.stderr
