"""The firmware path, booted (issue 11): an image carrying its own bootloaders
(tests/fwimage.py: GPT, ESP with systemd-boot, GRUB for BIOS, ext4 root), built here
from the mirror and downloaded by `vm.up` from a server on 127.0.0.1 (it stands in for
cloud.debian.org, which this machine cannot reach), boots through OVMF with
`QEMU_VM_FIRMWARE=uefi` and no kernel from the host. cloud-init configures it from our
seed, the provisioning installs the network tools it lacks from the Debian mirror
through QEMU's user network, the builtin runner runs a sim on it, and its saved state
resumes with its firmware variables. Powered off, the same disk boots through SeaBIOS,
the x86_64 default.
"""

from __future__ import annotations

import functools
import http.server
import json
import shlex
import tempfile
import time
from pathlib import Path

import fwimage
import pytest
from vmfixtures import TIMINGS, VmEnv, make_project, serving, vm_env

from patchbay_vm_tasks.vm import provision

pytestmark = pytest.mark.vm

NAME = "fwboot"
PORT = "2470"
IMAGE = "fwtest-amd64.qcow2"


@pytest.fixture(scope="module")
def served_image(tmp_path_factory: pytest.TempPathFactory):
    """The test image with its SHA512SUMS, served over HTTP on 127.0.0.1."""
    if missing := fwimage.missing_tools():
        pytest.fail(
            f"building the firmware-shaped image needs {', '.join(missing)} "
            "(apt-get install mmdebstrap e2fsprogs dosfstools mtools fdisk qemu-utils)"
        )
    root = tmp_path_factory.mktemp("fwimage")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=root) as work:
        tree = Path(work) / "tree"
        fwimage.build_tree("amd64", "trixie", tree)
        fwimage.make_disk(tree, "amd64", root / IMAGE)
    fwimage.write_sha512sums(root / IMAGE)
    TIMINGS["firmware-shaped image: build (s)"] = round(time.monotonic() - started, 1)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    with serving(handler) as base:
        yield f"{base}/{IMAGE}"


@pytest.fixture(scope="module")
def fwvm(tmp_path_factory: pytest.TempPathFactory, served_image: str):
    project = make_project(tmp_path_factory.mktemp("fwproject"))
    cache = tmp_path_factory.mktemp("fw-image-cache")
    env = VmEnv(
        project,
        vm_env(
            project,
            name=NAME,
            QEMU_VM_SSH_PORT=PORT,
            QEMU_VM_IMAGE_URL=served_image,
            QEMU_VM_IMAGE_CACHE=str(cache),
            QEMU_VM_FIRMWARE="uefi",
        ),
    )
    started = time.monotonic()
    env.cold_up = env.invoke("vm.up", timeout=1500)
    TIMINGS["firmware-shaped image: first vm.up through OVMF (s)"] = round(
        time.monotonic() - started, 1
    )
    try:
        assert env.cold_up.returncode == 0, env.cold_up.stdout + env.cold_up.stderr
        yield env
    finally:
        env.invoke("vm.destroy", timeout=180)


