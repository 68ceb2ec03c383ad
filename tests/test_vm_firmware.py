"""UEFI firmware really starts from our command line: QEMU accepts the pflash pair and
the per-VM vars file, and the firmware reaches its boot manager under TCG (an empty
disk: no OS boots). Skipped only where the QEMU binary or the firmware package is not
installed; with both there, any error is a failure."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks.vm import firmware, ports, process, qemu

pytestmark = pytest.mark.vm


# The Debian packages (.ci/setup installs both); elsewhere, any known firmware file.
FIRMWARE_PACKAGES = {"arm64": "qemu-efi-aarch64", "amd64": "ovmf"}


def firmware_installed(arch: str, qemu_bin: str) -> bool:
    """Whether this host has UEFI firmware for `arch`, told without the code under test's
    verdict: dpkg's word where there is dpkg, else a look at the known file names."""
    if shutil.which("dpkg-query"):
        out = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", FIRMWARE_PACKAGES[arch]],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return out.stdout.endswith("install ok installed")
    qemu_path = shutil.which(qemu_bin)
    return any(
        Path(code).is_file() for code, _, _ in firmware.candidates(arch, sys.platform, qemu_path)
    )


@pytest.mark.parametrize(
    ("arch", "setting", "qemu_bin"),
    [("arm64", "auto", "qemu-system-aarch64"), ("amd64", "uefi", "qemu-system-x86_64")],
)
def test_uefi_firmware_reaches_its_boot_manager(tmp_path: Path, arch, setting, qemu_bin) -> None:
    if not shutil.which(qemu_bin):
        pytest.skip(f"{qemu_bin} is not installed")
    if not firmware_installed(arch, qemu_bin):
        pytest.skip(f"no UEFI firmware for {arch} installed ({FIRMWARE_PACKAGES[arch]})")
    # From here on any error is ours: the firmware is there to be found and used.
    vars_path = tmp_path / "efi-vars.fd"
    flash = firmware.pflash_for(arch, setting, False, qemu_bin, tmp_path, vars_path)
    assert flash is not None and flash.vars == vars_path
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1G"], check=True)
    (tmp_path / "seed.iso").write_bytes(bytes(1 << 20))
    spec = qemu.QemuSpec(
        qemu_bin=qemu_bin, name="fwcheck", arch=arch, accel="tcg", mem_mb=512, cpus=1,
        disk=disk, seed=tmp_path / "seed.iso", ssh_port=ports.free_port(),
        pidfile=tmp_path / "qemu.pid", serial_log=tmp_path / "serial.log",
        qmp_socket=tmp_path / "qmp.sock", fs_mode="none", firmware=flash,
    )  # fmt: skip
    pid = process.start(spec)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            log = spec.serial_log.read_bytes() if spec.serial_log.exists() else b""
            if b"BdsDxe" in log:  # the boot manager: firmware up, devices enumerated
                break
            assert process.is_ours(pid, str(tmp_path)), log.decode(errors="replace")
            time.sleep(0.5)
        else:
            pytest.fail(f"no boot manager line in 90 s: {log[-500:]!r}")
    finally:
        process.quit_now(pid, spec.qmp_socket, str(tmp_path))
    # The vars file is this VM's from now on: a second start keeps what the firmware wrote.
    written = vars_path.read_bytes()
    assert firmware.pflash_for(arch, setting, False, qemu_bin, tmp_path, vars_path) == flash
    assert vars_path.read_bytes() == written
