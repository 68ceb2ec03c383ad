"""The accelerator a new VM boots with: what QEMU offers, a test boot of what a real start
boots, and a stall seen once remembered.

`/dev/kvm` existing says little (SPEC 9.1). On this project's machines KVM is nested
through a module that aborts a `-cpu host` guest at once, or (since the hosts' kernel
6.18) lets the firmware run and then runs no guest kernel at all: the guest prints
nothing. So:
- the probe boots the image's own kernel (or, for an image without one, the firmware)
  under the accelerator and waits for its first output;
- a real start under an auto-chosen accelerator that prints nothing is a stall: it is
  written down (`verdicts.json` in the image cache, keyed by the QEMU binary and its
  version, the host's kernel and CPU, and the accelerator) and new VMs on this host skip
  that accelerator for a day, or until `vm.up --refresh` forgets it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import temp_beside
from ..settings import Accel, host_arch
from . import qemu
from .images import BaseImage, serial_console

# How long a test boot may take to print (a guest kernel prints its first line well
# under a second with hardware acceleration).
PROBE_SECONDS = 10.0
# A real start under an auto-chosen accelerator that has printed nothing by then stalls.
STALL_SECONDS = 30.0
# How long a stall is remembered: a kernel or QEMU update may mend the accelerator.
VERDICT_SECONDS = 24 * 3600.0
VERDICTS_FILE = "verdicts.json"
# The first line a Linux kernel prints (with earlyprintk, before anything else).
KERNEL_BANNER = b"Linux version"
# How far into a console log the banner (or the firmware's line) is looked for: it is
# among the first lines printed.
LOG_HEAD_BYTES = 64 << 10
# The test boot's guest RAM: a kernel prints its banner long before it needs memory,
# and a small guest starts fast.
PROBE_MEM = "256M"


@dataclass(frozen=True)
class Choice:
    accel: Accel
    why: str  # one line, for the user

    def line(self) -> str:
        return f"accel {self.accel}: {self.why}"


# --- what QEMU offers -------------------------------------------------------------


def parse_accel_help(text: str) -> set[str]:
    """The accelerators `qemu-system-* -accel help` lists.

    Its output is a header line ("Accelerators supported in QEMU binary:") and one
    name per line: tcg, kvm on Linux; tcg, hvf on macOS; tcg, whpx on Windows.
    """
    names = set()
    for line in text.splitlines():
        word = line.strip()
        if word and not word.endswith(":") and word.replace("-", "").isalnum() and " " not in word:
            names.add(word.lower())
    return names


def qemu_accels(qemu_bin: str, timeout: float = qemu.QUERY_TIMEOUT) -> set[str] | None:
    """What this QEMU binary was built with (`-accel help`); None when it cannot say."""
    try:
        out = subprocess.run(
            [qemu_bin, "-accel", "help"],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    names = parse_accel_help(out.stdout) if out.returncode == 0 else set()
    return names or None


def candidates(system: str | None = None, available: set[str] | None = None) -> list[Accel]:
    """Accelerators worth a test boot on this host, best first; TCG last, always.

    `available`: what `-accel help` listed (None: unknown). KVM also needs /dev/kvm;
    HVF is tried on macOS unless QEMU says it lacks it; WHPX (Windows) only when QEMU
    lists it, since it also needs the Windows Hypervisor Platform feature turned on.
    """
    system = system or sys.platform

    def listed(name: str, unknown: bool) -> bool:
        return unknown if available is None else name in available

    if system.startswith("linux") and os.path.exists("/dev/kvm") and listed(Accel.KVM, True):
        return [Accel.KVM, Accel.TCG]
    if system == "darwin" and listed(Accel.HVF, True):
        return [Accel.HVF, Accel.TCG]
    if system == "win32" and listed(Accel.WHPX, False):
        return [Accel.WHPX, Accel.TCG]
    return [Accel.TCG]


# --- the test boot ----------------------------------------------------------------


def probe_argv(
    qemu_bin: str, accel: Accel, arch: str, base: BaseImage | None, log: Path
) -> list[str]:
    """The test boot's command line: the real start's machine, accelerator and CPU model,
    with the image's kernel told to print at once; without a kernel, the firmware alone
    (SeaBIOS prints on the debug console of q35; arm64's virt has none, so QEMU is only
    asked to accept the accelerator, paused)."""
    argv = [qemu_bin, "-machine", qemu.machine_arg(arch, accel), *qemu.accel_args(accel, arch)]
    argv += ["-cpu", qemu.cpu_model(accel, arch), "-m", PROBE_MEM, "-smp", "1"]
    argv += ["-nodefaults", "-display", "none", "-monitor", "none", "-no-reboot"]
    if base is not None and base.kernel is not None:
        console = serial_console(arch)
        early = "earlycon" if arch == "arm64" else f"earlyprintk={console}"
        # panic=-1 with -no-reboot: the kernel ends the probe itself once it finds no root.
        argv += ["-serial", f"file:{qemu.opt_escape(log)}", "-kernel", str(base.kernel)]
        return argv + ["-append", f"console={console} {early} panic=-1"]
    if arch == "arm64":
        return argv + ["-S"]
    return argv + [
        "-chardev",
        f"file,id=dbg,path={qemu.opt_escape(log)}",
        "-device",
        "isa-debugcon,iobase=0x402,chardev=dbg",
    ]


def probe(
    qemu_bin: str, accel: Accel, arch: str, base: BaseImage | None, timeout: float | None = None
) -> str | None:
    """Test-boot `accel`; None when the guest printed, else why not (one line)."""
    if accel == Accel.TCG:
        return None
    timeout = PROBE_SECONDS if timeout is None else timeout
    with tempfile.TemporaryDirectory(prefix="patchbay-accel-") as tmp:
        log = Path(tmp) / "console.log"
        argv = probe_argv(qemu_bin, accel, arch, base, log)
        if "-S" in argv:
            return _run(argv, None, b"", timeout)
        kernel = base is not None and base.kernel is not None
        marker = KERNEL_BANNER if kernel else b"No bootable device"
        why = _run(argv, log, marker, timeout)
        if why is not None and kernel and why.startswith("nothing"):
            return f"the guest kernel printed nothing in {timeout:.0f} s"
        return why


def _run(argv: list[str], log: Path | None, marker: bytes, timeout: float) -> str | None:
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError as e:
        return str(e)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if log is not None and _holds(log, marker):
                return None
            if proc.poll() is not None:
                if log is not None and _holds(log, marker):
                    return None
                err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
                if log is None and proc.returncode == 0:
                    return None
                return err.splitlines()[0] if err else f"QEMU exited with {proc.returncode}"
            time.sleep(0.05)
        if log is None:
            return None  # still running, paused: the accelerator was accepted
        return f"nothing printed in {timeout:.0f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def shows_life(serial_log: Path, base: BaseImage) -> bool:
    """Whether a real start's guest has printed: the kernel's first line where we boot
    the image's kernel ourselves (the real-mode setup code prints before it, and did
    under an accelerator that then ran nothing), else anything (firmware, boot loader)."""
    if base.kernel is not None:
        return _holds(serial_log, KERNEL_BANNER)
    try:
        return serial_log.stat().st_size > 0
    except OSError:
        return False


def _holds(log: Path, marker: bytes) -> bool:
    try:
        with log.open("rb") as f:
            return marker in f.read(LOG_HEAD_BYTES)
    except OSError:
        return False


# --- remembered stalls ---------------------------------------------------------------


def host_identity(qemu_bin: str) -> dict[str, str]:
    """What a verdict holds for: the QEMU binary (resolved) and its version, the host's
    kernel and CPU model."""
    found = shutil.which(qemu_bin) or qemu_bin
    return {
        "qemu": os.path.realpath(found),
        "qemu_version": qemu.version(qemu_bin),
        "kernel": platform.release(),
        "cpu": cpu_model_name(),
    }


def cpu_model_name() -> str:
    """The host CPU's model as the OS names it (/proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "CPU part"):
                    return value.strip()
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}".strip()


