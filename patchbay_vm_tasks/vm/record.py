"""The record of a running VM: `runtime.json` in its state dir.

Boot and resume write it as the VM starts; every task that uses the VM reads it (the SSH
port, the accelerator, the shares, what `vm.down` needs to save the guest). Its JSON form
is written and read here only, with the base image's.

A record written by an earlier version of this tool (a VM it started may still run) is
read as that version's readers took it: a key it lacks reads as absent (None, False, an
empty list), and `arch` as amd64, the only guest there was before the setting.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..files import write_atomic
from ..settings import Accel, FsMode, VmSettings
from .firmware import Pflash
from .images import BaseImage
from .qemu import Address, socket_address
from .state import StateDir


@dataclass(frozen=True)
class Mount:
    """One shared folder as the VM runs with it."""

    guest: str  # /app, /target, /work
    host: str  # the host folder, as resolved when the VM started
    access: str  # ro | rw

    def to_json(self) -> dict[str, str]:
        return {"guest": self.guest, "host": self.host, "access": self.access}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mount:
        return cls(str(data["guest"]), str(data["host"]), str(data["access"]))


def mounts_of(settings: VmSettings) -> list[Mount]:
    """The shares `settings` ask for, as a record holds them."""
    return [Mount(guest, str(host), access) for guest, host, access in settings.mounts()]


def base_to_json(base: BaseImage) -> dict[str, Any]:
    return {
        "disk": str(base.disk),
        "format": base.format,
        "kernel": str(base.kernel) if base.kernel else None,
        "initrd": str(base.initrd) if base.initrd else None,
        "cmdline": base.cmdline,
    }


def base_from_json(data: dict[str, Any]) -> BaseImage:
    return BaseImage(
        disk=Path(data["disk"]),
        format=data["format"],
        kernel=Path(data["kernel"]) if data.get("kernel") else None,
        initrd=Path(data["initrd"]) if data.get("initrd") else None,
        cmdline=data.get("cmdline", ""),
    )


# What `vm.down` keeps of the record beside a saved guest, and a resume takes over from
# it: the guest's hardware and what it was made from (the rest follows the settings).
SAVED_KEYS = ("accel", "cpus", "fs_mode", "base", "image_url", "accel_asked", "arch", "firmware")
# Keys written only when set (not None): a Windows host's control ports; what a record
# holds only once QEMU runs, or once the guest answers; what only a boot records (the
# seed's hot-plug, its SSH wait) or only a resume (its time).
_WHEN_SET = (
    "qmp_port", "qga_port", "seed_hotplug", "pid", "started_at", "qemu_argv",
    "ssh_ready_seconds", "guest_agent", "resume_seconds",
)  # fmt: skip
# Keys written only when true.
_WHEN_TRUE = ("from_template", "resumed")


@dataclass
class VmRecord:
    """A running VM, as boot or resume started it. Fields are in the JSON's key order."""

    name: str = ""
    ssh_port: int | None = None
    ssh_user: str | None = None
    accel: Accel | None = None  # the accelerator it runs under (never auto)
    cpus: int | None = None
    fs_mode: FsMode | None = None  # how its shares are made (never auto)
    mounts: list[Mount] = field(default_factory=list)
    base_image: str | None = None  # the base image's disk (`vm.status`)
    base: BaseImage | None = None
    image_url: str | None = None
    accel_asked: Accel | None = None  # QEMU_VM_ACCEL when it started (may be auto)
    seed_id: str | None = None  # the cloud-init seed's instance id
    arch: str = "amd64"
    firmware: Pflash | None = None  # UEFI's two flash files; None: -kernel or SeaBIOS
    # Windows: QMP and the guest agent on loopback TCP ports (elsewhere unix sockets).
    qmp_port: int | None = None
    qga_port: int | None = None
    helpers: list[int] = field(default_factory=list)  # the virtiofsd PIDs
    # The guest started without its seed, which is hot-plugged at the gate
    # (templates.py); None: not recorded (a resumed guest's record).
    seed_hotplug: bool | None = None
    pid: int | None = None  # QEMU's
    started_at: float | None = None  # time.time() when QEMU started
    qemu_argv: list[str] | None = None  # what runs, as a later save binds its state to
    from_template: bool = False
    ssh_ready_seconds: float | None = None
    guest_agent: bool | None = None  # whether the guest agent answers
    resumed: bool = False
    resume_seconds: float | None = None

    # --- the JSON form ----------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The record as runtime.json holds it."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if (f.name in _WHEN_SET and value is None) or (f.name in _WHEN_TRUE and not value):
                continue
            out[f.name] = _plain(f.name, value)
        return out

    @classmethod
    def from_json(cls, data: Any) -> VmRecord:
        """A record from its JSON form (or from a part of it: `saved_json`). ValueError,
        TypeError or KeyError when it is not one."""
        if not isinstance(data, dict):
            raise ValueError("a VM record is a JSON object")
        known = {f.name for f in fields(cls)}
        values = {k: _typed(k, v) for k, v in data.items() if k in known and v is not None}
        return cls(**values)

    def saved_json(self) -> dict[str, Any]:
        """What `vm.down` keeps beside a saved guest (SAVED_KEYS), as JSON."""
        return {k: v for k, v in self.to_json().items() if k in SAVED_KEYS}

    @classmethod
    def read(cls, state: StateDir) -> VmRecord | None:
        """The state dir's record; None when there is none or it cannot be read."""
        try:
            data = json.loads(state.runtime.read_text())
            return cls.from_json(data) if data else None  # `{}`: no record
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def write(self, state: StateDir) -> None:
        write_atomic(state.runtime, (json.dumps(self.to_json(), indent=2) + "\n").encode())

    # --- where it listens -------------------------------------------------------------

    def qmp_address(self, state: StateDir) -> Address:
        """QMP: the state dir's unix socket; a loopback TCP port on Windows (QEMU there)."""
        return socket_address(self.qmp_port, state.qmp_socket)

    def qga_address(self, state: StateDir) -> Address:
        return socket_address(self.qga_port, state.qga_socket)


def _plain(name: str, value: Any) -> Any:
    """A field's value as JSON holds it."""
    if value is None:
        return None
    if name == "mounts":
        return [m.to_json() for m in value]
    if name == "base":
        return base_to_json(value)
    if name == "firmware":
        return [str(value.code), str(value.vars)]
    if name in ("accel", "accel_asked", "fs_mode"):
        return str(value)
    if name in ("helpers", "qemu_argv"):
        return list(value)
    return value


def _typed(name: str, value: Any) -> Any:
    """A JSON value as the field holds it."""
    if name == "mounts":
        return [Mount.from_json(m) for m in value]
    if name == "base":
        return base_from_json(value)
    if name == "firmware":
        code, vars_ = value
        return Pflash(Path(code), Path(vars_))
    if name in ("accel", "accel_asked"):
        return Accel(value)
    if name == "fs_mode":
        return FsMode(value)
    if name in ("helpers", "qemu_argv"):
        return list(value)
    return value
