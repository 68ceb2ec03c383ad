"""Saving a guest at `vm.down` and resuming it at `vm.up` (the rules are in savedstate.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any

from ..errors import VmUnavailable
from ..settings import VmSettings
from ..ui import say, spinner, warn
from . import (
    boot,
    guest,
    keys,
    ports,
    qemu,
    runtime,
    savedstate,
    shares,
)
from .images import BaseImage
from .state import StateDir

RESUME_ARGS = savedstate.RESUME_ARGS


# virtiofs cannot be saved (vhost-user-fs does not migrate, and its shared memory makes
# a restore slow); 9p can once unmounted, and a guest without shares always can.
SAVEABLE_FS_MODES = ("9p", "none")


# What a resume takes over from the saved guest's record (the rest follows the settings).
SAVED_RECORD_KEYS = (
    "accel", "cpus", "fs_mode", "base", "image_url", "accel_asked", "arch", "firmware",
)  # fmt: skip


def base_from_record(data: dict[str, Any]) -> BaseImage:
    return BaseImage(
        disk=Path(data["disk"]),
        format=data["format"],
        kernel=Path(data["kernel"]) if data.get("kernel") else None,
        initrd=Path(data["initrd"]) if data.get("initrd") else None,
        cmdline=data.get("cmdline", ""),
    )


def _fingerprint(settings: VmSettings, spec: qemu.QemuSpec, record: dict[str, Any]) -> dict:
    argv = qemu.build_argv(dataclasses.replace(spec, extra=()))
    version = qemu.version(settings.qemu_bin)
    return savedstate.fingerprint(
        argv, _ports(record), version, _base_files(record), record["seed_id"]
    )


def _resume_mismatch(settings: VmSettings, meta: dict[str, Any]) -> str | None:
    """What the settings ask for that the saved guest cannot be (beyond its command line)."""
    saved = meta["record"]
    if settings.arch != saved.get("arch", "amd64"):
        return f"the guest is {saved.get('arch')}, {settings.arch} is asked for"
    if settings.image_url != saved.get("image_url"):
        return f"the image changed ({saved.get('image_url')} -> {settings.image_url})"
    if settings.accel not in ("auto", saved["accel"]):
        return f"QEMU_VM_ACCEL asks for {settings.accel}; it was saved under {saved['accel']}"
    asked_fs = str(settings.fs_mode)
    if asked_fs != saved["fs_mode"] and (asked_fs != "auto" or saved["fs_mode"] == "none"):
        return f"QEMU_VM_FS asks for {settings.fs_mode}; it was saved with {saved['fs_mode']}"
    return None


def resume(settings: VmSettings, state: StateDir) -> runtime.Vm | None:
    """Resume the guest `vm.down` saved; None (saying why) when there is none to resume
    or it cannot be, and the caller boots."""
    meta, broken = savedstate.read(state)
    if meta is None:
        if broken:
            warn(f"not resuming {settings.name}: {broken}; booting it")
        return None
    why = _resume_mismatch(settings, meta)
    started = time.monotonic()
    saved = meta["record"]
    record: dict[str, Any] = {
        **{k: saved.get(k) for k in SAVED_RECORD_KEYS},
        "name": settings.name,
        "ssh_user": settings.ssh_user,
        "mounts": runtime.mount_record(settings),
        "base_image": saved["base"]["disk"],
        "helpers": [],
    }
    base = base_from_record(saved["base"])
    share_list = shares.make_shares(settings.mounts(), record["fs_mode"], state.root)
    if why is None:
        client_key, host_key = boot.keypairs(settings, state)
        _, record["seed_id"] = boot.render_seed(settings, client_key, host_key)
        record["ssh_port"] = ports.pick_ssh_port(
            settings.ssh_port, settings.ssh_port_explicit, state.read_last_port()
        )
        record.update(boot.control_ports())
        spec = boot.qemu_spec(settings, state, base, record, share_list)
        why = savedstate.difference(meta["fingerprint"], _fingerprint(settings, spec, record))
    if why:
        warn(f"not resuming {settings.name}: {why}; booting it")
        return None
    state.last_port.write_text(f"{record['ssh_port']}\n")
    keys.write_known_hosts(state.known_hosts, record["ssh_port"], host_key)
    marker = str(state.root)
    try:
        with contextlib.ExitStack() as owned:
            boot.start_qemu(settings, state, base, record, share_list, extra=RESUME_ARGS)
            qmp = runtime.qmp_address(state, record)
            owned.callback(qemu.quit_now, record["pid"], qmp, marker)
            with spinner(f"resuming {settings.name}"):
                savedstate.restore(state.saved_state, qmp, meta["fingerprint"]["qemu_version"])
                # From here the disk moves on: the state must never be loaded again.
                savedstate.discard(state)
                savedstate.run_guest(qmp)
                # The fstab lines and sysctl of the boot are in the saved guest already.
                remount = f"mount -a -t 9p -O {shares.FSTAB_MARK}"
                remount = remount if saved["fs_mode"] == "9p" else ""
                savedstate.refresh_guest(runtime.qga_address(state, record), remount)
            record.update(guest_agent=True, resumed=True)
            record["resume_seconds"] = round(time.monotonic() - started, 2)
            state.write_runtime(record)
            owned.pop_all()
    except KeyboardInterrupt:
        savedstate.discard(state)
        runtime.remove_transient(state, state.read_runtime() or record)
        raise runtime.BootInterrupted(
            f"interrupted: stopped {settings.name} while resuming it"
        ) from None
    except (savedstate.RestoreFailed, VmUnavailable, OSError, ValueError) as e:
        savedstate.discard(state)
        runtime.remove_transient(state, state.read_runtime() or record)
        warn(f"resuming {settings.name} failed ({e}); booting it instead")
        return None
    say(
        f"VM {settings.name} resumed after {record['resume_seconds']:.1f} s "
        f"(accel {record['accel']}, {record['fs_mode']}, ssh port {record['ssh_port']})"
    )
    conn = guest.connection(record["ssh_port"], record["ssh_user"], state.key, state.known_hosts)
    return runtime.Vm(settings, record, conn, booted=True)


def why_not_saveable(record: dict[str, Any]) -> str | None:
    if record.get("fs_mode") not in SAVEABLE_FS_MODES:
        return f"its shares are {record.get('fs_mode')}, which cannot be saved (QEMU_VM_FS=9p can)"
    if not record.get("guest_agent"):
        return "its image has no QEMU guest agent"
    if "seed_id" not in record or "base" not in record:
        return "it was booted by an older version of this tool"
    return None


def save_guest(state: StateDir, pid: int, record: dict[str, Any]) -> savedstate.Saved:
    """Save the running guest; the state is bound to what really runs (its record)."""
    argv = record["qemu_argv"]
    if tuple(argv[-len(RESUME_ARGS) :]) == RESUME_ARGS:
        argv = argv[: -len(RESUME_ARGS)]  # a resumed guest: its hardware without them
    version = qemu.version(argv[0])
    fp = savedstate.fingerprint(
        argv, _ports(record), version, _base_files(record), record["seed_id"]
    )
    if record["fs_mode"] == "9p":
        savedstate.unmount_shares(
            runtime.qga_address(state, record), [m["guest"] for m in record["mounts"]]
        )
    kept = {k: record.get(k) for k in SAVED_RECORD_KEYS}
    return savedstate.save(state, runtime.qmp_address(state, record), pid, fp, {"record": kept})


def _ports(record: dict[str, Any]) -> dict[str, int]:
    """The host ports in the command line, which a restore may change."""
    names = ("ssh_port", "qmp_port", "qga_port")
    return {name: record[name] for name in names if record.get(name)}


def _base_files(record: dict[str, Any]) -> list[str]:
    """What the guest reads but never writes: the base image, kernel, initrd, firmware."""
    base = record["base"]
    code = (record.get("firmware") or [None])[0]
    return [p for p in (base["disk"], base["kernel"], base["initrd"], code) if p]
