"""The VM lifecycle: up, down, status, cleanup. Tasks and the CLI call these."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fabric

from . import cloudinit, guest, keys, provision, qemu, shares
from .errors import UsageError, VmUnavailable
from .images import BaseImage, ensure_base_image
from .settings import VmSettings
from .state import StateDir, locked
from .ui import console, say, warn

# Under an auto-chosen accelerator other than TCG, a guest that has printed
# nothing on its serial console by then is taken as hung (SPEC 9.1).
ACCEL_STALL_SECONDS = 30.0


@dataclass
class Vm:
    """A running VM and the one connection this task keeps to it."""

    settings: VmSettings
    record: dict[str, Any]
    conn: fabric.Connection
    booted: bool  # False when an already running VM was reused

    def close(self) -> None:
        self.conn.close()


def state_of(settings: VmSettings) -> StateDir:
    return StateDir(settings.state_dir)


def running_pid(state: StateDir) -> int | None:
    """The PID of our QEMU when it is alive and really ours, else None."""
    pid = qemu.read_pid(state.pidfile)
    return pid if qemu.is_ours(pid, str(state.root)) else None


def mount_record(settings: VmSettings) -> list[dict[str, str]]:
    return [{"guest": g, "host": str(h), "access": a} for g, h, a in settings.mounts()]


# --- up --------------------------------------------------------------------------


def up(settings: VmSettings, recreate: bool = False) -> Vm:
    """Boot the VM or reuse the running one; make sure the mounts are there."""
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = state.read_runtime()
        if pid and recreate:
            say(f"stopping {settings.name} to recreate it")
            _stop(state, pid, record)
            pid = None
        if pid and record:
            _check_same_mounts(settings, record)
            conn = _connect(state, record)
            # Provisioned when it booted; only make sure the shares are still mounted.
            script = shares.mount_script(settings.mounts(), record["fs_mode"], settings.ssh_user)
            guest.run_root_script(conn, script, "mounting")
            return Vm(settings, record, conn, booted=False)
        _remove_transient(state, record)
        if recreate:
            for path in (state.disk, state.seed):
                path.unlink(missing_ok=True)
        return _boot(settings, state)


def _check_same_mounts(settings: VmSettings, record: dict[str, Any]) -> None:
    wanted = mount_record(settings)
    have = record.get("mounts", [])
    if wanted != have:
        diff = [
            f"  {w['guest']}: running with {h['host']}, asked for {w['host']}"
            for w, h in zip(wanted, have, strict=False)
            if w != h
        ]
        raise UsageError(
            f"VM {settings.name} is running with other shared folders:\n"
            + "\n".join(diff)
            + "\nRun again with --recreate to restart it with these, or `vm.down` first."
        )


def _connect(state: StateDir, record: dict[str, Any]) -> fabric.Connection:
    conn = guest.connection(record["ssh_port"], record["ssh_user"], state.key, state.known_hosts)
    try:
        conn.open()
    except guest.TRANSPORT_ERRORS as e:
        raise VmUnavailable(
            f"VM {record['name']} runs (PID {record.get('pid')}) but SSH on port "
            f"{record['ssh_port']} does not answer: {e}. Try `vm.up --recreate`."
        ) from None
    return conn


def _guest_script(settings: VmSettings, fs_mode: str) -> str:
    return (
        shares.mount_script(settings.mounts(), fs_mode, settings.ssh_user) + "\n" + provision.SCRIPT
    )


def _boot(settings: VmSettings, state: StateDir) -> Vm:
    started = time.monotonic()
    for _guest, host, _access in settings.mounts():
        host.mkdir(parents=True, exist_ok=True)
    base = ensure_base_image(
        settings.image_url, settings.image_cache_dir, settings.arch, settings.debian_mirror
    )
    client_key = keys.ensure_keypair(state.key, f"patchbay-vm-{settings.name}")
    host_key = keys.ensure_keypair(state.host_key, f"root@{settings.name}")
    _write_seed(settings, state, client_key, host_key)
    _ensure_disk(settings, state, base)
    port = pick_ssh_port(settings.ssh_port, settings.ssh_port_explicit)
    keys.write_known_hosts(state.known_hosts, port, host_key)
    accel, notes = qemu.choose_accel(settings.qemu_bin, settings.accel, settings.arch)
    for note in notes:
        warn(note)
    fs_mode, daemon, fs_why = shares.choose_fs_mode(settings.fs_mode, settings.virtiofsd_bin)
    if fs_mode == "9p" and settings.fs_mode == "auto":
        say(f"sharing folders over 9p: {fs_why}")

    record: dict[str, Any] = {
        "name": settings.name,
        "ssh_port": port,
        "ssh_user": settings.ssh_user,
        "accel": accel,
        "fs_mode": fs_mode,
        "mounts": mount_record(settings),
        "base_image": str(base.disk),
        "helpers": [],
    }
    try:
        vm = _start_and_wait(settings, state, base, record, daemon)
    except BaseException:
        # Nothing left running on failure; the serial log stays for reading.
        _stop(state, running_pid(state), state.read_runtime() or record)
        _remove_transient(state, record)
        raise
    say(
        f"VM {settings.name} is up after {time.monotonic() - started:.1f} s "
        f"(accel {vm.record['accel']}, {fs_mode}, ssh port {port})"
    )
    return vm


def _start_and_wait(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    daemon: shares.Virtiofsd | None,
) -> Vm:
    share_list = shares.make_shares(settings.mounts(), record["fs_mode"], state.root)
    if daemon:
        for share in share_list:
            log = state.root / f"virtiofsd-{share.tag}.log"
            pid = shares.start_virtiofsd(daemon, share, log)
            (state.root / f"virtiofsd-{share.tag}.pid").write_text(f"{pid}\n")
            record["helpers"].append(pid)
            state.write_runtime(record)
    _start_qemu(settings, state, base, record, share_list)

    conn = guest.connection(record["ssh_port"], settings.ssh_user, state.key, state.known_hosts)
    if record["accel"] != "tcg" and settings.accel == "auto" and not _shows_life(state):
        warn(
            f"the {record['accel']} guest printed nothing in {ACCEL_STALL_SECONDS:.0f} s; "
            f"restarting it under TCG (set QEMU_VM_ACCEL to choose)"
        )
        qemu.terminate(record["pid"], str(state.root))
        record["accel"] = "tcg"
        _start_qemu(settings, state, base, record, share_list)

    with console.status("booting") as status:

        def progress(waited: float, line: str) -> None:
            status.update(f"waiting for the guest ({waited:.0f} s): {line}")

        pid = record["pid"]
        waited = guest.wait_ready(
            conn,
            alive=lambda: qemu.is_ours(pid, str(state.root)),
            serial_log=state.serial_log,
            timeout=settings.boot_timeout,
            on_progress=progress,
        )
        record["ssh_ready_seconds"] = round(waited, 1)
        status.update("mounting shares and provisioning")
        guest.run_root_script(conn, _guest_script(settings, record["fs_mode"]), "provisioning")
    state.write_runtime(record)
    return Vm(settings, record, conn, booted=True)


def _start_qemu(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    share_list: list[qemu.Share],
) -> None:
    spec = qemu.QemuSpec(
        qemu_bin=settings.qemu_bin,
        name=settings.name,
        arch=settings.arch,
        accel=record["accel"],
        mem_mb=settings.mem_mb,
        cpus=settings.cpus,
        disk=state.disk,
        seed=state.seed,
        ssh_port=record["ssh_port"],
        pidfile=state.pidfile,
        serial_log=state.serial_log,
        qmp_socket=state.qmp_socket,
        fs_mode=record["fs_mode"],
        shares=tuple(share_list),
        base=base,
    )
    state.pidfile.unlink(missing_ok=True)
    state.serial_log.unlink(missing_ok=True)
    argv = qemu.build_argv(spec)
    proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise VmUnavailable(
            f"QEMU failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n"
            f"command: {' '.join(argv)}"
        )
    pid = qemu.read_pid(state.pidfile)
    if not pid:
        raise VmUnavailable(f"QEMU started but wrote no PID file {state.pidfile}")
    record.update(pid=pid, started_at=time.time(), qemu_argv=argv)
    state.write_runtime(record)


def _shows_life(state: StateDir) -> bool:
    deadline = time.monotonic() + ACCEL_STALL_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if state.serial_log.stat().st_size > 0:
                return True
        time.sleep(0.5)
    return False


def _write_seed(settings: VmSettings, state: StateDir, client: keys.KeyPair, host: keys.KeyPair):
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
    cloudinit.write_seed_iso(cloudinit.render_seed(templates, values), state.seed)


def guest_uid() -> int:
    """The guest user's uid: the host user's when that is a normal user's.

    Shared folders pass uids through, so matching them makes the guest user the
    owner of the host user's files.
    """
    uid = os.getuid()
    return uid if 1000 <= uid < 60000 else 1000


def _ensure_disk(settings: VmSettings, state: StateDir, base: BaseImage) -> None:
    if state.disk.exists():
        return
    argv = [
        "qemu-img", "create", "-q", "-f", "qcow2",
        "-F", base.format, "-b", str(base.disk),
        str(state.disk), f"{settings.disk_gb}G",
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise VmUnavailable(f"cannot create {state.disk}: {proc.stderr.strip()}")


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ssh_port(wanted: int, explicit: bool) -> int:
    """`wanted` when free; else a free port, unless the user asked for `wanted` (SPEC 9.8)."""
    if port_is_free(wanted):
        return wanted
    if explicit:
        raise VmUnavailable(
            f"SSH port {wanted} (QEMU_VM_SSH_PORT) is in use on 127.0.0.1; "
            f"choose another or unset it to let one be picked"
        )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    say(f"SSH port {wanted} is in use; using {port} instead")
    return port


# --- down, cleanup, status -------------------------------------------------------


def down(settings: VmSettings) -> str:
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = state.read_runtime()
        if not pid:
            removed = _remove_transient(state, record)
            return f"VM {settings.name} is not running" + (
                f"; removed {len(removed)} stale file(s)" if removed else ""
            )
        how = _stop(state, pid, record)
        return f"VM {settings.name} stopped ({how})"


def _stop(state: StateDir, pid: int | None, record: dict[str, Any] | None) -> str:
    how = "not running"
    if pid:
        with console.status("shutting the guest down"):
            how = qemu.shutdown(pid, state.qmp_socket, str(state.root))
    _remove_transient(state, record)
    return how


def _remove_transient(state: StateDir, record: dict[str, Any] | None) -> list[Path]:
    """Kill our helper processes and remove files that only mean something while running."""
    marker = str(state.root)
    helpers = list((record or {}).get("helpers", []))
    helpers += [qemu.read_pid(p) for p in state.root.glob("virtiofsd-*.pid")]
    for pid in {p for p in helpers if p}:
        qemu.terminate(pid, marker)  # checks the process is ours first
    stale_qemu = qemu.read_pid(state.pidfile)
    if stale_qemu:
        qemu.terminate(stale_qemu, marker)
    removed = state.transient()
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def cleanup(settings: VmSettings) -> str:
    state = state_of(settings)
    if not state.root.exists():
        return f"nothing to clean: {state.root} does not exist"
    with locked(state):
        if running_pid(state):
            return f"VM {settings.name} is running; nothing is stale (use `vm.down` to stop it)"
        removed = _remove_transient(state, state.read_runtime())
    if not removed:
        return f"nothing stale in {state.root}"
    return f"removed {len(removed)} stale file(s): " + ", ".join(p.name for p in removed)


def status(settings: VmSettings) -> dict[str, Any]:
    state = state_of(settings)
    pid = running_pid(state)
    record = (state.read_runtime() or {}) if pid else {}
    mounts = record.get("mounts") or mount_record(settings)
    return {
        "name": settings.name,
        "running": bool(pid),
        "pid": pid,
        "ssh_port": record.get("ssh_port"),
        "ssh_user": record.get("ssh_user", settings.ssh_user),
        "accel": record.get("accel"),
        "fs_mode": record.get("fs_mode"),
        "state_dir": str(state.root),
        "mounts": mounts,
        "base_image": record.get("base_image"),
        "started_at": record.get("started_at"),
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
            f"accel:     {info['accel']}",
            f"fs mode:   {info['fs_mode']}",
        ]
    lines.append("mounts:")
    lines += [f"  {m['guest']:<8} <- {m['host']} ({m['access']})" for m in info["mounts"]]
    return "\n".join(lines)


def require_running(settings: VmSettings) -> Vm:
    """Connect to the running VM without booting it (for `vm.ssh`)."""
    state = state_of(settings)
    pid = running_pid(state)
    record = state.read_runtime()
    if not pid or not record:
        raise VmUnavailable(f"VM {settings.name} is not running; start it with `vm.up`")
    return Vm(settings, record, _connect(state, record), booted=False)
