"""The VM lifecycle: up, down, status, cleanup. Tasks and the CLI call these."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import fabric

from . import cloudinit, firmware, guest, keys, provision, qemu, savedstate, shares
from .errors import TaskError, UsageError, VmUnavailable
from .images import BaseImage, ensure_base_image
from .settings import VmSettings
from .state import StateDir, locked
from .ui import console, say, warn

# Under an auto-chosen accelerator other than TCG, a guest that has printed
# nothing on its serial console by then is taken as hung (SPEC 9.1).
ACCEL_STALL_SECONDS = 30.0


# QEMU waits for the saved state (`migrate-incoming`) and keeps the guest paused after
# it, so the state can be deleted before the guest runs and moves its disk on.
RESUME_ARGS = ("-S", "-incoming", "defer")
# virtiofs cannot be saved (vhost-user-fs does not migrate, and its shared memory makes
# a restore slow); 9p can once unmounted, and a guest without shares always can.
SAVEABLE_FS_MODES = ("9p", "none")
# What a resume takes over from the saved guest's record (the rest follows the settings).
SAVED_RECORD_KEYS = (
    "accel", "cpus", "fs_mode", "base", "image_url", "accel_asked", "arch", "firmware",
)  # fmt: skip


class BootInterrupted(TaskError):
    """Ctrl-C during a boot; everything it started is stopped (SPEC 9.15)."""

    exit_code = 130


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


def qmp_address(state: StateDir, record: dict[str, Any]) -> qemu.Address:
    """QMP: the state dir's unix socket; a loopback TCP port on Windows (QEMU there)."""
    port = record.get("qmp_port")
    return ("127.0.0.1", port) if port else state.qmp_socket


def qga_address(state: StateDir, record: dict[str, Any]) -> qemu.Address:
    port = record.get("qga_port")
    return ("127.0.0.1", port) if port else state.qga_socket


def mount_record(settings: VmSettings) -> list[dict[str, str]]:
    return [{"guest": g, "host": str(h), "access": a} for g, h, a in settings.mounts()]


# --- up --------------------------------------------------------------------------


def up(settings: VmSettings, recreate: bool = False, refresh: bool = False) -> Vm:
    """Boot the VM or reuse the running one; make sure the mounts are there.

    `refresh`: look for a newer base image now, not only on the first boot of the day.
    """
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = state.read_runtime()
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
                conn = guest.connection(
                    record["ssh_port"], record["ssh_user"], state.key, state.known_hosts
                )
                return Vm(settings, record, conn, booted=False)
            conn = _connect(state, record)
            # Provisioned when it booted; only make sure the shares are still mounted.
            script = shares.mount_script(settings.mounts(), record["fs_mode"], settings.ssh_user)
            guest.run_root_script(conn, script, "mounting")
            return Vm(settings, record, conn, booted=False)
        _remove_transient(state, record)
        if recreate:
            savedstate.discard(state)
            # A fresh disk gets fresh firmware boot entries too.
            for path in (state.disk, state.seed, state.efi_vars, state.root / "efi-code.fd"):
                path.unlink(missing_ok=True)
        else:
            vm = _resume(settings, state)
            if vm:
                return vm
        # A boot moves the disk on: a saved state no longer belongs to it.
        savedstate.discard(state)
        return _boot(settings, state, refresh)


def _answers_without_ssh(settings: VmSettings, state: StateDir, record: dict[str, Any]) -> bool:
    """True when QEMU runs the guest (QMP), its helpers live, and the guest agent answers
    that every share is mounted: a warm `up` then needs no SSH handshake (about 1 s under
    TCG). False sends the caller down the SSH path, which also repairs the mounts."""
    if not record.get("guest_agent"):
        return False  # an image without the agent (the official cloud image)
    marker = str(state.root)
    if not all(qemu.is_ours(pid, marker) for pid in record.get("helpers", [])):
        return False
    try:
        if (
            qemu.qmp(qmp_address(state, record), "query-status", timeout=2.0)
            .get("return", {})
            .get("status")
            != "running"
        ):
            return False
        with qemu.guest_agent(qga_address(state, record)) as agent:
            return agent.run(shares.mounted_check_argv(settings.mounts())) == 0
    except (OSError, ValueError, qemu.GuestAgentError):
        return False


def cpus_explicit(settings: VmSettings) -> bool:
    """Whether a CPU count was asked for (QEMU_VM_CPUS, or a config/flag value other than
    the default); only the default is fitted to the host under TCG."""
    return "QEMU_VM_CPUS" in os.environ or settings.cpus != qemu.DEFAULT_CPUS


