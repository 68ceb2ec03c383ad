"""One frozen settings object, resolved once per task.

Precedence, lowest first (SPEC 3): built-in defaults, the `vm:` section of
Invoke's config files, `QEMU_VM_*` environment variables, task flags.
"""

from __future__ import annotations

import enum
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from . import durations
from .errors import UsageError

DEBIAN_IMAGE_DIR = "https://cloud.debian.org/images/cloud/trixie/latest"
ARCHS = ("amd64", "arm64")
# Other spellings of the same arch (the kernel's, Rust's), normalised to Debian's.
ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64"}

# The modes a user chooses, as str enums: a member is its value in JSON, messages and
# comparisons ("9p" == FsMode.NINEP).


class Accel(enum.StrEnum):
    """`QEMU_VM_ACCEL`, and the accelerator a VM runs under (never AUTO)."""

    AUTO = "auto"  # the best one a test boot shows to run a guest here (vm/accel.py)
    KVM = "kvm"
    HVF = "hvf"
    WHPX = "whpx"
    TCG = "tcg"


class FsMode(enum.StrEnum):
    """`QEMU_VM_FS`: how the guest sees /app, /target and /work, and how a VM runs (never
    AUTO)."""

    AUTO = "auto"  # 9p, which `vm.down` can save (vm/shares.py choose_fs_mode)
    VIRTIOFS = "virtiofs"
    NINEP = "9p"
    # No shared folders (QEMU for Windows has neither 9p nor vhost-user): guest-local
    # folders, filled by copying over the task's SSH connection (vm/sync.py).
    NONE = "none"


class FirmwareMode(enum.StrEnum):
    """`QEMU_VM_FIRMWARE`, for an image that boots itself (ours boot with -kernel). Any
    other value is the path of a UEFI code image, used instead of the one found."""

    AUTO = "auto"  # UEFI on arm64, SeaBIOS on amd64
    UEFI = "uefi"  # UEFI on amd64 too (OVMF)
    BIOS = "bios"  # SeaBIOS (amd64 only)


ACCELS = tuple(accel.value for accel in Accel)
FS_MODES = tuple(mode.value for mode in FsMode)
FIRMWARE_CHOICES = tuple(mode.value for mode in FirmwareMode)


def host_arch(machine: str | None = None) -> str:
    """The guest arch we boot: the host's, in Debian's spelling."""
    m = (machine or platform.machine()).lower()
    return "arm64" if m in ("arm64", "aarch64") else "amd64"


def default_image_url(arch: str) -> str:
    # The `generic` image, not `genericcloud`: the cloud kernel has no 9p (SPEC 9.2).
    return f"{DEBIAN_IMAGE_DIR}/debian-13-generic-{arch}.qcow2"


def default_qemu_bin(arch: str) -> str:
    return "qemu-system-aarch64" if arch == "arm64" else "qemu-system-x86_64"


# Where the guest sees the project, the cargo target dir and the work dir (SPEC 5); the
# one place these names are written (mounts() pairs them with the host's folders).
GUEST_APP = "/app"
GUEST_TARGET = "/target"
GUEST_WORK = "/work"


@dataclass(frozen=True)
class VmSettings:
    """Everything a VM task needs to know, resolved once."""

    name: str
    mem_mb: int
    cpus: int
    disk_gb: int
    ssh_port: int
    ssh_port_explicit: bool
    ssh_user: str
    image_url: str
    qemu_bin: str
    virtiofsd_bin: str | None
    accel: Accel
    fs_mode: FsMode
    project_dir: Path
    work_dir: Path
    target_dir: Path
    image_cache_dir: Path
    debian_mirror: str
    boot_timeout: float
    keep_runs: int
    arch: str
    # A mode, or the path of a UEFI code image (QEMU_VM_FIRMWARE names a file).
    firmware: FirmwareMode | Path = FirmwareMode.AUTO
    patchbay_version: str = "latest"  # the runner sim.run uses (--patchbay-version)
    # A CPU count was asked for (QEMU_VM_CPUS, or a config value other than the
    # default): only the default is fitted to the host's cores under TCG (vm/qemu.py).
    cpus_explicit: bool = False

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".qemu-vm" / self.name

    def mounts(self) -> list[tuple[str, Path, str]]:
        """(guest path, host path, access) of the three shares (SPEC 5)."""
        return [
            (GUEST_APP, self.project_dir, "ro"),
            (GUEST_TARGET, self.target_dir, "ro"),
            (GUEST_WORK, self.work_dir, "rw"),
        ]

    def asked_for(self) -> dict[str, Any]:
        """The resolved settings a VM is (or would be) started with, for `vm.status --json`."""
        return {
            "name": self.name,
            "arch": self.arch,
            "mem_mb": self.mem_mb,
            "cpus": self.cpus,
            "cpus_explicit": self.cpus_explicit,
            "disk_gb": self.disk_gb,
            "ssh_port": self.ssh_port,
            "ssh_port_explicit": self.ssh_port_explicit,
            "ssh_user": self.ssh_user,
            "image_url": self.image_url,
            "qemu_bin": self.qemu_bin,
            "accel": str(self.accel),
            "firmware": str(self.firmware),
            "fs_mode": str(self.fs_mode),
            "project_dir": str(self.project_dir),
            "work_dir": str(self.work_dir),
            "target_dir": str(self.target_dir),
            "image_cache_dir": str(self.image_cache_dir),
            "boot_timeout": self.boot_timeout,
            "keep_runs": self.keep_runs,
        }


