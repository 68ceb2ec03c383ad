"""Saving a guest at `vm.down` and resuming it at `vm.up` (the rules are in savedstate.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import time

from ..errors import VmUnavailable
from ..settings import Accel, FsMode, VmSettings
from ..ui import say, spinner, warn
from . import guest, keys, ports, process, qemu, savedstate, shares
from .record import VmRecord, mounts_of
from .running import BootInterrupted, Vm, remove_transient
from .start import control_ports, keypairs, qemu_spec, render_seed, start_qemu
from .state import StateDir

RESUME_ARGS = savedstate.RESUME_ARGS


# virtiofs cannot be saved (vhost-user-fs does not migrate, and its shared memory makes
# a restore slow); 9p can once unmounted, and a guest without shares always can.
SAVEABLE_FS_MODES = (FsMode.NINEP, FsMode.NONE)


def _fingerprint(settings: VmSettings, spec: qemu.QemuSpec, record: VmRecord) -> dict:
    argv = qemu.build_argv(dataclasses.replace(spec, extra=()))
    version = qemu.version(settings.qemu_bin)
    return savedstate.fingerprint(
        argv, _ports(record), version, _base_files(record), record.seed_id
    )


def _resume_mismatch(settings: VmSettings, saved: VmRecord) -> str | None:
    """What the settings ask for that the saved guest cannot be (beyond its command line)."""
    if settings.arch != saved.arch:
        return f"the guest is {saved.arch}, {settings.arch} is asked for"
    if settings.image_url != saved.image_url:
        return f"the image changed ({saved.image_url} -> {settings.image_url})"
    if settings.accel not in (Accel.AUTO, saved.accel):
        return f"QEMU_VM_ACCEL asks for {settings.accel}; it was saved under {saved.accel}"
    asked_fs = settings.fs_mode
    if asked_fs != saved.fs_mode and (asked_fs != FsMode.AUTO or saved.fs_mode == FsMode.NONE):
        return f"QEMU_VM_FS asks for {settings.fs_mode}; it was saved with {saved.fs_mode}"
    return None


def resume(settings: VmSettings, state: StateDir) -> Vm | None:
    """Resume the guest `vm.down` saved; None (saying why) when there is none to resume
    or it cannot be, and the caller boots."""
    meta, broken = savedstate.read(state)
    if meta is None:
        if broken:
            warn(f"not resuming {settings.name}: {broken}; booting it")
        return None
    try:
        saved = VmRecord.from_json(meta["record"])
    except (ValueError, TypeError, KeyError):
        saved = None
    base = saved.base if saved else None
    if saved is None or base is None:
        warn(f"not resuming {settings.name}: its record is unreadable; booting it")
        return None
    why = _resume_mismatch(settings, saved)
    started = time.monotonic()
    record = dataclasses.replace(
        saved,
        name=settings.name,
        ssh_user=settings.ssh_user,
        mounts=mounts_of(settings),
        base_image=str(base.disk),
        helpers=[],
    )
    share_list = shares.make_shares(settings.mounts(), record.fs_mode, state.root)
    if why is None:
        client_key, host_key = keypairs(settings, state)
        _, record.seed_id = render_seed(settings, client_key, host_key)
        record.ssh_port = ports.pick_ssh_port(
            settings.ssh_port, settings.ssh_port_explicit, state.read_last_port()
        )
        record.qmp_port, record.qga_port = control_ports()
        spec = qemu_spec(settings, state, base, record, share_list)
        why = savedstate.difference(meta["fingerprint"], _fingerprint(settings, spec, record))
    if why:
        warn(f"not resuming {settings.name}: {why}; booting it")
        return None
    state.last_port.write_text(f"{record.ssh_port}\n")
    keys.write_known_hosts(state.known_hosts, record.ssh_port, host_key)
    marker = str(state.root)
    try:
        with contextlib.ExitStack() as owned:
            start_qemu(settings, state, base, record, share_list, extra=RESUME_ARGS)
            qmp_address = record.qmp_address(state)
            owned.callback(process.quit_now, record.pid, qmp_address, marker)
            with spinner(f"resuming {settings.name}"):
                version = meta["fingerprint"]["qemu_version"]
                savedstate.restore(state.saved_state, qmp_address, version)
                # From here the disk moves on: the state must never be loaded again.
                savedstate.discard(state)
                savedstate.run_guest(qmp_address)
                # The fstab lines and sysctl of the boot are in the saved guest already.
                remount = f"mount -a -t 9p -O {shares.FSTAB_MARK}"
                remount = remount if saved.fs_mode == FsMode.NINEP else ""
                savedstate.refresh_guest(record.qga_address(state), remount)
            record.guest_agent, record.resumed = True, True
            record.resume_seconds = round(time.monotonic() - started, 2)
            record.write(state)
            owned.pop_all()
    except KeyboardInterrupt:
        savedstate.discard(state)
        remove_transient(state, VmRecord.read(state) or record)
        raise BootInterrupted(f"interrupted: stopped {settings.name} while resuming it") from None
    except (savedstate.RestoreFailed, VmUnavailable, OSError, ValueError) as e:
        savedstate.discard(state)
        remove_transient(state, VmRecord.read(state) or record)
        warn(f"resuming {settings.name} failed ({e}); booting it instead")
        return None
    say(
        f"VM {settings.name} resumed after {record.resume_seconds:.1f} s "
        f"(accel {record.accel}, {record.fs_mode}, ssh port {record.ssh_port})"
    )
    conn = guest.connection(record.ssh_port, record.ssh_user, state.key, state.known_hosts)
    return Vm(settings, record, conn, booted=True)


def why_not_saveable(record: VmRecord) -> str | None:
    if record.fs_mode not in SAVEABLE_FS_MODES:
        return f"its shares are {record.fs_mode}, which cannot be saved (QEMU_VM_FS=9p can)"
    if not record.guest_agent:
        return "its image has no QEMU guest agent"
    if record.seed_id is None or record.base is None:
        return "it was booted by an older version of this tool"
    return None


def save_guest(state: StateDir, pid: int, record: VmRecord) -> savedstate.Saved:
    """Save the running guest; the state is bound to what really runs (its record)."""
    argv = list(record.qemu_argv or ())
    if tuple(argv[-len(RESUME_ARGS) :]) == RESUME_ARGS:
        argv = argv[: -len(RESUME_ARGS)]  # a resumed guest: its hardware without them
    version = qemu.version(argv[0])
    fp = savedstate.fingerprint(argv, _ports(record), version, _base_files(record), record.seed_id)
    if record.fs_mode == FsMode.NINEP:
        savedstate.unmount_shares(record.qga_address(state), [m.guest for m in record.mounts])
    kept = {"record": record.saved_json()}
    return savedstate.save(state, record.qmp_address(state), pid, fp, kept)


def _ports(record: VmRecord) -> dict[str, int]:
    """The host ports in the command line, which a restore may change."""
    found = {"ssh_port": record.ssh_port, "qmp_port": record.qmp_port, "qga_port": record.qga_port}
    return {name: port for name, port in found.items() if port}


def _base_files(record: VmRecord) -> list[str]:
    """What the guest reads but never writes: the base image, kernel, initrd, firmware."""
    base = record.base
    assert base is not None  # why_not_saveable: a record without its base is not saved
    code = record.firmware.code if record.firmware else None
    return [str(p) for p in (base.disk, base.kernel, base.initrd, code) if p]
