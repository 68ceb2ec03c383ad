"""Choosing the accelerator (accel.py): what QEMU offers, the test boot, remembered stalls.

The test boots run stand-in QEMUs (shell scripts) that print, stay silent or abort, so
every outcome is seen on any machine; the VM tests run the real one.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from patchbay_vm_tasks.settings import Accel
from patchbay_vm_tasks.vm import accel, qemu
from patchbay_vm_tasks.vm.images import BaseImage

ACCEL_HELP = {
    "linux": "Accelerators supported in QEMU binary:\ntcg\nkvm\n",
    "darwin": "Accelerators supported in QEMU binary:\ntcg\nhvf\n",
    "win32": "Accelerators supported in QEMU binary:\r\ntcg\r\nwhpx\r\n",
    "win32-no-whpx": "Accelerators supported in QEMU binary:\ntcg\n",
}

# Stand-ins for QEMU. Each writes its argv (one per line) to $0.argv, answers
# `-accel help` as a Linux QEMU with KVM, then behaves as named.
FAKE = r"""#!/bin/sh
printf '%s\n' "$@" > "$0.argv"
[ "$1 $2" = "-accel help" ] && { printf 'Accelerators supported:\ntcg\nkvm\n'; exit 0; }
[ "$1" = "--version" ] && { echo "QEMU emulator version 9.9.9"; exit 0; }
serial=""; prev=""
for a in "$@"; do [ "$prev" = "-serial" ] && serial="${a#file:}"; prev="$a"; done
"""
BEHAVIOUR = {
    # A kernel that boots: its first line on the serial console at once.
    "prints": 'printf "EDD... ok\\n[ 0.000000] Linux version 6.12\\n" > "$serial"; sleep 30',
    # Real-mode setup code prints, the kernel proper never runs (a nested KVM's stall).
    "stalls": 'printf "Probing EDD (edd=off to disable)... ok\\n" > "$serial"; sleep 30',
    "silent": "sleep 30",
    "aborts": 'echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2; exit 1',
}


def fake_qemu(tmp_path: Path, behaviour: str) -> Path:
    path = tmp_path / f"qemu-{behaviour}"
    path.write_text(FAKE + BEHAVIOUR[behaviour] + "\n")
    path.chmod(0o755)
    return path


def probed(path: Path) -> bool:
    """Whether the stand-in was started for a test boot (not only asked -accel help)."""
    argv = Path(f"{path}.argv")
    return argv.exists() and "-machine" in argv.read_text().split("\n")


def kernel_image(tmp_path: Path) -> BaseImage:
    (tmp_path / "vmlinuz").write_bytes(b"kernel")
    return BaseImage(tmp_path / "disk.qcow2", kernel=tmp_path / "vmlinuz", gated=True)


@pytest.fixture
def linux_with_kvm(monkeypatch):
    monkeypatch.setattr(accel.sys, "platform", "linux")
    monkeypatch.setattr(accel.os.path, "exists", lambda p: p == "/dev/kvm")


# --- what QEMU offers -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (ACCEL_HELP["linux"], {"tcg", "kvm"}),
        (ACCEL_HELP["darwin"], {"tcg", "hvf"}),
        (ACCEL_HELP["win32"], {"tcg", "whpx"}),
        ("", set()),
    ],
)
def test_parse_accel_help(text, names) -> None:
    assert accel.parse_accel_help(text) == names


def test_this_machines_qemu_lists_what_we_parse() -> None:
    found = accel.qemu_accels("qemu-system-x86_64")
    assert found is not None and "tcg" in found  # CI installs QEMU
    assert accel.qemu_accels("/nonexistent/qemu") is None


@pytest.mark.parametrize(
    ("system", "help_key", "kvm_node", "expected"),
    [
        ("linux", "linux", True, ["kvm", "tcg"]),
        ("linux", "linux", False, ["tcg"]),
        ("linux", "win32-no-whpx", True, ["tcg"]),  # a QEMU built without KVM
        ("linux", None, True, ["kvm", "tcg"]),  # QEMU could not say: try
        ("darwin", "darwin", False, ["hvf", "tcg"]),
        ("darwin", "win32-no-whpx", False, ["tcg"]),
        ("win32", "win32", False, ["whpx", "tcg"]),
        ("win32", "win32-no-whpx", False, ["tcg"]),
        ("win32", None, False, ["tcg"]),  # WHPX needs a Windows feature: only when listed
    ],
)
def test_candidates(monkeypatch, system, help_key, kvm_node, expected) -> None:
    monkeypatch.setattr(accel.os.path, "exists", lambda p: kvm_node and p == "/dev/kvm")
    available = accel.parse_accel_help(ACCEL_HELP[help_key]) if help_key else None
    assert accel.candidates(system, available) == expected


# --- the test boot --------------------------------------------------------------------------


def test_probe_boots_the_images_kernel_as_a_real_start_would(tmp_path) -> None:
    base = kernel_image(tmp_path)
    log = tmp_path / "console.log"
    argv = accel.probe_argv("qemu-system-x86_64", "kvm", "amd64", base, log)
    real = qemu.build_argv(
        qemu.QemuSpec(
            qemu_bin="qemu-system-x86_64", name="vm", arch="amd64", accel="kvm", mem_mb=4096,
            cpus=4, disk=tmp_path / "d", seed=tmp_path / "s", ssh_port=1,
            pidfile=tmp_path / "p", serial_log=tmp_path / "l", qmp_socket=tmp_path / "q",
            fs_mode="9p", base=base,
        )
    )  # fmt: skip
    for flag in ("-machine", "-accel", "-cpu", "-kernel"):
        assert argv[argv.index(flag) + 1] == real[real.index(flag) + 1], flag
    assert argv[argv.index("-serial") + 1] == f"file:{log}"
    append = argv[argv.index("-append") + 1].split()
    assert {"console=ttyS0", "earlyprintk=ttyS0", "panic=-1"} <= set(append)
    assert "-no-reboot" in argv and "-daemonize" not in argv

    arm = accel.probe_argv("qemu-system-aarch64", "kvm", "arm64", base, log)
    assert arm[arm.index("-machine") + 1] == "virt,gic-version=host"
    assert {"console=ttyAMA0", "earlycon"} <= set(arm[arm.index("-append") + 1].split())


def test_probe_without_a_kernel_boots_the_firmware(tmp_path) -> None:
    log = tmp_path / "debugcon.log"
    bios = accel.probe_argv("q", "kvm", "amd64", BaseImage(tmp_path / "d.qcow2"), log)
    assert "-kernel" not in bios and "isa-debugcon,iobase=0x402,chardev=dbg" in bios
    arm = accel.probe_argv("q", "kvm", "arm64", None, log)
    assert "-kernel" not in arm and "-S" in arm  # virt has no debug console


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        ("prints", None),
        ("stalls", "the guest kernel printed nothing in 1 s"),
        ("silent", "the guest kernel printed nothing in 1 s"),
        ("aborts", "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69"),
    ],
)
def test_probe_outcomes(tmp_path, behaviour, why) -> None:
    fake = fake_qemu(tmp_path, behaviour)
    assert accel.probe(str(fake), "kvm", "amd64", kernel_image(tmp_path), timeout=1) == why
    assert probed(fake)


@pytest.mark.parametrize(
    ("console", "kernel", "alive"),
    [
        (None, True, False),
        (b"", True, False),
        (b"Probing EDD (edd=off to disable)... ok\n", True, False),  # only the setup code
        (b"Probing EDD... ok\n[    0.000000] Linux version 6.12.57+deb13-amd64\n", True, True),
        (None, False, False),
        (b"", False, False),
        (b"BdsDxe: loading Boot0001", False, True),  # firmware: anything counts
    ],
)
def test_shows_life(tmp_path, console, kernel, alive) -> None:
    log = tmp_path / "serial.log"
    if console is not None:
        log.write_bytes(console)
    base = kernel_image(tmp_path) if kernel else BaseImage(tmp_path / "d.qcow2")
    assert accel.shows_life(log, base) is alive


def test_tcg_and_a_missing_binary(tmp_path) -> None:
    assert accel.probe("/nonexistent/qemu", "tcg", "amd64", None) is None
    why = accel.probe("/nonexistent/qemu", "kvm", "amd64", kernel_image(tmp_path))
    assert why and "No such file" in why


# --- the choice and remembered stalls ---------------------------------------------------


def test_a_working_accelerator_is_chosen(tmp_path, linux_with_kvm) -> None:
    fake = fake_qemu(tmp_path, "prints")
    choice = accel.choose(
        str(fake), "auto", "amd64", kernel_image(tmp_path), tmp_path, host="amd64"
    )
    assert choice == accel.Choice(Accel.KVM, "a test boot of the guest ran")
    assert choice.line() == "accel kvm: a test boot of the guest ran"
    assert not (tmp_path / accel.VERDICTS_FILE).exists()


def test_a_failed_test_boot_is_remembered_for_a_day(monkeypatch, tmp_path, linux_with_kvm):
    monkeypatch.setattr(accel, "PROBE_SECONDS", 1.0)
    fake = fake_qemu(tmp_path, "silent")
    base = kernel_image(tmp_path)
    cache = tmp_path / "cache"
    choice = accel.choose(str(fake), "auto", "amd64", base, cache, host="amd64")
    assert choice.accel == Accel.TCG
    assert choice.why.startswith("kvm is present but cannot boot a guest here (the guest kernel")
    (entry,) = json.loads((cache / accel.VERDICTS_FILE).read_text()).values()
    assert entry["accel"] == "kvm" and entry["qemu"] == str(fake.resolve())
    assert entry["qemu_version"] == "9.9.9" and entry["kernel"] and entry["cpu"]

    Path(f"{fake}.argv").unlink()
    again = accel.choose(str(fake), "auto", "amd64", base, cache, host="amd64")
    assert again.accel == Accel.TCG and not probed(fake)  # remembered: no 10 s test boot
    assert "kvm could not run a guest here 0.0 h ago" in again.why
    assert "vm.up --refresh" in again.why


def test_a_remembered_stall_expires_after_a_day(tmp_path, linux_with_kvm) -> None:
    fake = fake_qemu(tmp_path, "prints")
    path = accel.remember_stall(tmp_path, str(fake), "kvm", "a real guest printed nothing")
    verdicts = json.loads(path.read_text())
    (key,) = verdicts
    assert accel.remembered_stall(tmp_path, key) is not None
    day = accel.VERDICT_SECONDS
    assert accel.remembered_stall(tmp_path, key, now=time.time() + day - 60) is not None
    assert accel.remembered_stall(tmp_path, key, now=time.time() + day + 1) is None
    verdicts[key]["at"] -= day + 1
    path.write_text(json.dumps(verdicts))
    choice = accel.choose(str(fake), "auto", "amd64", kernel_image(tmp_path), tmp_path, "amd64")
    assert choice.accel == Accel.KVM and probed(fake)  # tested again


def test_refresh_forgets_the_stall(tmp_path, linux_with_kvm) -> None:
    fake = fake_qemu(tmp_path, "prints")
    accel.remember_stall(tmp_path, str(fake), "kvm", "a real guest printed nothing")
    base = kernel_image(tmp_path)
    assert accel.choose(str(fake), "auto", "amd64", base, tmp_path, host="amd64").accel == "tcg"
    choice = accel.choose(str(fake), "auto", "amd64", base, tmp_path, refresh=True, host="amd64")
    assert choice.accel == Accel.KVM
    assert json.loads((tmp_path / accel.VERDICTS_FILE).read_text()) == {}


def test_verdicts_are_per_qemu_version_kernel_cpu_and_accel(monkeypatch, tmp_path) -> None:
    identity = {"qemu": "/usr/bin/q", "qemu_version": "7.2", "kernel": "6.18", "cpu": "EPYC"}
    key = accel.verdict_key(identity, "kvm")
    assert accel.verdict_key(dict(identity), "kvm") == key
    for field, other in [("qemu", "/opt/q"), ("qemu_version", "8.2"), ("kernel", "6.19"),
                         ("cpu", "Xeon")]:  # fmt: skip
        assert accel.verdict_key({**identity, field: other}, "kvm") != key, field
    assert accel.verdict_key(identity, "hvf") != key


def test_a_broken_verdicts_file_is_no_verdict(tmp_path, linux_with_kvm) -> None:
    fake = fake_qemu(tmp_path, "prints")
    base = kernel_image(tmp_path)
    for text in ("{not json", "[1, 2]", '{"abc": {"at": "yesterday"}}', "[" * 100_000):
        (tmp_path / accel.VERDICTS_FILE).write_text(text)
        assert accel.choose(str(fake), "auto", "amd64", base, tmp_path, host="amd64").accel == "kvm"


@pytest.mark.parametrize(
    ("requested", "arch", "host", "behaviour", "expected"),
    [
        ("tcg", "amd64", "amd64", "aborts", accel.Choice(Accel.TCG, "as QEMU_VM_ACCEL asks")),
        ("kvm", "amd64", "amd64", "prints", accel.Choice(Accel.KVM, "as QEMU_VM_ACCEL asks")),
        (
            "kvm",
            "amd64",
            "amd64",
            "aborts",
            accel.Choice(
                Accel.KVM,
                "as QEMU_VM_ACCEL asks, though a test boot failed (qemu-system-x86_64: "
                "error: failed to set MSR 0x10a to 0x69)",
            ),
        ),
        ("auto", "arm64", "amd64", "prints",
         accel.Choice(Accel.TCG, "an arm64 guest on an amd64 host is emulated")),
        ("auto", "amd64", "arm64", "prints",
         accel.Choice(Accel.TCG, "an amd64 guest on an arm64 host is emulated")),
    ],
)  # fmt: skip
def test_asked_for_and_emulated(
    tmp_path, linux_with_kvm, requested, arch, host, behaviour, expected
) -> None:
    fake = fake_qemu(tmp_path, behaviour)
    base = kernel_image(tmp_path)
    assert accel.choose(str(fake), requested, arch, base, tmp_path, host=host) == expected
    assert not (tmp_path / accel.VERDICTS_FILE).exists()  # asked for: nothing remembered
    if requested == "tcg" or arch != host:
        assert not probed(fake)


def test_no_hardware_accelerator(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(accel.os.path, "exists", lambda p: False)
    monkeypatch.setattr(accel.sys, "platform", "linux")
    fake = fake_qemu(tmp_path, "prints")
    choice = accel.choose(str(fake), "auto", "amd64", kernel_image(tmp_path), tmp_path, "amd64")
    assert choice == accel.Choice(Accel.TCG, "no hardware accelerator on this host")
    assert not probed(fake)
