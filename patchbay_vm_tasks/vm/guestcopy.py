"""Reaching the guest from outside a task: an OpenSSH config block, one-file copies (SFTP)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import TaskError, UsageError, VmUnavailable
from ..settings import VmSettings
from . import guest, lifecycle, openssh
from .ports import LOOPBACK
from .state import state_of

if TYPE_CHECKING:
    import fabric


def _ssh_value(value: str) -> str:
    # ssh_config takes double-quoted arguments; quote only where a space needs it.
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def ssh_config_text(name: str, port: int, user: str, key: Path, known_hosts: Path) -> str:
    """An OpenSSH `Host` block for the VM: the pinned host key, checked strictly."""
    lines = [
        f"Host {name}",
        f"  HostName {LOOPBACK}",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {_ssh_value(str(key))}",
    ]
    pinned = openssh.pinned_options(known_hosts)
    lines += [f"  {name} {_ssh_value(value)}" for name, value in pinned]
    return "\n".join(lines) + "\n"


def ssh_config(settings: VmSettings) -> str:
    """The `Host` block of the running VM (`ssh -F FILE NAME`, `scp -F`, `rsync -e`)."""
    record = lifecycle.running_record(settings)
    state = state_of(settings)
    return ssh_config_text(
        settings.name, record.ssh_port, record.ssh_user, state.key, state.known_hosts
    )


GUEST_PREFIX = "guest:"


class Direction(Enum):
    TO_GUEST = "put"
    FROM_GUEST = "get"


@dataclass(frozen=True)
class CopyPlan:
    direction: Direction
    local: Path
    remote: str  # relative paths are from the guest user's home


def plan_copy(src: str, dst: str) -> CopyPlan:
    """Which way `vm.cp SRC DST` copies; exactly one side has the `guest:` prefix."""
    src_guest, dst_guest = src.startswith(GUEST_PREFIX), dst.startswith(GUEST_PREFIX)
    if src_guest == dst_guest:
        raise UsageError(
            "vm.cp: exactly one of SRC and DST must be a guest path written guest:PATH "
            f"(got {src!r} and {dst!r})"
        )
    if dst_guest:
        local, remote = Path(src).expanduser(), _remote_path(dst)
        if local.is_dir():
            raise UsageError(
                f"vm.cp: {src} is a directory; vm.cp copies single files "
                f"(put it under the work dir, shared as /work, or copy a tar file)"
            )
        if not local.is_file():
            raise UsageError(f"vm.cp: no file at {src}")
        return CopyPlan(Direction.TO_GUEST, local, remote)
    remote = _remote_path(src)
    if not remote:
        raise UsageError("vm.cp: give the guest file to copy: guest:PATH")
    return CopyPlan(Direction.FROM_GUEST, Path(dst).expanduser(), remote)


def _remote_path(spec: str) -> str:
    path = spec[len(GUEST_PREFIX) :]
    # SFTP paths start at the home folder and know no `~`.
    if path == "~":
        return ""
    return path[2:] if path.startswith("~/") else path


def copy(conn: fabric.Connection, plan: CopyPlan) -> str:
    """Copy one file over the task's SSH connection (SFTP); returns what was done."""
    shown = GUEST_PREFIX + (plan.remote or "~")
    try:
        if plan.direction is Direction.FROM_GUEST:
            mode = conn.sftp().stat(plan.remote).st_mode or 0
            if stat.S_ISDIR(mode):
                raise UsageError(
                    f"vm.cp: {shown} is a directory; vm.cp copies single files "
                    f"(write it under /work, shared with the host, or tar it first)"
                )
            local = str(plan.local) + (os.sep if plan.local.is_dir() else "")
            # Fabric fills {host}-style fields in the local path; keep braces literal.
            result = conn.get(plan.remote, local.replace("{", "{{").replace("}", "}}"))
            target = Path(result.local)
            return f"copied {shown} to {target} ({target.stat().st_size} bytes)"
        result = conn.put(str(plan.local), plan.remote or None)
        return f"copied {plan.local} to {GUEST_PREFIX}{result.remote}"
    except FileNotFoundError:
        where = shown if plan.direction is Direction.FROM_GUEST else f"the folder of {shown}"
        raise UsageError(f"vm.cp: {where} does not exist in the guest") from None
    except PermissionError:
        raise TaskError(
            f"vm.cp: permission denied on {shown}: the copy runs as the guest user; copy "
            f"to /tmp and move it with `vm.ssh -- sudo mv ...`"
        ) from None
    except guest.transport_errors() as e:
        raise VmUnavailable(f"vm.cp: lost the connection to the guest: {e}") from None