def _guest(vm: VmEnv, script: str) -> str:
    out = vm.invoke("vm.ssh", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_boots_through_ovmf_with_its_own_bootloader(fwvm: VmEnv) -> None:
    record = json.loads((fwvm.state_dir / "runtime.json").read_text())
    argv = record["qemu_argv"]
    assert "-kernel" not in argv
    assert record["firmware"] and "OVMF" in record["firmware"][0], record["firmware"]
    assert any("if=pflash" in a and "efi-vars.fd" in a for a in argv), argv
    out = _guest(fwvm, "test -d /sys/firmware/efi && echo efi; cat /proc/cmdline; uname -m")
    lines = out.splitlines()
    assert lines[0] == "efi"
    assert "root=/dev/vda2" in lines[1]  # systemd-boot's entry on the ESP, not ours
    assert lines[2] == "x86_64"


def test_cloud_init_and_provisioning_made_it_a_patchbay_guest(fwvm: VmEnv) -> None:
    install = f"Commandline: apt-get install -y -q --no-install-recommends {provision.PACKAGES}"
    out = _guest(
        fwvm,
        "export PATH=/usr/sbin:$PATH; hostname; cloud-init status --long | grep -c 'seed=/dev/'; "
        f"grep -cx {shlex.quote(install)} /var/log/apt/history.log; "
        f"grep -A2 -x {shlex.quote(install)} /var/log/apt/history.log | grep '^Install:'; "
        "for c in iperf3 nft jq; do command -v $c > /dev/null && echo $c; done; "
        "mount | grep -c ' type 9p '; df --output=size -BG / | tail -1",
    )
    lines = out.splitlines()
    assert lines[0] == NAME
    assert lines[1] == "1"  # configured from our seed
    assert lines[2] == "1"  # the image lacked tools: installed once, from the mirror
    # "Install: iperf3:amd64 (3.18-2), libiperf0:amd64 (3.18-2, automatic), ..."
    installed = {item.split(":")[0].strip() for item in lines[3].split(" ", 1)[1].split("),")}
    assert set(fwimage.MISSING) <= installed, lines[3]
    assert lines[4:7] == ["iperf3", "nft", "jq"]
    assert lines[7] == "3"  # /app, /target, /work over 9p
    assert int(lines[8].strip().rstrip("G")) >= 7  # growpart: the root fills the 8 GB disk


def test_builtin_runner_runs_a_sim_with_the_installed_tools(fwvm: VmEnv) -> None:
    out = fwvm.invoke(
        "sim.run", "--patchbay-version", "builtin", "--file", "sims/iperf-baseline.toml",
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("run folder /work/")]
    run = fwvm.work_dir / line.removeprefix("run folder /work/")
    (step,) = json.loads((run / "iperf-baseline" / "results.json").read_text())["steps"]
    assert float(step["down_bytes"]) > 1_000_000  # iperf3 from the mirror, in the lab


def test_saved_state_resumes_with_its_firmware_variables(fwvm: VmEnv) -> None:
    before = _guest(fwvm, "cat /proc/sys/kernel/random/boot_id").strip()
    down = fwvm.invoke("vm.down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert (fwvm.state_dir / "efi-vars.fd").exists()
    up = fwvm.invoke("vm.up", timeout=600)
    assert up.returncode == 0, up.stderr
    assert "resumed after" in up.stderr, up.stderr
    after = _guest(fwvm, "cat /proc/sys/kernel/random/boot_id; test -d /sys/firmware/efi")
    assert after.strip() == before


def test_the_same_disk_boots_through_seabios_by_default(fwvm: VmEnv) -> None:
    # Debian's cloud images boot through SeaBIOS unless UEFI is asked for; the test
    # image carries GRUB for BIOS beside systemd-boot, as they do. The VM's disk,
    # powered off, boots again with the firmware setting left at auto.
    down = fwvm.invoke("vm.down", "--poweroff", timeout=300)
    assert down.returncode == 0, down.stderr
    up = fwvm.invoke("vm.up", timeout=900, QEMU_VM_FIRMWARE="auto")
    assert up.returncode == 0, up.stdout + up.stderr
    record = json.loads((fwvm.state_dir / "runtime.json").read_text())
    assert record["firmware"] is None
    assert not any("if=pflash" in a for a in record["qemu_argv"])
    assert "-kernel" not in record["qemu_argv"]
    out = _guest(fwvm, "test -d /sys/firmware/efi || echo bios; cat /proc/cmdline; uname -m")
    lines = out.splitlines()
    assert lines[0] == "bios"
    assert "BOOT_IMAGE=/boot/vmlinuz-" in lines[1]  # GRUB's own entry (it adds BOOT_IMAGE)
    assert "root=/dev/vda2" in lines[1]
    assert lines[2] == "x86_64"
