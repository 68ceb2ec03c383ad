"""arm64 guests on this x86_64 machine under TCG (issue 11), through `vm.up` as an Apple
Silicon user's would come up, minus HVF: one `debian:trixie` arm64 tree, built here by
mmdebstrap under qemu-user-static (started beside the rest of the suite and kept in
the image cache, see vmfixtures), booted two ways:

- with `-kernel`, as our own builds boot;
- its root filesystem, kernel and initrd made into an image that boots itself (GPT, an
  ESP with systemd-boot, tests/fwimage.py), served from 127.0.0.1 as the cloud image
  would be, booted through AAVMF with a vars file of its own and no kernel from the host.

Each answers `uname -m` with aarch64, shares /work both ways over 9p and runs a small
sim with the builtin runner.
"""

from __future__ import annotations

import functools
import http.server
import json
import time
from pathlib import Path

import fwimage
import pytest
from vmfixtures import ARM64, ARM64_SUITE, TIMINGS, VmEnv, make_project, serving, vm_env

pytestmark = pytest.mark.vm

# A sim that needs only what every guest has (ping, the lab's namespaces and NAT).
PING_SIM = """
[sim]
name = "arm-ping"

[[router]]
name = "dc"

[device.server.eth0]
gateway = "dc"

[device.client.eth0]
gateway = "dc"

[[step]]
action = "run"
id = "ping"
device = "client"
cmd = ["ping", "-c", "2", "-i", "0.3", "$NETSIM_IP_server"]
"""


@pytest.fixture(scope="module")
def arm_build() -> Path:
    """The arm64 build's folder (the session started the build; see vmfixtures)."""
    return ARM64["build"].wait()


def _arm_vm(tmp_path_factory, name: str, **env: str) -> VmEnv:
    # No fixed SSH port: the default's fallback picks a free one (a fixed one was taken
    # by another test's VM once, and the boot was refused).
    project = make_project(tmp_path_factory.mktemp(f"{name}-project"))
    (project / "sims" / "arm-ping.toml").write_text(PING_SIM)
    return VmEnv(project, vm_env(project, name=name, QEMU_VM_ARCH="arm64", **env))


def _up(vm: VmEnv, timing: str) -> None:
    started = time.monotonic()
    vm.cold_up = vm.invoke("vm.up", timeout=1800)
    TIMINGS[timing] = round(time.monotonic() - started, 1)
    assert vm.cold_up.returncode == 0, vm.cold_up.stdout + vm.cold_up.stderr


@pytest.fixture(scope="module")
def kernel_vm(tmp_path_factory: pytest.TempPathFactory, arm_build: Path):
    vm = _arm_vm(
        tmp_path_factory,
        "armk",
        QEMU_VM_IMAGE_URL=f"debian:{ARM64_SUITE}",
        QEMU_VM_IMAGE_CACHE=str(arm_build.parent),
    )
    try:
        _up(vm, "arm64 -kernel: first vm.up under TCG (s)")
        yield vm
    finally:
        vm.invoke("vm.destroy", timeout=180)


@pytest.fixture(scope="module")
def firmware_vm(tmp_path_factory: pytest.TempPathFactory, arm_build: Path):
    served = tmp_path_factory.mktemp("arm64-fwimage")
    image = served / "fwtest-arm64.qcow2"
    fwimage.disk_from_build(arm_build, "arm64", ARM64_SUITE, image)
    fwimage.write_sha512sums(image)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    with serving(handler) as base:
        vm = _arm_vm(
            tmp_path_factory,
            "armfw",
            QEMU_VM_IMAGE_URL=f"{base}/{image.name}",
            QEMU_VM_IMAGE_CACHE=str(tmp_path_factory.mktemp("arm64-fw-cache")),
        )
        try:
            _up(vm, "arm64 UEFI (AAVMF): first vm.up under TCG (s)")
            yield vm
        finally:
            vm.invoke("vm.destroy", timeout=180)


def _guest(vm: VmEnv, script: str) -> list[str]:
    out = vm.invoke("vm.ssh", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.splitlines()


def _argv(vm: VmEnv) -> list[str]:
    return json.loads((vm.state_dir / "runtime.json").read_text())["qemu_argv"]


def _check_aarch64_and_work_share(vm: VmEnv) -> None:
    assert vm.status()["settings"]["arch"] == "arm64"
    vm.work_dir.mkdir(exist_ok=True)
    (vm.work_dir / "from-host.txt").write_text("host to guest\n")
    lines = _guest(
        vm,
        "uname -m; cat /work/from-host.txt; echo guest to host > /work/from-guest.txt; "
        "awk '$2 == \"/work\" {print $3}' /proc/mounts",
    )
    assert lines == ["aarch64", "host to guest", "9p"]
    assert (vm.work_dir / "from-guest.txt").read_text() == "guest to host\n"


def _run_ping_sim(vm: VmEnv) -> None:
    out = vm.invoke(
        "sim.run", "--patchbay-version", "builtin", "--file", "sims/arm-ping.toml", timeout=900
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("run folder /work/")]
    run = vm.work_dir / line.removeprefix("run folder /work/")
    progress = json.loads((run / "progress.json").read_text())
    assert progress["status"] == "done" and progress["ok"] == progress["total"] == 1, progress
    assert json.loads((run / "manifest.json").read_text())["environment"]["arch"] == "aarch64"


def test_kernel_boot_is_aarch64_under_tcg_with_work_shared(kernel_vm: VmEnv) -> None:
    argv = _argv(kernel_vm)
    assert argv[0].endswith("qemu-system-aarch64")
    assert "-kernel" in argv
    assert argv[argv.index("-cpu") + 1] == "max,pauth-impdef=on"
    _check_aarch64_and_work_share(kernel_vm)


def test_kernel_boot_runs_a_sim_with_the_builtin_runner(kernel_vm: VmEnv) -> None:
    _run_ping_sim(kernel_vm)


def test_firmware_boot_through_aavmf_with_its_own_bootloader(firmware_vm: VmEnv) -> None:
    argv = _argv(firmware_vm)
    assert "-kernel" not in argv
    record = json.loads((firmware_vm.state_dir / "runtime.json").read_text())
    assert record["firmware"], record
    assert any("if=pflash" in a and "efi-vars.fd" in a for a in argv), argv
    lines = _guest(firmware_vm, "test -d /sys/firmware/efi && echo efi; cat /proc/cmdline")
    assert lines[0] == "efi"
    assert "root=/dev/vda2" in lines[1]  # systemd-boot's entry on the ESP, not ours
    _check_aarch64_and_work_share(firmware_vm)


def test_firmware_boot_runs_a_sim_and_resumes_with_its_vars(firmware_vm: VmEnv) -> None:
    _run_ping_sim(firmware_vm)
    (boot_id,) = _guest(firmware_vm, "cat /proc/sys/kernel/random/boot_id")
    down = firmware_vm.invoke("vm.down", timeout=300)
    assert down.returncode == 0, down.stderr
    up = firmware_vm.invoke("vm.up", timeout=600)
    assert up.returncode == 0, up.stderr
    assert "resumed after" in up.stderr, up.stderr
    assert _guest(firmware_vm, "cat /proc/sys/kernel/random/boot_id") == [boot_id]