# name -> (environment variable, type). Config keys in `vm:` use the field names.
_SOURCES: dict[str, tuple[str, type]] = {
    "name": ("QEMU_VM_NAME", str),
    "mem_mb": ("QEMU_VM_MEM_MB", int),
    "cpus": ("QEMU_VM_CPUS", int),
    "disk_gb": ("QEMU_VM_DISK_GB", int),
    "ssh_port": ("QEMU_VM_SSH_PORT", int),
    "ssh_user": ("QEMU_VM_SSH_USER", str),
    "image_url": ("QEMU_VM_IMAGE_URL", str),
    "qemu_bin": ("QEMU_VM_QEMU_BIN", str),
    "virtiofsd_bin": ("QEMU_VM_VIRTIOFSD_BIN", str),
    "accel": ("QEMU_VM_ACCEL", str),
    "fs_mode": ("QEMU_VM_FS", str),
    "work_dir": ("QEMU_VM_WORK_DIR", str),
    "target_dir": ("QEMU_VM_TARGET_DIR", str),
    "image_cache_dir": ("QEMU_VM_IMAGE_CACHE", str),
    "debian_mirror": ("QEMU_VM_DEBIAN_MIRROR", str),
    "boot_timeout": ("QEMU_VM_BOOT_TIMEOUT", float),
    "keep_runs": ("QEMU_VM_KEEP_RUNS", int),
    "patchbay_version": ("PATCHBAY_VERSION", str),
    "arch": ("QEMU_VM_ARCH", str),
    "firmware": ("QEMU_VM_FIRMWARE", str),
}
# Defaults that follow the chosen arch when not set (see resolve).
_ARCH_DEPENDENT = ("image_url", "qemu_bin")
# Numbers that may be 0 (keep_runs 0: keep every run); the others must be positive.
_ZERO_ALLOWED = {"keep_runs"}


def _defaults(arch: str) -> dict[str, Any]:
    return {
        "name": "patchbay-vm",
        "mem_mb": 4096,
        "cpus": 4,
        "disk_gb": 40,
        "ssh_port": 2222,
        "ssh_user": "dev",
        "image_url": default_image_url(arch),
        "qemu_bin": default_qemu_bin(arch),
        "virtiofsd_bin": None,
        "accel": Accel.AUTO.value,
        "fs_mode": FsMode.AUTO.value,
        "work_dir": ".patchbay-work",
        "target_dir": None,
        "image_cache_dir": None,
        "debian_mirror": "http://deb.debian.org/debian",
        "boot_timeout": 600.0,
        "keep_runs": 20,
        "patchbay_version": "latest",
        "arch": arch,
        "firmware": FirmwareMode.AUTO.value,
    }


def config_defaults(arch: str | None = None) -> dict[str, Any]:
    """The `vm:` config section's defaults, registered with `Collection.configure` so
    Invoke's config machinery (and `invoke.yaml`, `INVOKE_VM_*`) knows every key."""
    # project_dir: None means the folder of the loaded tasks file (see project_dir_of).
    return {**_defaults(arch or host_arch()), "project_dir": None}


# VM names become folder names, the guest's host name (a DNS label: 63 characters at
# most) and parts of socket paths: ASCII letters and digits, then also '-', '_', '.'.
# (str.isalnum would take `²` and `a٠`.)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# Numbers as written in the environment or a flag: ASCII digits (int() also takes other
# scripts' digits and `1_000`), a decimal point and exponent for the floats.
_INT_RE = re.compile(r"[+-]?[0-9]{1,18}")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]{1,3})?")