def _control_ports() -> dict[str, int]:
    """QEMU for Windows: QMP and the guest agent on loopback TCP ports (no unix sockets
    there); elsewhere they are unix sockets in the state dir and need no port."""
    if sys.platform != "win32":
        return {}
    return {"qmp_port": qemu.free_port(), "qga_port": qemu.free_port()}


def _check_same_fs_mode(settings: VmSettings, record: dict[str, Any]) -> None:
    asked, running = str(settings.fs_mode), record.get("fs_mode")
    if asked != "auto" and asked != running:
        raise UsageError(
            f"VM {settings.name} runs with fs mode {running} and QEMU_VM_FS asks for {asked}; "
            f"run again with --recreate to restart it so, or `vm.down` first"
        )


def _check_same_arch(settings: VmSettings, record: dict[str, Any]) -> None:
    running = record.get("arch", "amd64")
    if running != settings.arch:
        raise UsageError(
            f"VM {settings.name} runs an {running} guest and {settings.arch} is asked for "
            f"(QEMU_VM_ARCH); run again with --recreate, or `vm.down` and use another name"
        )


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
    # The proxy settings come first: provisioning may run apt-get.
    return "\n".join(
        [
            guest.proxy_script(guest.guest_proxy_env(os.environ)),
            shares.mount_script(settings.mounts(), fs_mode, settings.ssh_user),
            provision.SCRIPT,
        ]
    )


def _boot(settings: VmSettings, state: StateDir, refresh: bool = False) -> Vm:
    started = time.monotonic()
    # First, so a bad image is refused (exit 2) before anything is created or started.
    base = ensure_base_image(
        settings.image_url,
        settings.image_cache_dir,
        settings.arch,
        settings.debian_mirror,
        refresh=refresh,
    )
    for _guest, host, _access in settings.mounts():
        host.mkdir(parents=True, exist_ok=True)
    client_key = keys.ensure_keypair(state.key, f"patchbay-vm-{settings.name}")
    host_key = keys.ensure_keypair(state.host_key, f"root@{settings.name}")
    seed_id = _write_seed(settings, state, client_key, host_key)
    _ensure_disk(settings, state, base)
    # Before anything starts: missing firmware is said first.
    flash = firmware.pflash_for(
        settings.arch,
        settings.firmware,
        base.kernel is not None,
        settings.qemu_bin,
        state.root,
        state.efi_vars,
    )
    port = pick_ssh_port(settings.ssh_port, settings.ssh_port_explicit, state.read_last_port())
    state.last_port.write_text(f"{port}\n")
    keys.write_known_hosts(state.known_hosts, port, host_key)
    accel, notes = qemu.choose_accel(settings.qemu_bin, settings.accel, settings.arch)
    for note in notes:
        warn(note)
    cpus = qemu.guest_cpus(settings.cpus, accel, cpus_explicit(settings))
    fs_mode, daemon, _why = shares.choose_fs_mode(settings.fs_mode, settings.virtiofsd_bin)

    record: dict[str, Any] = {
        "name": settings.name,
        "ssh_port": port,
        "ssh_user": settings.ssh_user,
        "accel": accel,
        "cpus": cpus,
        "fs_mode": fs_mode,
        "mounts": mount_record(settings),
        "base_image": str(base.disk),
        "base": _base_record(base),
        "image_url": settings.image_url,
        "accel_asked": settings.accel,
        "seed_id": seed_id,
        "arch": settings.arch,
        "firmware": [str(flash.code), str(flash.vars)] if flash else None,
        **_control_ports(),
        "helpers": [],
    }
    try:
        vm = _start_and_wait(settings, state, base, record, daemon)
    except BaseException as e:
        # Nothing left running on failure (what _start_and_wait owned is stopped already;
        # this sweeps what a PID file names); the serial log stays for reading.
        _remove_transient(state, state.read_runtime() or record)
        if isinstance(e, KeyboardInterrupt):
            raise BootInterrupted(
                f"interrupted: stopped {settings.name} and its helpers "
                f"(serial log: {state.serial_log})"
            ) from None
        raise
    say(
        f"VM {settings.name} is up after {time.monotonic() - started:.1f} s "
        f"(accel {vm.record['accel']}, {fs_mode}, ssh port {port}, {vm.record['cpus']} CPUs)"
    )
    return vm


