"""vm.down saves the guest, vm.up resumes it (issue 9): on the shared VM, under TCG."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from vmfixtures import TIMINGS, VmEnv

pytestmark = [pytest.mark.vm, pytest.mark.restarts_vm]

# The guest's date and its boot id; a file in the guest user's home (the guest's own disk).
PROBE = "date +%s.%N; cat /proc/sys/kernel/random/boot_id; cat ~/resume-marker 2>&1"


def _probe(vm: VmEnv) -> tuple[float, str, str, float, float]:
    before = time.time()
    out = vm.invoke("vm.ssh", "--", "sh", "-c", PROBE)
    after = time.time()
    assert out.returncode == 0, out.stderr
    guest_time, boot_id, marker = out.stdout.splitlines()[:3]
    return float(guest_time), boot_id, marker, before, after


def _saved_files(vm: VmEnv) -> list[str]:
    return sorted(p.name for p in vm.state_dir.glob("saved-state*"))


def _down_saving(vm: VmEnv) -> subprocess.CompletedProcess:
    started = time.monotonic()
    out = vm.invoke("vm.down")
    TIMINGS["vm.down saving the guest (s)"] = round(time.monotonic() - started, 2)
    assert out.returncode == 0, out.stderr
    assert f"VM {vm.env['QEMU_VM_NAME']} saved (" in out.stdout, out.stdout
    assert _saved_files(vm) == ["saved-state", "saved-state.json"]
    assert vm.invoke("vm.status").returncode == 3
    return out


def test_down_saves_and_up_resumes_the_same_guest(vm: VmEnv) -> None:
    vm.invoke("vm.ssh", "--", "sh", "-c", "echo kept > ~/resume-marker; sync")
    _, boot_id, _, _, _ = _probe(vm)
    _down_saving(vm)

    started = time.monotonic()
    out = vm.invoke("vm.up")
    TIMINGS["cold vm.up resuming (s)"] = round(time.monotonic() - started, 2)
    assert out.returncode == 0, out.stderr
    assert f"VM {vm.env['QEMU_VM_NAME']} resumed after" in out.stderr, out.stderr
    # Used once: gone before the guest ran on.
    assert _saved_files(vm) == []
    record = json.loads((vm.state_dir / "runtime.json").read_text())
    assert record["resumed"] is True

    guest_time, boot_id_after, marker, before, after = _probe(vm)
    assert boot_id_after == boot_id  # not a boot: the same kernel runs on
    assert marker == "kept"  # the guest's own disk kept what was written to it
    # The clock stood still while saved; it was set from the host's on resume.
    assert before - 1.0 <= guest_time <= after + 1.0, (before, guest_time, after)

    # The shares came back: mounted again, /work writable both ways, /app read-only.
    script = (
        "mount | grep -c ' type 9p '; echo from-guest > /work/resumed.txt; "
        "cat /work/from-host.txt; touch /app/nope 2>&1 | grep -c Read-only"
    )
    (vm.work_dir / "from-host.txt").write_text("from-host\n")
    out = vm.invoke("vm.ssh", "--", "sh", "-c", script)
    assert out.stdout.split() == ["3", "from-host", "1"], out.stdout + out.stderr
    assert (vm.work_dir / "resumed.txt").read_text() == "from-guest\n"


def test_a_corrupt_saved_state_falls_back_to_a_boot(vm: VmEnv) -> None:
    _, boot_id, _, _, _ = _probe(vm)
    _down_saving(vm)
    state = vm.state_dir / "saved-state"
    size = state.stat().st_size
    # Same size (the record's check passes), nonsense inside: QEMU refuses to load it.
    with open(state, "r+b") as f:
        f.write(b"\0garbage" * 4096)
    assert state.stat().st_size == size

    out = vm.invoke("vm.up")
    assert out.returncode == 0, out.stderr
    assert f"resuming {vm.env['QEMU_VM_NAME']} failed (" in out.stderr, out.stderr
    assert "booting it instead" in out.stderr and "is up after" in out.stderr
    assert _saved_files(vm) == []
    _, boot_id_after, marker, _, _ = _probe(vm)
    assert boot_id_after != boot_id
    assert marker == "kept"  # a boot of the same disk


def test_a_changed_seed_boots_and_cloud_init_applies_it(vm: VmEnv) -> None:
    _, boot_id, _, _, _ = _probe(vm)
    _down_saving(vm)
    # The project's own cloud-init templates, one line added: a new seed.
    packaged = Path(__file__).resolve().parents[1] / "patchbay_vm_tasks" / "cloud-init"
    local = vm.project / "cloud-init"
    local.mkdir(exist_ok=True)
    for template in packaged.glob("*.yaml"):
        (local / template.name).write_text(template.read_text())
    user_data = local / "user-data.yaml"
    user_data.write_text(
        user_data.read_text().replace("runcmd:\n", "runcmd:\n  - touch /etc/new-seed-ran\n", 1)
    )
    assert "new-seed-ran" in user_data.read_text()

    out = vm.invoke("vm.up")
    assert out.returncode == 0, out.stderr
    assert "not resuming" in out.stderr and "the cloud-init seed changed" in out.stderr
    assert "is up after" in out.stderr
    _, boot_id_after, _, _, _ = _probe(vm)
    assert boot_id_after != boot_id
    # runcmd runs in cloud-init's final stage, which may still be running after vm.up.
    wait = vm.invoke("vm.ssh", "--", "cloud-init", "status", "--wait")
    # 2: done, with warnings (cloud-init's "recoverable errors").
    assert wait.returncode in (0, 2) and "status: done" in wait.stdout, wait.stdout + wait.stderr
    assert vm.invoke("vm.ssh", "--", "test", "-e", "/etc/new-seed-ran").returncode == 0


def test_down_poweroff_does_not_save(vm: VmEnv) -> None:
    out = vm.invoke("vm.down", "--poweroff")
    assert out.returncode == 0, out.stderr
    assert "not saved: asked to power off" in out.stdout and "powered down" in out.stdout
    assert _saved_files(vm) == []
