"""What a boot and a resume both do to start a VM's QEMU: the key pairs, the cloud-init
seed, Windows' control ports, the QEMU spec of the settings and the record, and starting
QEMU with the record written."""

from __future__ import annotations

import contextlib
import os
import sys
import time

from ..settings import VmSettings
from . import cloudinit, keys, ports, process, qemu
from .images import BaseImage
from .record import VmRecord
from .state import StateDir


def keypairs(settings: VmSettings, state: StateDir) -> tuple[keys.KeyPair, keys.KeyPair]:
    """The VM's client key and its guest host key, made on its first boot."""
    client = keys.ensure_keypair(state.key, f"patchbay-vm-{settings.name}")
    host = keys.ensure_keypair(state.host_key, f"root@{settings.name}")
    return client, host


def write_seed(
    settings: VmSettings, state: StateDir, client: keys.KeyPair, host: keys.KeyPair
) -> str:
    """Write the seed ISO when its contents changed; returns its instance id."""
    seed, instance_id = render_seed(settings, client, host)
    if state.seed.exists():
        with contextlib.suppress(Exception):  # unreadable: written again
            if cloudinit.read_seed_iso(state.seed) == seed:
                # Unchanged: the file a saved guest state was made with stays as it was.
                return instance_id
    cloudinit.write_seed_iso(seed, state.seed)
    return instance_id


def render_seed(
    settings: VmSettings, client: keys.KeyPair, host: keys.KeyPair
) -> tuple[dict[str, str], str]:
    """The seed's files and its instance id."""
    templates = cloudinit.template_dir(settings.project_dir)
    values: dict[str, str | int] = {
        "user": settings.ssh_user,
        "uid": guest_uid(),
        "hostname": settings.name,
        "authorized_key": client.public_line,
        "host_private_key": host.private_text,
        "host_public_key": host.public_line,
        "instance_id": "",
    }
    # The instance id follows the keys and the user-data, so a changed seed is
    # applied again on a kept disk (SPEC 9.7).
    probe = cloudinit.render_seed(templates, values)
    values["instance_id"] = "iid-patchbay-" + keys.fingerprint(
        client.public_line, host.public_line, probe["user-data"], probe["network-config"]
    )
    return cloudinit.render_seed(templates, values), str(values["instance_id"])


def guest_uid() -> int:
    """The guest user's uid: the host user's when that is a normal user's.

    Shared folders pass uids through, so matching them makes the guest user the
    owner of the host user's files.
    """
    uid = os.getuid()
    return uid if 1000 <= uid < 60000 else 1000


def control_ports(platform: str = sys.platform) -> tuple[int | None, int | None]:
    """(QMP's port, the guest agent's port). QEMU for Windows: loopback TCP ports (no
    unix sockets there); elsewhere they are unix sockets in the state dir: no port."""
    if platform != "win32":
        return None, None
    return ports.free_port(), ports.free_port()


def qemu_spec(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
    extra: tuple[str, ...] = (),
) -> qemu.QemuSpec:
    """The QEMU of this VM: the settings, the state dir's files, what the record says."""
    return qemu.QemuSpec(
        qemu_bin=settings.qemu_bin,
        name=settings.name,
        arch=settings.arch,
        accel=record.accel,
        mem_mb=settings.mem_mb,
        cpus=record.cpus,
        disk=state.disk,
        seed=state.seed,
        ssh_port=record.ssh_port,
        pidfile=state.pidfile,
        serial_log=state.serial_log,
        qmp_socket=state.qmp_socket,
        qga_socket=state.qga_socket,
        fs_mode=record.fs_mode,
        shares=tuple(share_list),
        base=base,
        extra=extra,
        firmware=record.firmware,
        qmp_port=record.qmp_port,
        qga_port=record.qga_port,
        seed_attached=not record.seed_hotplug,
    )


def start_qemu(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
    extra: tuple[str, ...] = (),
) -> None:
    """Start QEMU as the record says; the record gets its PID, start time and command
    line, and is written."""
    spec = qemu_spec(settings, state, base, record, share_list, extra)
    state.serial_log.unlink(missing_ok=True)
    argv = qemu.build_argv(spec)  # pure: the argv `start` runs
    pid = process.start(spec)
    record.pid, record.started_at, record.qemu_argv = pid, time.time(), argv
    record.write(state)