def _base_record(base: BaseImage) -> dict[str, Any]:
    return {
        "disk": str(base.disk),
        "format": base.format,
        "kernel": str(base.kernel) if base.kernel else None,
        "initrd": str(base.initrd) if base.initrd else None,
        "cmdline": base.cmdline,
    }


def _base_from_record(data: dict[str, Any]) -> BaseImage:
    return BaseImage(
        disk=Path(data["disk"]),
        format=data["format"],
        kernel=Path(data["kernel"]) if data.get("kernel") else None,
        initrd=Path(data["initrd"]) if data.get("initrd") else None,
        cmdline=data.get("cmdline", ""),
    )


def _fingerprint(settings: VmSettings, spec: qemu.QemuSpec, record: dict[str, Any]) -> dict:
    argv = qemu.build_argv(dataclasses.replace(spec, extra=()))
    version = savedstate.qemu_version(settings.qemu_bin)
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


def _resume(settings: VmSettings, state: StateDir) -> Vm | None:
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
        "mounts": mount_record(settings),
        "base_image": saved["base"]["disk"],
        "helpers": [],
    }
    base = _base_from_record(saved["base"])
    share_list = shares.make_shares(settings.mounts(), record["fs_mode"], state.root)
    if why is None:
        client_key = keys.ensure_keypair(state.key, f"patchbay-vm-{settings.name}")
        host_key = keys.ensure_keypair(state.host_key, f"root@{settings.name}")
        _, record["seed_id"] = _render_seed(settings, client_key, host_key)
        record["ssh_port"] = pick_ssh_port(
            settings.ssh_port, settings.ssh_port_explicit, state.read_last_port()
        )
        record.update(_control_ports())
        spec = _qemu_spec(settings, state, base, record, share_list)
        why = savedstate.difference(meta["fingerprint"], _fingerprint(settings, spec, record))
    if why:
        warn(f"not resuming {settings.name}: {why}; booting it")
        return None
    state.last_port.write_text(f"{record['ssh_port']}\n")
    keys.write_known_hosts(state.known_hosts, record["ssh_port"], host_key)
    marker = str(state.root)
    try:
        with contextlib.ExitStack() as owned:
            _start_qemu(settings, state, base, record, share_list, extra=RESUME_ARGS)
            qmp = qmp_address(state, record)
            owned.callback(qemu.quit_now, record["pid"], qmp, marker)
            with console.status(f"resuming {settings.name}"):
                savedstate.restore(state, qmp, meta["fingerprint"]["qemu_version"])
                # From here the disk moves on: the state must never be loaded again.
                savedstate.discard(state)
                reply = qemu.qmp(qmp, "cont")
                if "error" in reply:
                    raise savedstate.RestoreFailed(reply["error"].get("desc", "cont failed"))
                # The fstab lines and sysctl of the boot are in the saved guest already.
                remount = f"mount -a -t 9p -O {shares.FSTAB_MARK}"
                remount = remount if saved["fs_mode"] == "9p" else "true"
                savedstate.refresh_guest(qga_address(state, record), remount)
            record.update(guest_agent=True, resumed=True)
            record["resume_seconds"] = round(time.monotonic() - started, 2)
            state.write_runtime(record)
            owned.pop_all()
    except KeyboardInterrupt:
        savedstate.discard(state)
        _remove_transient(state, state.read_runtime() or record)
        raise BootInterrupted(f"interrupted: stopped {settings.name} while resuming it") from None
    except (savedstate.RestoreFailed, VmUnavailable, OSError, ValueError) as e:
        savedstate.discard(state)
        _remove_transient(state, state.read_runtime() or record)
        warn(f"resuming {settings.name} failed ({e}); booting it instead")
        return None
    say(
        f"VM {settings.name} resumed after {record['resume_seconds']:.1f} s "
        f"(accel {record['accel']}, {record['fs_mode']}, ssh port {record['ssh_port']})"
    )
    conn = guest.connection(record["ssh_port"], record["ssh_user"], state.key, state.known_hosts)
    return Vm(settings, record, conn, booted=True)


def _start_and_wait(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    daemon: shares.Virtiofsd | None,
) -> Vm:
    share_list = shares.make_shares(settings.mounts(), record["fs_mode"], state.root)
    owned = _start_processes(settings, state, base, record, daemon, share_list)
    try:
        vm = _wait_and_provision(settings, state, base, record, daemon, share_list, owned)
    except BaseException:
        owned.close()
        raise
    # From here the runtime record owns the processes (`vm.down`, `vm.cleanup`).
    owned.pop_all()
    return vm


