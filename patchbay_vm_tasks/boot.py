"""Booting a VM: base image, seed, disk, firmware, QEMU and its helpers, the wait, provisioning."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import (
    cloudinit,
    firmware,
    guest,
    keys,
    ports,
    provision,
    qemu,
    runtime,
    shares,
)
from .errors import VmUnavailable
from .images import BaseImage, ensure_base_image
from .settings import VmSettings
from .state import StateDir
from .ui import say, spinner, warn

# Under an auto-chosen accelerator other than TCG, a guest that has printed
# nothing on its serial console by then is taken as hung (SPEC 9.1).
ACCEL_STALL_SECONDS = 30.0


def control_ports() -> dict[str, int]:
    """QEMU for Windows: QMP and the guest agent on loopback TCP ports (no unix sockets
    there); elsewhere they are unix sockets in the state dir and need no port."""
    if sys.platform != "win32":
        return {}
    return {"qmp_port": qemu.free_port(), "qga_port": qemu.free_port()}


def _guest_script(settings: VmSettings, fs_mode: str) -> str:
    # The proxy settings come first: provisioning may run apt-get.
    return "\n".join(
        [
            guest.proxy_script(guest.guest_proxy_env(os.environ)),
            shares.mount_script(settings.mounts(), fs_mode, settings.ssh_user),
            provision.SCRIPT,
        ]
    )


def boot(settings: VmSettings, state: StateDir, refresh: bool = False) -> runtime.Vm:
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
    client_key, host_key = keypairs(settings, state)
    seed_id = write_seed(settings, state, client_key, host_key)
    ensure_disk(settings, state, base)
    # Before anything starts: missing firmware is said first.
    flash = firmware.pflash_for(
        settings.arch,
        settings.firmware,
        base.kernel is not None,
        settings.qemu_bin,
        state.root,
        state.efi_vars,
    )
    port = ports.pick_ssh_port(
        settings.ssh_port, settings.ssh_port_explicit, state.read_last_port()
    )
    state.last_port.write_text(f"{port}\n")
    keys.write_known_hosts(state.known_hosts, port, host_key)
    accel, notes = qemu.choose_accel(settings.qemu_bin, settings.accel, settings.arch)
    for note in notes:
        warn(note)
    cpus = qemu.guest_cpus(settings.cpus, accel, runtime.cpus_explicit(settings))
    fs_mode, daemon, _why = shares.choose_fs_mode(settings.fs_mode, settings.virtiofsd_bin)

    record: dict[str, Any] = {
        "name": settings.name,
        "ssh_port": port,
        "ssh_user": settings.ssh_user,
        "accel": accel,
        "cpus": cpus,
        "fs_mode": fs_mode,
        "mounts": runtime.mount_record(settings),
        "base_image": str(base.disk),
        "base": base_record(base),
        "image_url": settings.image_url,
        "accel_asked": settings.accel,
        "seed_id": seed_id,
        "arch": settings.arch,
        "firmware": [str(flash.code), str(flash.vars)] if flash else None,
        **control_ports(),
        "helpers": [],
    }
    try:
        vm = start_and_wait(settings, state, base, record, daemon)
    except BaseException as e:
        # Nothing left running on failure (what start_and_wait owned is stopped already;
        # this sweeps what a PID file names); the serial log stays for reading.
        runtime.remove_transient(state, state.read_runtime() or record)
        if isinstance(e, KeyboardInterrupt):
            raise runtime.BootInterrupted(
                f"interrupted: stopped {settings.name} and its helpers "
                f"(serial log: {state.serial_log})"
            ) from None
        raise
    say(
        f"VM {settings.name} is up after {time.monotonic() - started:.1f} s "
        f"(accel {vm.record['accel']}, {fs_mode}, ssh port {port}, {vm.record['cpus']} CPUs)"
    )
    return vm


def base_record(base: BaseImage) -> dict[str, Any]:
    return {
        "disk": str(base.disk),
        "format": base.format,
        "kernel": str(base.kernel) if base.kernel else None,
        "initrd": str(base.initrd) if base.initrd else None,
        "cmdline": base.cmdline,
    }


def start_and_wait(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    daemon: shares.Virtiofsd | None,
) -> runtime.Vm:
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
        start_qemu(settings, state, base, record, share_list)
        owned.callback(qemu.quit_now, record["pid"], runtime.qmp_address(state, record), marker)
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
) -> runtime.Vm:
    conn = guest.connection(record["ssh_port"], settings.ssh_user, state.key, state.known_hosts)
    if record["accel"] != "tcg" and settings.accel == "auto" and not _shows_life(state):
        warn(
            f"the {record['accel']} guest printed nothing in {ACCEL_STALL_SECONDS:.0f} s; "
            f"restarting it under TCG (set QEMU_VM_ACCEL to choose)"
        )
        # The virtiofsd helpers serve one QEMU only: restart them with it.
        owned.close()
        record["accel"] = "tcg"
        record["cpus"] = qemu.guest_cpus(settings.cpus, "tcg", runtime.cpus_explicit(settings))
        owned.push(_start_processes(settings, state, base, record, daemon, share_list))

    with spinner("booting") as booting:

        def progress(waited: float, line: str) -> None:
            booting.update(f"waiting for the guest ({waited:.0f} s): {line}")

        pid = record["pid"]
        waited = guest.wait_ready(
            conn,
            alive=lambda: qemu.is_ours(pid, str(state.root)),
            serial_log=state.serial_log,
            timeout=settings.boot_timeout,
            on_progress=progress,
        )
        record["ssh_ready_seconds"] = round(waited, 1)
        booting.update("mounting shares and provisioning")
        guest.run_root_script(conn, _guest_script(settings, record["fs_mode"]), "provisioning")
        record["guest_agent"] = _agent_answers(runtime.qga_address(state, record))
    state.write_runtime(record)
    return runtime.Vm(settings, record, conn, booted=True)


def qemu_spec(
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


def start_qemu(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: dict[str, Any],
    share_list: list[qemu.Share],
    extra: tuple[str, ...] = (),
) -> None:
    spec = qemu_spec(settings, state, base, record, share_list, extra)
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


def ensure_disk(settings: VmSettings, state: StateDir, base: BaseImage) -> None:
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
