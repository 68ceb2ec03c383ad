"""New VMs from a template of their image (templates.py), for real: the first new VM
boots to the gate and saves the template there, the next starts from it and is still a
VM of its own (its name, keys, shares, clock, random numbers), a saved state of it
resumes, and a broken template is replaced by a boot.

The templates live in a cache of their own here (the image's build linked into it), so
what exists before each step is known.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from vmfixtures import FAKE_QEMU, TIMINGS, VmEnv, make_project, vm_env

from patchbay_vm_tasks import settings
from patchbay_vm_tasks.vm import accel, images, templates

pytestmark = [pytest.mark.vm]

PROBE = (
    "hostname; date +%s.%N; cat /proc/sys/kernel/random/uuid; "
    "cloud-init status --long | grep -c 'seed=/dev/vdb'; "
    "echo from-guest > /work/from-$(hostname).txt; mount | grep -c ' type 9p '"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, vm_session: VmEnv):
    """A project and an image cache holding only the image (built for the shared VM)."""
    real = settings.resolve(env=vm_session.env, project_dir=vm_session.project)
    build = images._build_dir("trixie", "amd64", real.image_cache_dir)
    assert (build / "build.json").exists()
    cache = tmp_path_factory.mktemp("image-cache")
    (cache / build.name).symlink_to(build)
    project = make_project(tmp_path_factory.mktemp("tproject"))

    def env(name: str) -> VmEnv:
        return VmEnv(project, vm_env(project, name, QEMU_VM_IMAGE_CACHE=str(cache)))

    yield cache, env
    for state in (project / ".qemu-vm").glob("*"):  # whatever a failed test left
        env(state.name).invoke("vm.destroy", timeout=120)


def _templates(cache: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(cache.glob("templates/*/template.json"))]


def _up(vm: VmEnv, label: str):
    started = time.monotonic()
    out = vm.invoke("vm.up")
    TIMINGS[label] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stderr
    return out


def _probe(vm: VmEnv) -> tuple[str, float, str, str, str, float, float]:
    before = time.time()
    out = vm.invoke("vm.ssh", "--", "sh", "-c", PROBE)
    after = time.time()
    assert out.returncode == 0, out.stderr
    name, clock, uuid, seed, mounts = out.stdout.split()
    return name, float(clock), uuid, seed, mounts, before, after


def test_the_first_new_vm_saves_a_template_the_next_starts_from_it(lab) -> None:
    cache, env = lab
    first = env("tpl-a")
    out = _up(first, "new VM, making the image's template (s)")
    assert "from its image's template" not in out.stderr
    (made,) = _templates(cache)
    assert made["state_bytes"] > 0 and made["gate_seconds"] > 0
    name, _, uuid_a, seed, mounts, _, _ = _probe(first)
    assert (name, seed, mounts) == ("tpl-a", "1", "3")

    second = env("tpl-b")
    out = _up(second, "new VM from the image's template (s)")
    assert "VM tpl-b is up after" in out.stderr and "from its image's template" in out.stderr
    assert len(_templates(cache)) == 1  # used, not made again
    record = json.loads((second.state_dir / "runtime.json").read_text())
    assert record["from_template"] is True and record["seed_hotplug"] is False
    name, clock, uuid_b, seed, mounts, before, after = _probe(second)
    # Its own VM: its name and seed (cloud-init ran on it), its shares, a clock set
    # from the host's, random numbers of its own.
    assert (name, seed, mounts) == ("tpl-b", "1", "3")
    assert before - 1.0 <= clock <= after + 1.0, (before, clock, after)
    assert uuid_b != uuid_a
    assert (second.project / ".patchbay-work" / "from-tpl-b.txt").read_text() == "from-guest\n"
    # Its host key is its own: vm.ssh pinned it from its seed and got in (above).
    assert (second.state_dir / "ssh_host_ed25519_key.pub").read_text() != (
        first.state_dir / "ssh_host_ed25519_key.pub"
    ).read_text()

    # Saved and resumed like any VM: the seed is on QEMU's command line by then.
    assert second.invoke("vm.down").returncode == 0
    out = second.invoke("vm.up")
    assert out.returncode == 0 and "VM tpl-b resumed after" in out.stderr, out.stderr
    assert _probe(second)[0] == "tpl-b"
    first.invoke("vm.destroy")
    second.invoke("vm.destroy")


def test_a_broken_template_is_replaced_by_a_boot(lab) -> None:
    cache, env = lab
    (tpl_dir,) = [p.parent for p in cache.glob("templates/*/template.json")]
    tpl = templates.Template(tpl_dir)
    before = json.loads(tpl.meta.read_text())
    # The same size (so it is taken) but not a state QEMU can load.
    size = tpl.state.stat().st_size
    with open(tpl.state, "r+b") as f:
        f.seek(0)
        f.write(b"\0" * min(size, 1 << 20))
    vm = env("tpl-c")
    out = _up(vm, "new VM, the template broken (s)")
    assert "starting tpl-c from its image's template failed" in out.stderr, out.stderr
    assert "booting it" in out.stderr
    assert _probe(vm)[0] == "tpl-c"
    (after,) = _templates(cache)
    assert after["created_at"] > before["created_at"]  # made again at tpl-c's gate
    vm.invoke("vm.destroy")


def test_a_stall_is_remembered_and_the_vm_goes_on_from_the_template(lab) -> None:
    # SPEC 9.1 since kernel 6.18: KVM passes a test boot, then a real guest prints
    # nothing. A stand-in QEMU does that on any machine with /dev/kvm (where KVM is tried).
    if not os.path.exists("/dev/kvm"):
        pytest.skip("KVM is tried only where /dev/kvm exists")
    cache, env = lab
    assert len(_templates(cache)) == 1  # made under TCG by the tests above
    stalling = {"QEMU_VM_QEMU_BIN": str(FAKE_QEMU), "QEMU_VM_ACCEL": "auto"}
    first = env("tpl-d")
    started = time.monotonic()
    out = first.invoke("vm.up", **stalling)
    TIMINGS["new VM after a stall, from the template (s)"] = round(time.monotonic() - started, 1)
    assert out.returncode == 0, out.stderr
    assert "accel kvm: a test boot of the guest ran" in out.stderr
    assert "the kvm guest printed nothing in 30 s: going on under TCG" in out.stderr
    assert "VM tpl-d is up after" in out.stderr and "from its image's template" in out.stderr
    assert "(accel tcg," in out.stderr
    (verdict,) = json.loads((cache / accel.VERDICTS_FILE).read_text()).values()
    assert verdict["accel"] == "kvm" and verdict["qemu"] == str(FAKE_QEMU.resolve())
    assert verdict["why"] == "a real guest printed nothing in 30 s"
    assert first.status()["accel"] == "tcg"
    assert _probe(first)[0] == "tpl-d"

    # The next new VM on this host knows: no test boot, no 30 s wait.
    second = env("tpl-e")
    out = second.invoke("vm.up", **stalling)
    assert out.returncode == 0, out.stderr
    assert "accel tcg: kvm could not run a guest here 0.0 h ago" in out.stderr
    assert "(a real guest printed nothing in 30 s)" in out.stderr  # the reason, recalled
    assert "going on under TCG" not in out.stderr
    assert "from its image's template" in out.stderr
    assert len(_templates(cache)) == 1
    first.invoke("vm.destroy")
    second.invoke("vm.destroy")