def _start_processes(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    daemon: shares.Virtiofsd | None,
    share_list: list[qemu.Share],
) -> contextlib.ExitStack:
    """Start the virtiofsd helpers and QEMU; the returned stack stops them all, QEMU
    first. Each process is owned from the moment it exists, so an error or Ctrl-C at
    any point leaves nothing running."""
    marker = str(state.root)
    owned = contextlib.ExitStack()
    try:
        record["helpers"] = []
        if daemon:
            for share in share_list:
                log = state.root / f"virtiofsd-{share.tag}.log"
                pid = shares.start_virtiofsd(
                    daemon, share, log, on_start=lambda p: owned.callback(qemu.terminate, p, marker)
                )
                (state.root / f"virtiofsd-{share.tag}.pid").write_text(f"{pid}\n")
                record["helpers"].append(pid)
                state.write_runtime(record)
        _start_qemu(settings, state, base, record, share_list)
        owned.callback(qemu.quit_now, record["pid"], qmp_address(state, record), marker)
    except BaseException:
        owned.close()
        raise
    return owned


def _wait_and_provision(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    daemon: shares.Virtiofsd | None,
    share_list: list[qemu.Share],
    owned: contextlib.ExitStack,
) -> Vm:
    conn = guest.connection(record["ssh_port"], settings.ssh_user, state.key, state.known_hosts)
    if record["accel"] != "tcg" and settings.accel == "auto" and not _shows_life(state):
        warn(
            f"the {record['accel']} guest printed nothing in {ACCEL_STALL_SECONDS:.0f} s; "
            f"restarting it under TCG (set QEMU_VM_ACCEL to choose)"
        )
        # The virtiofsd helpers serve one QEMU only: restart them with it.
        owned.close()
        record["accel"] = "tcg"
        record["cpus"] = qemu.guest_cpus(settings.cpus, "tcg", cpus_explicit(settings))
        owned.push(_start_processes(settings, state, base, record, daemon, share_list))

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
        record["guest_agent"] = _agent_answers(qga_address(state, record))
    state.write_runtime(record)
    return Vm(settings, record, conn, booted=True)


def _qemu_spec(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    share_list: list[qemu.Share],
    extra: tuple[str, ...] = (),
) -> qemu.QemuSpec:
    return qemu.QemuSpec(
        qemu_bin=settings.qemu_bin,
        name=settings.name,
        arch=settings.arch,
        accel=record["accel"],
        mem_mb=settings.mem_mb,
        cpus=record["cpus"],
        disk=state.disk,
        seed=state.seed,
        ssh_port=record["ssh_port"],
        pidfile=state.pidfile,
        serial_log=state.serial_log,
        qmp_socket=state.qmp_socket,
        qga_socket=state.qga_socket,
        fs_mode=record["fs_mode"],
        shares=tuple(share_list),
        base=base,
        extra=extra,
        firmware=firmware.Pflash(*map(Path, record["firmware"]))
        if record.get("firmware")
        else None,
        qmp_port=record.get("qmp_port"),
        qga_port=record.get("qga_port"),
    )


def _start_qemu(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    share_list: list[qemu.Share],
    extra: tuple[str, ...] = (),
) -> None:
    spec = _qemu_spec(settings, state, base, record, share_list, extra)
    state.serial_log.unlink(missing_ok=True)
    argv = qemu.build_argv(spec)  # pure: the argv `start` runs
    pid = qemu.start(spec)
    record.update(pid=pid, started_at=time.time(), qemu_argv=argv)
    state.write_runtime(record)


def _agent_answers(qga: qemu.Address) -> bool:
    """Whether the guest agent answers. Asked once the guest is up over SSH: our image's
    agent started early in its boot; an image without one costs this one timeout."""
    try:
        with qemu.guest_agent(qga, timeout=3.0) as agent:
            agent.call("guest-ping")
            return True
    except qemu.GuestAgentError:
        return False


def _shows_life(state: StateDir) -> bool:
    deadline = time.monotonic() + ACCEL_STALL_SECONDS
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if state.serial_log.stat().st_size > 0:
                return True
        time.sleep(0.5)
    return False