def _convert(key: str, value: Any, origin: str) -> Any:
    kind = _SOURCES[key][1]
    if kind is float and isinstance(value, str):
        return durations.parse(value, origin)  # the one grammar of durations: 600, 10m
    what = "a finite number" if kind is float else f"a valid {kind.__name__}"
    bad = UsageError(f"{origin}: {value!r} is not {what}")
    if kind in (int, float) and isinstance(value, str):
        pattern = _INT_RE if kind is int else _FLOAT_RE
        if not pattern.fullmatch(value.strip()):
            raise bad
    if kind in (int, float) and isinstance(value, bool):
        raise bad
    try:
        converted = kind(value)
    except (TypeError, ValueError, OverflowError):
        raise bad from None
    if kind is float and not math.isfinite(converted):
        # nan would make every wait endless (nan < deadline is never true); inf too.
        raise bad
    if key in _ZERO_ALLOWED and converted < 0:
        raise UsageError(f"{origin}: must be zero or more, got {value!r}")
    if key not in _ZERO_ALLOWED and kind in (int, float) and converted <= 0:
        raise UsageError(f"{origin}: must be greater than zero, got {value!r}")
    return converted


def _path(value: str, origin: str, base: Path | None = None, expand: bool = True) -> Path:
    """A setting's path: `~` and `~user` expanded (when expand), relative to base,
    resolved; one clear UsageError when that cannot be done (no such user, a NUL byte, a
    loop of links)."""
    try:
        path = Path(value).expanduser() if expand else Path(value)
        return ((base / path) if base is not None else path).resolve()
    except RuntimeError as e:  # expanduser: "Could not determine home directory."
        raise UsageError(f"{origin}: cannot expand {value!r}: {e}") from None
    except (OSError, ValueError) as e:
        raise UsageError(f"{origin}: {value!r} is not a usable path: {e}") from None


def resolve(
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    project_dir: Path | None = None,
) -> VmSettings:
    """Merge the four layers into one `VmSettings`. Raises UsageError on bad values."""
    env = os.environ if env is None else env
    project = Path(project_dir or Path.cwd()).resolve()
    env_layer = {key: env.get(var) for key, (var, _kind) in _SOURCES.items() if env.get(var)}
    config = _without_registered_arch_defaults(config or {})
    arch = _chosen_arch(config, env_layer, flags or {})
    defaults = _defaults(arch)
    values = dict(defaults)
    port_explicit = False
    layers = (
        (config, lambda key: f"invoke config vm.{key}"),
        (env_layer, lambda key: _SOURCES[key][0]),
        (flags or {}, lambda key: f"--{key.replace('_', '-')}"),
    )
    for index, (layer, origin) in enumerate(layers):
        for key, raw in layer.items():
            if key not in _SOURCES:
                known = ", ".join(_SOURCES)
                raise UsageError(f"{origin(key)}: unknown setting (known: {known})")
            if raw is not None:
                values[key] = _convert(key, raw, origin(key))
                # The config layer holds the registered defaults too: only a port other
                # than the default counts as asked for there.
                from_config = index == 0
                if key == "ssh_port" and not (from_config and values[key] == defaults[key]):
                    port_explicit = True

    values["arch"] = arch
    if values["firmware"] in FIRMWARE_CHOICES:
        values["firmware"] = FirmwareMode(values["firmware"])
    else:
        # A path: relative ones are from the project dir, like the other paths.
        values["firmware"] = _path(values["firmware"], "QEMU_VM_FIRMWARE", project)
    if values["firmware"] == FirmwareMode.BIOS and arch == "arm64":
        raise UsageError(
            "QEMU_VM_FIRMWARE: 'bios' (SeaBIOS) is x86 only; arm64 guests boot through "
            "UEFI or their own kernel (auto, uefi, or the path of a UEFI code image)"
        )
    if values["accel"] not in ACCELS:
        raise UsageError(f"QEMU_VM_ACCEL: {values['accel']!r} is not one of {', '.join(ACCELS)}")
    values["accel"] = Accel(values["accel"])
    if values["fs_mode"] not in FS_MODES:
        raise UsageError(f"QEMU_VM_FS: {values['fs_mode']!r} is not one of {', '.join(FS_MODES)}")
    values["fs_mode"] = FsMode(values["fs_mode"])
    if not 0 < values["ssh_port"] < 65536:
        raise UsageError(f"QEMU_VM_SSH_PORT: {values['ssh_port']} is not a TCP port")
    if not NAME_RE.fullmatch(values["name"]):
        raise UsageError(
            f"QEMU_VM_NAME: {values['name']!r} may hold only letters, digits, '-', '_' and '.' "
            "(ASCII, starting with a letter or digit, 63 characters at most)"
        )

    work = _path(values["work_dir"], "QEMU_VM_WORK_DIR", project, expand=False)
    target = (
        _path(values["target_dir"], "QEMU_VM_TARGET_DIR", project, expand=False)
        if values["target_dir"]
        else cargo_target_dir(project)
    )
    cache = (
        _path(values["image_cache_dir"], "QEMU_VM_IMAGE_CACHE")
        if values["image_cache_dir"]
        else Path(platformdirs.user_data_dir("patchbay")) / "qemu-images"
    )
    paths = {"work_dir", "target_dir", "image_cache_dir"}
    return VmSettings(
        **{k: v for k, v in values.items() if k not in paths},
        ssh_port_explicit=port_explicit,
        cpus_explicit="QEMU_VM_CPUS" in env or values["cpus"] != defaults["cpus"],
        project_dir=project,
        work_dir=work,
        target_dir=target,
        image_cache_dir=cache,
    )


