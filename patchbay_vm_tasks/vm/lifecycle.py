"""The VM lifecycle: up, down, status, cleanup, list, destroy. Tasks and the CLI call these;
booting, resuming, the VM's record, ports and copies live in their own modules."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import UsageError, VmUnavailable
from ..settings import Accel, FsMode, VmSettings
from ..ui import count, say, spinner
from . import boot, guest, openssh, process, qmp, resume, savedstate, shares
from .qemu import guest_cpus
from .record import VmRecord, mounts_of
from .running import Vm, remove_transient, running_pid
from .state import StateDir, locked, state_of

# A QEMU that runs answers `query-status` at once; a warm `up` that waits longer for it
# would cost more than the SSH handshake it saves.
STATUS_TIMEOUT = 2.0

if TYPE_CHECKING:
    import fabric


def up(settings: VmSettings, recreate: bool = False, refresh: bool = False) -> Vm:
    """Boot the VM or reuse the running one; make sure the mounts are there.

    `refresh`: look for a newer base image now, not only on the first boot of the day,
    and test again an accelerator remembered as unable to run a guest (accel.py).
    """
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = VmRecord.read(state)
        if pid and recreate:
            say(f"stopping {settings.name} to recreate it")
            _stop(state, pid, record)
            pid = None
        if pid and record:
            _check_same_arch(settings, record)
            _check_same_fs_mode(settings, record)
            _check_same_mounts(settings, record)
            if _answers_without_ssh(settings, state, record):
                # The connection opens (one handshake) only when a task sends a command.
                return Vm(settings, record, None, booted=False)
            conn = _connect(state, record)
            # Provisioned when it booted; only make sure the shares are still mounted.
            script = shares.mount_script(settings.mounts(), record.fs_mode, settings.ssh_user)
            guest.run_root_script(conn, script, "mounting")
            return Vm(settings, record, conn, booted=False)
        remove_transient(state, record)
        if recreate:
            savedstate.discard(state)
            # A fresh disk gets fresh firmware boot entries too.
            for path in (state.disk, state.seed, state.efi_vars, state.root / "efi-code.fd"):
                path.unlink(missing_ok=True)
        else:
            vm = resume.resume(settings, state)
            if vm:
                return vm
        # A boot moves the disk on: a saved state no longer belongs to it.
        savedstate.discard(state)
        return boot.boot(settings, state, refresh)


def _answers_without_ssh(settings: VmSettings, state: StateDir, record: VmRecord) -> bool:
    """True when QEMU runs the guest (QMP), its helpers live, and the guest agent answers
    that every share is mounted: a warm `up` then needs no SSH handshake (about 1 s under
    TCG). False sends the caller down the SSH path, which also repairs the mounts."""
    if not record.guest_agent:
        return False  # an image without the agent (the official cloud image)
    marker = str(state.root)
    if not all(process.is_ours(pid, marker) for pid in record.helpers):
        return False
    try:
        reply = qmp.execute(record.qmp_address(state), "query-status", timeout=STATUS_TIMEOUT)
        if reply.get("return", {}).get("status") != "running":
            return False
        with qmp.guest_agent(record.qga_address(state)) as agent:
            if record.fs_mode == FsMode.NONE:
                agent.read_file(shares.COPIED_MARK)  # made at boot; raises when absent
                return True
            table = agent.read_file("/proc/self/mounts").decode(errors="replace")
            return shares.all_mounted(table, settings.mounts())
    except (OSError, ValueError, qmp.GuestAgentError):
        return False


def _check_same_fs_mode(settings: VmSettings, record: VmRecord) -> None:
    asked, running = settings.fs_mode, record.fs_mode
    if asked != FsMode.AUTO and asked != running:
        raise UsageError(
            f"VM {settings.name} runs with fs mode {running} and QEMU_VM_FS asks for {asked}; "
            f"run again with --recreate to restart it so, or `vm.down` first"
        )


def _check_same_arch(settings: VmSettings, record: VmRecord) -> None:
    running = record.arch
    if running != settings.arch:
        raise UsageError(
            f"VM {settings.name} runs an {running} guest and {settings.arch} is asked for "
            f"(QEMU_VM_ARCH); run again with --recreate, or `vm.down` and use another name"
        )


def _check_same_mounts(settings: VmSettings, record: VmRecord) -> None:
    wanted = mounts_of(settings)
    have = record.mounts
    if wanted != have:
        diff = [
            f"  {w.guest}: running with {h.host}, asked for {w.host}"
            for w, h in zip(wanted, have, strict=False)
            if w != h
        ]
        raise UsageError(
            f"VM {settings.name} is running with other shared folders:\n"
            + "\n".join(diff)
            + "\nRun again with --recreate to restart it with these, or `vm.down` first."
        )


def _connect(state: StateDir, record: VmRecord) -> fabric.Connection:
    conn = guest.connection(record.ssh_port, record.ssh_user, state.key, state.known_hosts)
    try:
        conn.open()
    except guest.transport_errors() as e:
        raise VmUnavailable(
            f"VM {record.name} runs (PID {record.pid}) but SSH on port "
            f"{record.ssh_port} does not answer: {e}. Try `vm.up --recreate`."
        ) from None
    return conn


def down(settings: VmSettings, poweroff: bool = False) -> str:
    """Stop the VM: save the guest so the next `up` resumes it, or (`poweroff`, or when
    it cannot be saved) shut it down."""
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = VmRecord.read(state)
        if not pid:
            removed = remove_transient(state, record)
            return f"VM {settings.name} is not running" + (
                f"; removed {len(removed)} stale file(s)" if removed else ""
            )
        assert record is not None  # running_pid found our QEMU, which has its record
        # Closed first, so that a saved guest keeps no half-open session of it.
        openssh.stop_master(state)
        why_not = "asked to power off" if poweroff else resume.why_not_saveable(record)
        if why_not is None:
            try:
                with spinner(f"saving {settings.name}"):
                    saved = resume.save_guest(state, pid, record)
            except savedstate.SaveFailed as e:
                why_not = f"saving it failed: {e}"
            else:
                remove_transient(state, record)
                return (
                    f"VM {settings.name} saved ({saved.size / 1e6:.0f} MB in "
                    f"{saved.seconds:.1f} s); the next vm.up resumes it"
                )
        how = _stop(state, pid, record)
        return f"VM {settings.name} stopped ({how}; not saved: {why_not}; the next vm.up boots)"


def _stop(state: StateDir, pid: int | None, record: VmRecord | None) -> str:
    how = "not running"
    if pid:
        qmp_address = (record or VmRecord()).qmp_address(state)
        with spinner("shutting the guest down"):
            how = process.shutdown(pid, qmp_address, str(state.root))
    remove_transient(state, record)
    return how


def cleanup(settings: VmSettings) -> str:
    state = state_of(settings)
    if not state.root.exists():
        return f"nothing to clean: {state.root} does not exist"
    with locked(state):
        if running_pid(state):
            return f"VM {settings.name} is running; nothing is stale (use `vm.down` to stop it)"
        removed = remove_transient(state, VmRecord.read(state))
    if not removed:
        return f"nothing stale in {state.root}"
    return f"removed {len(removed)} stale file(s): " + ", ".join(p.name for p in removed)


def status(settings: VmSettings) -> dict[str, Any]:
    state = state_of(settings)
    pid = running_pid(state)
    record = (VmRecord.read(state) if pid else None) or VmRecord()
    mounts = record.mounts or mounts_of(settings)
    return {
        "name": settings.name,
        "version": __version__,
        "running": bool(pid),
        "pid": pid,
        "arch": (record.arch or "amd64") if pid else None,
        "ssh_port": record.ssh_port,
        "ssh_user": settings.ssh_user if record.ssh_user is None else record.ssh_user,
        "accel": None if record.accel is None else str(record.accel),
        "fs_mode": None if record.fs_mode is None else str(record.fs_mode),
        "state_dir": str(state.root),
        "mounts": [m.to_json() for m in mounts],
        "base_image": record.base_image,
        "started_at": record.started_at,
        # What this task resolved (flags, env, config, defaults): useful when stopped too.
        "settings": settings.asked_for(),
    }


def format_status(info: dict[str, Any]) -> str:
    lines = [
        f"name:      {info['name']}",
        f"state:     {'running' if info['running'] else 'not running'}"
        + (f" (PID {info['pid']})" if info["pid"] else ""),
        f"state dir: {info['state_dir']}",
    ]
    if info["running"]:
        lines += [
            f"ssh:       {info['ssh_user']}@127.0.0.1 port {info['ssh_port']}",
            f"arch:      {info['arch']}",
            f"accel:     {info['accel']}",
            f"fs mode:   {info['fs_mode']}",
        ]
    elif asked := info.get("settings"):
        port = f"{asked['ssh_port']}" + ("" if asked["ssh_port_explicit"] else " (default)")
        lines += [
            f"would use: {_cpus_text(asked)}, {asked['mem_mb']} MB, {asked['arch']}, "
            f"ssh port {port}",
            f"image:     {asked['image_url']}",
        ]
    lines.append(f"version:   patchbay-vm-tasks {info['version']}")
    lines.append("mounts:")
    lines += [f"  {m['guest']:<8} <- {m['host']} ({m['access']})" for m in info["mounts"]]
    return "\n".join(lines)


def _cpus_text(asked: dict[str, Any]) -> str:
    """The CPUs a boot would give: the asked-for count, and what software emulation caps
    a default count to on this host (qemu.guest_cpus; the accelerator is chosen at boot)."""
    text = count(asked["cpus"], "CPU")
    capped = guest_cpus(asked["cpus"], Accel.TCG, asked["cpus_explicit"])
    if capped != asked["cpus"]:
        text += f" ({capped} under software emulation on this {os.cpu_count()}-core host)"
    return text


def running_record(settings: VmSettings) -> VmRecord:
    """The record of the running VM; VmUnavailable when it is not running."""
    state = state_of(settings)
    pid = running_pid(state)
    record = VmRecord.read(state)
    if not pid or not record:
        raise VmUnavailable(f"VM {settings.name} is not running; start it with `vm.up`")
    return record


def require_running(settings: VmSettings) -> Vm:
    """Connect to the running VM without booting it (`vm.cp`; `vm.ssh` without OpenSSH)."""
    record = running_record(settings)
    return Vm(settings, record, _connect(state_of(settings), record), booted=False)


def list_vms(project_dir: Path) -> list[dict[str, Any]]:
    """The VMs with a state dir under `.qemu-vm/` of the project, running or not."""
    vms = []
    for root in sorted((project_dir / ".qemu-vm").glob("*/")):
        state = StateDir(root)
        pid = running_pid(state)
        record = (VmRecord.read(state) if pid else None) or VmRecord()
        vms.append(
            {
                "name": root.name,
                "state": "running" if pid else "stopped",
                "pid": pid,
                "ssh_port": record.ssh_port,
                "last_ssh_port": state.read_last_port(),
                "state_dir": str(root),
            }
        )
    return vms


def format_list(vms: list[dict[str, Any]]) -> str:
    if not vms:
        return "no VMs in this project (.qemu-vm/ is empty or absent)"
    lines = [f"{'NAME':<20} {'STATE':<8} {'PORT':<6} STATE DIR"]
    for v in vms:
        port = v["ssh_port"] or "-"
        lines.append(f"{v['name']:<20} {v['state']:<8} {port!s:<6} {v['state_dir']}")
    return "\n".join(lines)


def destroy(settings: VmSettings) -> str:
    """Stop the VM if it runs, then delete its state dir (disk, keys, logs). The shared
    base image cache stays."""
    state = state_of(settings)
    if not state.root.is_dir():
        return f"VM {settings.name} has no state dir ({state.root}); nothing to destroy"
    with locked(state):
        pid = running_pid(state)
        stopped = _stop(state, pid, VmRecord.read(state)) if pid else None
        files = [p for p in state.root.rglob("*") if p.is_file() and p != state.lockfile]
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(state.root)
    with contextlib.suppress(OSError):
        state.root.parent.rmdir()  # .qemu-vm/, when that was the last VM of the project
    if not files and not stopped:
        return f"VM {settings.name} was never booted here; removed its empty {state.root}"
    did = f"stopped it ({stopped}), " if stopped else ""
    return (
        f"VM {settings.name}: {did}removed {state.root} "
        f"({count(len(files), 'file')}, {size / 1e6:.1f} MB)"
    )
