"""UEFI firmware: finding it per platform, and the per-VM writable variables file.

arm64 guests that boot themselves (Debian's cloud images) need UEFI: the `virt`
machine has no BIOS. x86_64 ones boot through QEMU's built-in SeaBIOS unless UEFI
(OVMF) is asked for. Images we build boot with `-kernel` and need neither.

Discovery is a pure function of its arguments (the platform, the QEMU binary's path,
a root dir standing for `/`), so the tests run it against a fake filesystem.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePath

from ..errors import UsageError, VmUnavailable
from ..settings import FirmwareMode

# Every pflash unit of the arm64 `virt` machine is 64 MiB: QEMU refuses a smaller
# image ("device requires 67108864 bytes"). Homebrew's and Debian's AAVMF files are
# already that size; the 2 MiB QEMU_EFI.fd (meant for -bios) is padded with zeros.
VIRT_PFLASH_SIZE = 64 * 1024 * 1024


class BootMode(StrEnum):
    """How the guest starts."""

    KERNEL = "kernel"  # -kernel/-append/-initrd from an image we built
    BIOS = "bios"  # SeaBIOS, QEMU's default on x86: the image's own bootloader
    UEFI = "uefi"  # pflash code (read-only) + this VM's variables


@dataclass(frozen=True)
class Firmware:
    """UEFI firmware found on the host."""

    arch: str  # amd64 | arm64
    code: Path  # read-only code image
    vars_template: Path | None  # None: start from an all-zero variable store (arm64)
    origin: str  # where it came from, for messages


@dataclass(frozen=True)
class Pflash:
    """What QEMU is given: the code image (read-only) and this VM's variables file."""

    code: Path
    vars: Path


# (code, vars template or None) per arch, best first, as paths under a prefix dir.
# Homebrew and QEMU's own install layout: share/qemu/edk2-*.fd.
_EDK2 = {
    "arm64": ("edk2-aarch64-code.fd", "edk2-arm-vars.fd"),
    "amd64": ("edk2-x86_64-code.fd", "edk2-i386-vars.fd"),
}
# Distribution packages, in the order tried after the QEMU install's own share dir.
_SYSTEM = {
    "arm64": [
        # Debian/Ubuntu qemu-efi-aarch64 (AAVMF: both files already 64 MiB).
        ("/usr/share/AAVMF/AAVMF_CODE.fd", "/usr/share/AAVMF/AAVMF_VARS.fd"),
        # Fedora edk2-aarch64: the pflash-sized pair first, then the 2 MiB image.
        (
            "/usr/share/edk2/aarch64/QEMU_EFI-pflash.raw",
            "/usr/share/edk2/aarch64/vars-template-pflash.raw",
        ),
        ("/usr/share/edk2/aarch64/QEMU_EFI.fd", "/usr/share/edk2/aarch64/QEMU_VARS.fd"),
        # Arch Linux edk2-aarch64.
        ("/usr/share/edk2/aarch64/QEMU_CODE.fd", "/usr/share/edk2/aarch64/QEMU_VARS.fd"),
        # Debian's -bios image (no vars template beside it).
        ("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd", None),
    ],
    "amd64": [
        # Debian/Ubuntu ovmf: the 4 MiB build, then the older 2 MiB one.
        ("/usr/share/OVMF/OVMF_CODE_4M.fd", "/usr/share/OVMF/OVMF_VARS_4M.fd"),
        ("/usr/share/OVMF/OVMF_CODE.fd", "/usr/share/OVMF/OVMF_VARS.fd"),
        # Fedora edk2-ovmf.
        ("/usr/share/edk2/ovmf/OVMF_CODE.fd", "/usr/share/edk2/ovmf/OVMF_VARS.fd"),
        # Arch Linux edk2-ovmf.
        ("/usr/share/edk2/x64/OVMF_CODE.4m.fd", "/usr/share/edk2/x64/OVMF_VARS.4m.fd"),
    ],
}
_PREFIX_SHARES = ("/opt/homebrew/share/qemu", "/usr/local/share/qemu", "/usr/share/qemu")
# The QEMU for Windows installer puts the firmware in share\ beside the binaries.
_WINDOWS_DEFAULT_DIR = "C:/Program Files/qemu"