def verdict_key(identity: dict[str, str], accel: Accel) -> str:
    data = json.dumps([identity, accel], sort_keys=True).encode()
    return hashlib.sha256(data).hexdigest()[:16]


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(path: Path, verdicts: dict) -> None:
    with temp_beside(path) as tmp:
        tmp.write_text(json.dumps(verdicts, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def remembered_stall(
    cache_dir: Path, key: str, now: float | None = None, entry: object = None
) -> dict | None:
    """The stall remembered for `key` ({"why", "at", ...}) while it is younger than a day
    (`entry`: that verdict, already read)."""
    if entry is None:
        entry = _read(cache_dir / VERDICTS_FILE).get(key)
    if not isinstance(entry, dict) or not isinstance(entry.get("at"), int | float):
        return None
    age = (time.time() if now is None else now) - entry["at"]
    return entry if 0 <= age < VERDICT_SECONDS else None


def remember_stall(cache_dir: Path, qemu_bin: str, accel: Accel, why: str) -> Path:
    """Write down that `accel` could not run a guest on this host; returns the file."""
    identity = host_identity(qemu_bin)
    path = cache_dir / VERDICTS_FILE
    now = time.time()
    verdicts = {k: v for k, v in _read(path).items() if remembered_stall(cache_dir, k, now, v)}
    verdicts[verdict_key(identity, accel)] = {
        **identity,
        "accel": str(accel),
        "why": why,
        "at": now,
    }
    _write(path, verdicts)
    return path


def forget(cache_dir: Path, keys: list[str]) -> bool:
    """Drop the verdicts of `keys`; whether any was there."""
    path = cache_dir / VERDICTS_FILE
    verdicts = _read(path)
    gone = [k for k in keys if k in verdicts]
    if gone:
        _write(path, {k: v for k, v in verdicts.items() if k not in gone})
    return bool(gone)


# --- the choice -------------------------------------------------------------------------


def choose(
    qemu_bin: str,
    requested: Accel,
    arch: str,
    base: BaseImage | None,
    cache_dir: Path,
    refresh: bool = False,
    host: str | None = None,
) -> Choice:
    """The accelerator to boot with and, in one line, why.

    A guest of another arch than the host's (`host`, default this machine's) can only
    be emulated. An explicit QEMU_VM_ACCEL is used as asked (a failed test boot is
    said, not obeyed). `refresh` forgets remembered stalls first.
    """
    if requested != Accel.AUTO:
        accel = Accel(requested)
        why = probe(qemu_bin, accel, arch, base)
        if why is None:
            return Choice(accel, "as QEMU_VM_ACCEL asks")
        return Choice(accel, f"as QEMU_VM_ACCEL asks, though a test boot failed ({why})")
    if arch != (host or host_arch()):
        return Choice(Accel.TCG, f"an {arch} guest on an {host or host_arch()} host is emulated")
    found = candidates(available=qemu_accels(qemu_bin))
    if found == [Accel.TCG]:
        return Choice(Accel.TCG, "no hardware accelerator on this host")
    identity = host_identity(qemu_bin)
    keys = {accel: verdict_key(identity, accel) for accel in found}
    if refresh:
        forget(cache_dir, list(keys.values()))
    passed_over = []
    for accel in found[:-1]:
        known = remembered_stall(cache_dir, keys[accel])
        if known is not None:
            hours = (time.time() - known["at"]) / 3600
            passed_over.append(
                f"{accel} could not run a guest here {hours:.1f} h ago ({known.get('why')}); "
                f"tested again after a day, or now with vm.up --refresh"
            )
            continue
        why = probe(qemu_bin, accel, arch, base)
        if why is None:
            return Choice(accel, "a test boot of the guest ran")
        remember_stall(cache_dir, qemu_bin, accel, f"test boot: {why}")
        passed_over.append(f"{accel} is present but cannot boot a guest here ({why})")
    return Choice(Accel.TCG, "; ".join(passed_over))
