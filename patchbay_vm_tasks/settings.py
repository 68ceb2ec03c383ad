"""One frozen settings object, resolved once per task.

Precedence, lowest first (SPEC 3): built-in defaults, the `vm:` section of
Invoke's config files, `QEMU_VM_*` environment variables, task flags.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .errors import UsageError

DEBIAN_IMAGE_DIR = "https://cloud.debian.org/images/cloud/trixie/latest"
ACCELS = ("auto", "kvm", "hvf", "tcg")
FS_MODES = ("auto", "virtiofs", "9p")


def host_arch(machine: str | None = None) -> str:
    """The guest arch we boot: the host's, in Debian's spelling."""
    m = (machine or platform.machine()).lower()
    return "arm64" if m in ("arm64", "aarch64") else "amd64"


def default_image_url(arch: str) -> str:
    # The `generic` image, not `genericcloud`: the cloud kernel has no 9p (SPEC 9.2).
    return f"{DEBIAN_IMAGE_DIR}/debian-13-generic-{arch}.qcow2"


def default_qemu_bin(arch: str) -> str:
    return "qemu-system-aarch64" if arch == "arm64" else "qemu-system-x86_64"


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
    accel: str
    fs_mode: str
    project_dir: Path
    work_dir: Path
    target_dir: Path
    image_cache_dir: Path
    debian_mirror: str
    boot_timeout: float
    arch: str

    @property
    def state_dir(self) -> Path:
        return self.project_dir / ".qemu-vm" / self.name

    def mounts(self) -> list[tuple[str, Path, str]]:
        """(guest path, host path, access) of the three shares (SPEC 5)."""
        return [
            ("/app", self.project_dir, "ro"),
            ("/target", self.target_dir, "ro"),
            ("/work", self.work_dir, "rw"),
        ]


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
}


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
        "accel": "auto",
        "fs_mode": "auto",
        "work_dir": ".patchbay-work",
        "target_dir": None,
        "image_cache_dir": None,
        "debian_mirror": "http://deb.debian.org/debian",
        "boot_timeout": 600.0,
    }


def _convert(key: str, value: Any, origin: str) -> Any:
    kind = _SOURCES[key][1]
    try:
        converted = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"{origin}: {value!r} is not a valid {kind.__name__}") from None
    if kind in (int, float) and converted <= 0:
        raise UsageError(f"{origin}: must be greater than zero, got {value!r}")
    return converted


def resolve(
    config: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    project_dir: Path | None = None,
) -> VmSettings:
    """Merge the four layers into one `VmSettings`. Raises UsageError on bad values."""
    env = os.environ if env is None else env
    project = Path(project_dir or Path.cwd()).resolve()
    arch = host_arch()
    values = _defaults(arch)
    port_explicit = False
    env_layer = {key: env.get(var) for key, (var, _kind) in _SOURCES.items() if env.get(var)}
    layers = (
        (config or {}, lambda key: f"invoke config vm.{key}"),
        (env_layer, lambda key: _SOURCES[key][0]),
        (flags or {}, lambda key: f"--{key.replace('_', '-')}"),
    )
    for layer, origin in layers:
        for key, raw in layer.items():
            if key not in _SOURCES:
                known = ", ".join(_SOURCES)
                raise UsageError(f"{origin(key)}: unknown setting (known: {known})")
            if raw is not None:
                values[key] = _convert(key, raw, origin(key))
                port_explicit |= key == "ssh_port"

    if values["accel"] not in ACCELS:
        raise UsageError(f"QEMU_VM_ACCEL: {values['accel']!r} is not one of {', '.join(ACCELS)}")
    if values["fs_mode"] not in FS_MODES:
        raise UsageError(f"QEMU_VM_FS: {values['fs_mode']!r} is not one of {', '.join(FS_MODES)}")
    if not 0 < values["ssh_port"] < 65536:
        raise UsageError(f"QEMU_VM_SSH_PORT: {values['ssh_port']} is not a TCP port")
    if not values["name"].replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(
            f"QEMU_VM_NAME: {values['name']!r} may hold only letters, digits, '-', '_' and '.'"
        )

    work = (project / values["work_dir"]).resolve()
    target = (
        (project / values["target_dir"]).resolve()
        if values["target_dir"]
        else cargo_target_dir(project)
    )
    cache = (
        Path(values["image_cache_dir"]).expanduser().resolve()
        if values["image_cache_dir"]
        else Path(platformdirs.user_data_dir("patchbay")) / "qemu-images"
    )
    paths = {"work_dir", "target_dir", "image_cache_dir"}
    return VmSettings(
        **{k: v for k, v in values.items() if k not in paths},
        ssh_port_explicit=port_explicit,
        project_dir=project,
        work_dir=work,
        target_dir=target,
        image_cache_dir=cache,
        arch=arch,
    )


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


def from_context(c: Any, **flags: Any) -> VmSettings:
    """Settings for a task: Invoke's `vm:` config section, the environment, the flags."""
    config = dict(c.config.get("vm", {}) or {})
    # Invoke records where tasks.py was found; the project dir is that folder.
    prefix = getattr(c.config, "_project_prefix", None)
    project = config.pop("project_dir", None) or (Path(prefix) if prefix else None)
    return resolve(config=config, flags=flags, project_dir=project)