# Code image names whose vars template is a known sibling (QEMU_VM_FIRMWARE).
_VARS_SIBLING = {
    "edk2-aarch64-code.fd": "edk2-arm-vars.fd",
    "edk2-x86_64-code.fd": "edk2-i386-vars.fd",
    "AAVMF_CODE.fd": "AAVMF_VARS.fd",
    "OVMF_CODE.fd": "OVMF_VARS.fd",
    "OVMF_CODE_4M.fd": "OVMF_VARS_4M.fd",
    "OVMF_CODE.4m.fd": "OVMF_VARS.4m.fd",
    "QEMU_EFI-pflash.raw": "vars-template-pflash.raw",
    "QEMU_EFI.fd": "QEMU_VARS.fd",
    "QEMU_CODE.fd": "QEMU_VARS.fd",
}


def boot_mode(arch: str, firmware_setting: FirmwareMode | PurePath, has_kernel: bool) -> BootMode:
    """How a guest of `arch` starts, given QEMU_VM_FIRMWARE and whether the base image
    brings its own kernel (then `-kernel`: our images have no bootloader)."""
    if has_kernel:
        return BootMode.KERNEL
    if arch == "arm64":
        return BootMode.UEFI  # `virt` has no BIOS
    # x86_64: the image's bootloader through SeaBIOS unless UEFI is asked for (Debian's
    # generic images boot with either).
    bios = firmware_setting in (FirmwareMode.AUTO, FirmwareMode.BIOS)
    return BootMode.BIOS if bios else BootMode.UEFI


def _under(root: Path | None, path: str | PurePath) -> Path:
    """`path` on the filesystem rooted at `root` (tests); the path itself when None."""
    if root is None:
        return Path(path)
    text = str(path).replace("\\", "/")
    if len(text) > 1 and text[1] == ":":  # a drive letter: C:/x -> root/C/x
        text = text[0] + text[2:]
    return root / text.lstrip("/")


def candidates(
    arch: str, system: str, qemu_path: str | PurePath | None
) -> list[tuple[str, str | None, str]]:
    """(code, vars template, origin) pairs to try, best first, as host paths."""
    code_name, vars_name = _EDK2[arch]
    dirs: list[tuple[str, str]] = []
    if qemu_path:
        qemu_dir = PurePath(qemu_path).parent
        if system == "win32":
            dirs.append((str(qemu_dir / "share"), "beside the QEMU binary"))
        # A prefix install (Homebrew, MacPorts, Nix, /usr/local): bin/../share/qemu.
        dirs.append((str(qemu_dir.parent / "share" / "qemu"), "beside the QEMU binary"))
    if system == "win32":
        dirs.append((f"{_WINDOWS_DEFAULT_DIR}/share", "the QEMU for Windows install"))
        pairs: list[tuple[str, str | None, str]] = []
    else:
        dirs += [(d, d) for d in _PREFIX_SHARES]
        pairs = [(code, vars_, code) for code, vars_ in _SYSTEM[arch]]
    found = [(f"{d}/{code_name}", f"{d}/{vars_name}", origin) for d, origin in dirs]
    # The same dir can come twice (QEMU in /usr/bin and /usr/share/qemu): keep the first.
    seen: set[str] = set()
    unique = []
    for code, vars_, origin in [*found, *pairs]:
        if code not in seen:
            seen.add(code)
            unique.append((code, vars_, origin))
    return unique


def find_firmware(
    arch: str,
    system: str | None = None,
    qemu_path: str | PurePath | None = None,
    override: FirmwareMode | PurePath | None = None,
    root: Path | None = None,
) -> Firmware:
    """The UEFI firmware for a guest of `arch`; VmUnavailable, saying what to install,
    when there is none.

    `override` is QEMU_VM_FIRMWARE; when it names a file, that wins, and its vars template
    is a known sibling (`AAVMF_VARS.fd` beside `AAVMF_CODE.fd`, ...) when there is one.
    `root` stands for `/` (tests); `qemu_path` is the resolved QEMU binary.
    """
    system = system or sys.platform
    if isinstance(override, PurePath):
        code = _under(root, override)
        if not code.is_file():
            raise UsageError(f"QEMU_VM_FIRMWARE: no file at {override}")
        sibling = _VARS_SIBLING.get(code.name)
        template = code.with_name(sibling) if sibling else None
        if template is not None and not template.is_file():
            template = None
        if template is None and arch == "amd64":
            raise UsageError(
                f"QEMU_VM_FIRMWARE: no OVMF variable store template beside {override} "
                f"(expected one of {', '.join(sorted(set(_VARS_SIBLING.values())))})"
            )
        return Firmware(arch, code, template, "QEMU_VM_FIRMWARE")
    for code_path, vars_path, origin in candidates(arch, system, qemu_path):
        code = _under(root, code_path)
        if not code.is_file():
            continue
        template = _under(root, vars_path) if vars_path else None
        if template is not None and not template.is_file():
            template = None
        if template is None and arch == "amd64":
            continue  # OVMF will not start from a blank store
        return Firmware(arch, code, template, origin)
    raise VmUnavailable(missing_message(arch, system))