def _write_seed(
    settings: VmSettings, state: StateDir, client: keys.KeyPair, host: keys.KeyPair
) -> str:
    """Write the seed ISO when its contents changed; returns its instance id."""
    seed, instance_id = _render_seed(settings, client, host)
    if state.seed.exists():
        with contextlib.suppress(Exception):  # unreadable: written again
            if cloudinit.read_seed_iso(state.seed) == seed:
                # Unchanged: the file a saved guest state was made with stays as it was.
                return instance_id
    cloudinit.write_seed_iso(seed, state.seed)
    return instance_id


def _render_seed(
    settings: VmSettings, client: keys.KeyPair, host: keys.KeyPair
) -> tuple[dict[str, str], str]:
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


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when QEMU could listen on host:port.

    QEMU's user-mode network (libslirp) sets SO_REUSEADDR on its forward's listener,
    so the TIME_WAIT sockets an earlier session left on the port do not stop it;
    probe the same way, or a `down` then `up` finds its own port "in use" for a
    minute. (On Windows SO_REUSEADDR would let a port in use be taken, and TIME_WAIT
    does not block a bind there anyway, so the probe binds plainly.)
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        if os.name != "nt":
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            s.listen(1)
        except OSError:
            return False
    return True


def pick_ssh_port(wanted: int, explicit: bool, previous: int | None = None) -> int:
    """`wanted` when free; else a free port, unless the user asked for `wanted` (SPEC 9.8).

    With the default port taken, the port of the VM's last session comes next (when
    free), so ssh configs written for it keep working; then any free port.
    """
    if port_is_free(wanted):
        return wanted
    if explicit:
        raise VmUnavailable(
            f"SSH port {wanted} (QEMU_VM_SSH_PORT) is in use on 127.0.0.1; "
            f"choose another or unset it to let one be picked"
        )
    if previous and previous != wanted and port_is_free(previous):
        say(f"SSH port {wanted} is in use; using {previous}, as last time")
        return previous
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    say(f"SSH port {wanted} is in use; using {port} instead")
    return port


# --- down, cleanup, status -------------------------------------------------------


def down(settings: VmSettings, poweroff: bool = False) -> str:
    """Stop the VM: save the guest so the next `up` resumes it, or (`poweroff`, or when
    it cannot be saved) shut it down."""
    state = state_of(settings)
    with locked(state):
        pid = running_pid(state)
        record = state.read_runtime()
        if not pid:
            removed = _remove_transient(state, record)
            return f"VM {settings.name} is not running" + (
                f"; removed {len(removed)} stale file(s)" if removed else ""
            )
        assert record is not None  # running_pid found our QEMU, which has its record
        why_not = "asked to power off" if poweroff else _why_not_saveable(record)
        if why_not is None:
            try:
                with console.status(f"saving {settings.name}"):
                    saved = _save(state, pid, record)
            except savedstate.SaveFailed as e:
                why_not = f"saving it failed: {e}"
            else:
                _remove_transient(state, record)
                return (
                    f"VM {settings.name} saved ({saved.size / 1e6:.0f} MB in "
                    f"{saved.seconds:.1f} s); the next vm.up resumes it"
                )
        how = _stop(state, pid, record)
        return f"VM {settings.name} stopped ({how}; not saved: {why_not}; the next vm.up boots)"


def _why_not_saveable(record: dict[str, Any]) -> str | None:
    if record.get("fs_mode") not in SAVEABLE_FS_MODES:
        return f"its shares are {record.get('fs_mode')}, which cannot be saved (QEMU_VM_FS=9p can)"
    if not record.get("guest_agent"):
        return "its image has no QEMU guest agent"
    if "seed_id" not in record or "base" not in record:
        return "it was booted by an older version of this tool"
    return None


def _save(state: StateDir, pid: int, record: dict[str, Any]) -> savedstate.Saved:
    """Save the running guest; the state is bound to what really runs (its record)."""
    argv = record["qemu_argv"]
    if tuple(argv[-len(RESUME_ARGS) :]) == RESUME_ARGS:
        argv = argv[: -len(RESUME_ARGS)]  # a resumed guest: its hardware without them
    version = savedstate.qemu_version(argv[0])
    fp = savedstate.fingerprint(
        argv, _ports(record), version, _base_files(record), record["seed_id"]
    )
    if record["fs_mode"] == "9p":
        savedstate.unmount_shares(
            qga_address(state, record), [m["guest"] for m in record["mounts"]]
        )
    kept = {k: record.get(k) for k in SAVED_RECORD_KEYS}
    return savedstate.save(state, qmp_address(state, record), pid, fp, {"record": kept})