def normalize_arch(value: str) -> str:
    """Debian's spelling of a guest arch; UsageError naming QEMU_VM_ARCH when unknown."""
    arch = ARCH_ALIASES.get(value.strip().lower(), value.strip().lower())
    if arch not in ARCHS:
        allowed = ", ".join([*ARCHS, *ARCH_ALIASES])
        raise UsageError(f"QEMU_VM_ARCH: {value!r} is not one of {allowed}")
    return arch


def _chosen_arch(*layers: Mapping[str, Any]) -> str:
    """The guest arch the layers ask for (the last one that sets it), else the host's.

    Resolved before the other settings, since the defaults of image_url and qemu_bin
    follow it."""
    arch = host_arch()
    for layer in layers:
        if layer.get("arch") is not None:
            arch = normalize_arch(str(layer["arch"]))
    return arch


def _without_registered_arch_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config layer without the host-arch defaults Invoke holds for us.

    `config_defaults` registers every key with Invoke, so the `vm:` section always
    carries the host arch's image_url and qemu_bin; kept, they would beat the defaults
    of an arch chosen with QEMU_VM_ARCH. A value equal to the registered default is
    taken as not set, as the registered ssh_port is."""
    registered = _defaults(host_arch())
    return {
        key: value
        for key, value in config.items()
        if not (key in (*_ARCH_DEPENDENT, "arch") and value == registered[key])
    }


def cargo_target_dir(project: Path) -> Path:
    """The cargo target dir of the workspace (`cargo metadata`), else `./target`."""
    if shutil.which("cargo") and (project / "Cargo.toml").exists():
        try:
            out = subprocess.run(
                ["cargo", "metadata", "--format-version", "1", "--no-deps"],
                cwd=project,
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            ).stdout
            return Path(json.loads(out)["target_directory"]).resolve()
        except (subprocess.SubprocessError, ValueError, KeyError):
            pass
    return (project / "target").resolve()


def tasks_file_dir(collection_name: str = "tasks") -> Path | None:
    """The folder of the tasks file Invoke loaded, else None.

    Invoke's loader imports the collection module under its configured name
    (`tasks.collection_name`, default `tasks`) into `sys.modules`; its file says where
    the project is, whichever subfolder Invoke was started from. A `tasks/` package
    counts from its parent folder, as Invoke's own project config lookup does.
    """
    module = sys.modules.get(collection_name)
    file = getattr(module, "__file__", None)
    if not file:
        return None
    folder = Path(file).resolve().parent
    return folder.parent if hasattr(module, "__path__") else folder


def project_dir_of(c: Any) -> Path:
    """The project dir of a task: `vm.project_dir` when configured, else the folder of
    the loaded tasks file, else the current dir (the `patchbay-vm` command)."""
    vm = c.config.get("vm", {}) or {}
    if vm.get("project_dir"):
        return _path(str(vm["project_dir"]), "invoke config vm.project_dir")
    tasks_cfg = c.config.get("tasks", {}) or {}
    return tasks_file_dir(tasks_cfg.get("collection_name") or "tasks") or Path.cwd()


def from_context(c: Any, **flags: Any) -> VmSettings:
    """Settings for a task: Invoke's `vm:` config section, the environment, the flags."""
    config = dict(c.config.get("vm", {}) or {})
    config.pop("project_dir", None)
    return resolve(config=config, flags=flags, project_dir=project_dir_of(c))