def missing_message(arch: str, system: str) -> str:
    """What to install for UEFI firmware on this platform."""
    what = "UEFI firmware for arm64 guests" if arch == "arm64" else "UEFI firmware (OVMF)"
    if system == "darwin":
        how = "install QEMU with Homebrew, which ships it: `brew install qemu`"
    elif system == "win32":
        how = (
            "the QEMU for Windows installer puts it in share\\ beside qemu-system-*.exe; "
            "reinstall QEMU with its firmware"
        )
    elif arch == "arm64":
        how = (
            "Debian/Ubuntu: `sudo apt-get install qemu-efi-aarch64`; "
            "Fedora: `sudo dnf install edk2-aarch64`; Arch: `sudo pacman -S edk2-aarch64`"
        )
    else:
        how = (
            "Debian/Ubuntu: `sudo apt-get install ovmf`; Fedora: `sudo dnf install edk2-ovmf`; "
            "Arch: `sudo pacman -S edk2-ovmf`"
        )
    return f"no {what} found; {how}; or set QEMU_VM_FIRMWARE to the code image's path"


def qemu_path_of(qemu_bin: str) -> str | None:
    """The QEMU binary's full path (QEMU_VM_QEMU_BIN may be a bare name), if found."""
    return shutil.which(qemu_bin)


# --- the per-VM files ------------------------------------------------------------


def _write_padded(src: Path | None, dest: Path, size: int | None) -> None:
    """`dest` := `src` (or nothing), zero-padded to `size`; written atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    with tmp.open("wb") as out:
        if src is not None:
            with src.open("rb") as f:
                shutil.copyfileobj(f, out)
        if size is not None:
            if out.tell() > size:
                raise VmUnavailable(f"{src} is larger than a {size // 2**20} MiB flash unit")
            out.truncate(size)  # sparse where the filesystem allows
    os.replace(tmp, dest)


def _flash_size(fw: Firmware) -> int | None:
    return VIRT_PFLASH_SIZE if fw.arch == "arm64" else None


def ensure_vars(fw: Firmware, vars_path: Path) -> Path:
    """This VM's writable UEFI variables (StateDir.efi_vars), made once from the template.

    An existing file is never rewritten: it holds the guest's boot entries, and a saved
    guest state refers to it as it is.
    """
    if not vars_path.exists():
        vars_path.parent.mkdir(parents=True, exist_ok=True)
        _write_padded(fw.vars_template, vars_path, _flash_size(fw))
    return vars_path


def flash_code(fw: Firmware, state_dir: Path) -> Path:
    """The code image to give QEMU: the firmware's own file when its size fits the
    machine, else a zero-padded copy in the state dir (`efi-code.fd`), made again when
    the firmware package changed it."""
    size = _flash_size(fw)
    if size is None or fw.code.stat().st_size == size:
        return fw.code
    copy = state_dir / "efi-code.fd"
    if not copy.exists() or copy.stat().st_mtime < fw.code.stat().st_mtime:
        state_dir.mkdir(parents=True, exist_ok=True)
        _write_padded(fw.code, copy, size)
    return copy


def prepare(fw: Firmware, state_dir: Path, vars_path: Path) -> Pflash:
    """The two pflash files of a UEFI boot, made where needed."""
    return Pflash(code=flash_code(fw, state_dir), vars=ensure_vars(fw, vars_path))


def pflash_for(
    arch: str,
    firmware_setting: FirmwareMode | PurePath,
    has_kernel: bool,
    qemu_bin: str,
    state_dir: Path,
    vars_path: Path,
    system: str | None = None,
) -> Pflash | None:
    """The firmware files of a boot, or None when QEMU needs none (direct kernel boot,
    SeaBIOS). The one call a boot makes before building the QEMU spec."""
    if boot_mode(arch, firmware_setting, has_kernel) is not BootMode.UEFI:
        return None
    fw = find_firmware(arch, system, qemu_path_of(qemu_bin), firmware_setting)
    return prepare(fw, state_dir, vars_path)