def _ports(record: dict[str, Any]) -> dict[str, int]:
    """The host ports in the command line, which a restore may change."""
    names = ("ssh_port", "qmp_port", "qga_port")
    return {name: record[name] for name in names if record.get(name)}


def _base_files(record: dict[str, Any]) -> list[str]:
    """What the guest reads but never writes: the base image, kernel, initrd, firmware."""
    base = record["base"]
    code = (record.get("firmware") or [None])[0]
    return [p for p in (base["disk"], base["kernel"], base["initrd"], code) if p]


def _stop(state: StateDir, pid: int | None, record: dict[str, Any] | None) -> str:
    how = "not running"
    if pid:
        with console.status("shutting the guest down"):
            how = qemu.shutdown(pid, qmp_address(state, record or {}), str(state.root))
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
            f"accel:     {info['accel']}",
            f"fs mode:   {info['fs_mode']}",
        ]
    elif asked := info.get("settings"):
        port = f"{asked['ssh_port']}" + ("" if asked["ssh_port_explicit"] else " (default)")
        lines += [
            f"would use: {asked['cpus']} CPUs, {asked['mem_mb']} MB, {asked['arch']}, "
            f"ssh port {port}",
            f"image:     {asked['image_url']}",
        ]
    lines.append("mounts:")
    lines += [f"  {m['guest']:<8} <- {m['host']} ({m['access']})" for m in info["mounts"]]
    return "\n".join(lines)


def running_record(settings: VmSettings) -> dict[str, Any]:
    """The runtime record of the running VM; VmUnavailable when it is not running."""
    state = state_of(settings)
    pid = running_pid(state)
    record = state.read_runtime()
    if not pid or not record:
        raise VmUnavailable(f"VM {settings.name} is not running; start it with `vm.up`")
    return record


def require_running(settings: VmSettings) -> Vm:
    """Connect to the running VM without booting it (for `vm.ssh`)."""
    record = running_record(settings)
    return Vm(settings, record, _connect(state_of(settings), record), booted=False)


# --- ssh-config, cp --------------------------------------------------------------


def _ssh_value(value: str) -> str:
    # ssh_config takes double-quoted arguments; quote only where a space needs it.
    return f'"{value}"' if any(ch.isspace() for ch in value) else value


def ssh_config_text(name: str, port: int, user: str, key: Path, known_hosts: Path) -> str:
    """An OpenSSH `Host` block for the VM: the pinned host key, checked strictly."""
    lines = [
        f"Host {name}",
        "  HostName 127.0.0.1",
        f"  Port {port}",
        f"  User {user}",
        f"  IdentityFile {_ssh_value(str(key))}",
        "  IdentitiesOnly yes",
        f"  UserKnownHostsFile {_ssh_value(str(known_hosts))}",
        "  StrictHostKeyChecking yes",
        "  LogLevel ERROR",
    ]
    return "\n".join(lines) + "\n"


def ssh_config(settings: VmSettings) -> str:
    """The `Host` block of the running VM (`ssh -F FILE NAME`, `scp -F`, `rsync -e`)."""
    record = running_record(settings)
    state = state_of(settings)
    return ssh_config_text(
        settings.name, record["ssh_port"], record["ssh_user"], state.key, state.known_hosts
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
    except guest.TRANSPORT_ERRORS as e:
        raise VmUnavailable(f"vm.cp: lost the connection to the guest: {e}") from None


# --- list, destroy ---------------------------------------------------------------


def list_vms(project_dir: Path) -> list[dict[str, Any]]:
    """The VMs with a state dir under `.qemu-vm/` of the project, running or not."""
    vms = []
    for root in sorted((project_dir / ".qemu-vm").glob("*/")):
        state = StateDir(root)
        pid = running_pid(state)
        record = (state.read_runtime() or {}) if pid else {}
        vms.append(
            {
                "name": root.name,
                "state": "running" if pid else "stopped",
                "pid": pid,
                "ssh_port": record.get("ssh_port"),
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
        stopped = _stop(state, pid, state.read_runtime()) if pid else None
        files = [p for p in state.root.rglob("*") if p.is_file() and p != state.lockfile]
        size = sum(p.stat().st_size for p in files)
        shutil.rmtree(state.root)
    did = f"stopped it ({stopped}), " if stopped else ""
    return (
        f"VM {settings.name}: {did}removed {state.root} ({len(files)} files, {size / 1e6:.1f} MB)"
    )
