"""Booting a VM: base image, seed, disk, firmware, accelerator, QEMU and its helpers (from
the image's template when there is one), the wait, provisioning."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import VmUnavailable
from ..settings import Accel, FsMode, VmSettings
from ..ui import count, say, spinner, warn
from . import (
    accel,
    firmware,
    guest,
    keys,
    ports,
    process,
    provision,
    qemu,
    qmp,
    savedstate,
    shares,
    templates,
)
from .images import BaseImage, ensure_base_image
from .record import VmRecord, mounts_of
from .running import BootInterrupted, Vm, remove_transient
from .start import control_ports, keypairs, qemu_spec, start_qemu, write_seed
from .state import StateDir

# The wait for SSH (and for the guest agent beside it) gets at least this long, however
# much of the boot timeout the way to the gate took: cloud-init and sshd start after it.
MIN_SSH_WAIT = 30.0
# The provisioning script run by the guest agent gets at least this long, however little
# of that wait is left: on our images it only checks, which takes seconds.
MIN_AGENT_PROVISIONING = 60.0
# Once the guest answers SSH, its agent (started early in its boot) answers at once; an
# image without one costs this once.
AGENT_PING_TIMEOUT = 3.0


def _guest_script(settings: VmSettings, fs_mode: FsMode) -> str:
    # The proxy settings come first: provisioning may run apt-get.
    return "\n".join(
        [
            guest.proxy_script(guest.guest_proxy_env(os.environ)),
            shares.mount_script(settings.mounts(), fs_mode, settings.ssh_user),
            provision.SCRIPT,
        ]
    )


def boot(settings: VmSettings, state: StateDir, refresh: bool = False) -> Vm:
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
    fs_mode, daemon, _why = shares.choose_fs_mode(settings.fs_mode, settings.virtiofsd_bin)
    # A new VM of an image with the gate starts without its seed: from a template of
    # the image, or booting to the gate and saving one there (templates.py).
    gated = base.gated and fs_mode != FsMode.VIRTIOFS and not state.disk.exists()
    if not gated:
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
    choice = accel.choose(
        settings.qemu_bin,
        settings.accel,
        settings.arch,
        base,
        settings.image_cache_dir,
        refresh=refresh,
    )
    say(choice.line())
    qmp_port, qga_port = control_ports()
    record = VmRecord(
        name=settings.name,
        ssh_port=port,
        ssh_user=settings.ssh_user,
        accel=choice.accel,
        cpus=qemu.guest_cpus(settings.cpus, choice.accel, settings.cpus_explicit),
        fs_mode=fs_mode,
        mounts=mounts_of(settings),
        base_image=str(base.disk),
        base=base,
        image_url=settings.image_url,
        accel_asked=settings.accel,
        seed_id=seed_id,
        arch=settings.arch,
        firmware=flash,
        qmp_port=qmp_port,
        qga_port=qga_port,
        seed_hotplug=gated,
    )
    try:
        vm = start_and_wait(settings, state, base, record, daemon)
    except BaseException as e:
        # Nothing left running on failure (what start_and_wait owned is stopped already;
        # this sweeps what a PID file names); the serial log stays for reading.
        remove_transient(state, VmRecord.read(state) or record)
        if isinstance(e, KeyboardInterrupt):
            raise BootInterrupted(
                f"interrupted: stopped {settings.name} and its helpers "
                f"(serial log: {state.serial_log})"
            ) from None
        raise
    how = ", from its image's template" if vm.record.from_template else ""
    say(
        f"VM {settings.name} is up after {time.monotonic() - started:.1f} s "
        f"(accel {vm.record.accel}, {fs_mode}, ssh port {port}, "
        f"{count(vm.record.cpus, 'CPU')}{how})"
    )
    return vm


def start_and_wait(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    daemon: shares.Virtiofsd | None,
) -> Vm:
    share_list = shares.make_shares(settings.mounts(), record.fs_mode, state.root)
    owned = _start(settings, state, base, record, daemon, share_list)
    try:
        if _stalls(settings, state, base, record):
            owned.close()
            owned = _after_a_stall(settings, state, base, record, daemon, share_list)
        vm = _wait_and_provision(settings, state, base, record, share_list)
    except BaseException:
        owned.close()
        raise
    # From here the VM's record owns the processes (`vm.down`, `vm.cleanup`).
    owned.pop_all()
    return vm


def _start(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    daemon: shares.Virtiofsd | None,
    share_list: list[qemu.Share],
) -> contextlib.ExitStack:
    """Start a new VM the way its image allows: from the image's template, else from
    power-on. The returned stack stops what was started."""
    if record.seed_hotplug:
        owned = _start_from_template(settings, state, base, record, share_list)
        if owned is not None:
            return owned
        ensure_disk(settings, state, base)
    return _start_processes(settings, state, base, record, daemon, share_list)


def _stalls(settings: VmSettings, state: StateDir, base: BaseImage, record: VmRecord) -> bool:
    """Whether a guest started under an auto-chosen hardware accelerator printed nothing
    on its serial console in its first seconds (SPEC 9.1: the accelerator passed its test
    boot and runs no guest)."""
    if record.accel == Accel.TCG or settings.accel != Accel.AUTO:
        return False
    if record.from_template:
        return False  # it ran under this accelerator before, and saved itself
    deadline = time.monotonic() + accel.STALL_SECONDS
    while time.monotonic() < deadline:
        if accel.shows_life(state.serial_log, base):
            return False
        if not process.is_ours(record.pid, str(state.root)):
            return False  # died: the boot wait says why, with the serial log
        time.sleep(0.5)
    return True


def _after_a_stall(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    daemon: shares.Virtiofsd | None,
    share_list: list[qemu.Share],
) -> contextlib.ExitStack:
    """Remember the stall and start the VM again under TCG, as any new VM starts (from
    its image's template when there is one)."""
    stalled = record.accel
    why = f"a real guest printed nothing in {accel.STALL_SECONDS:.0f} s"
    verdicts = accel.remember_stall(settings.image_cache_dir, settings.qemu_bin, stalled, why)
    warn(
        f"the {stalled} guest printed nothing in {accel.STALL_SECONDS:.0f} s: going on under "
        f"TCG; new VMs on this host use TCG for a day (remembered in {verdicts}; "
        f"vm.up --refresh tests {stalled} again)"
    )
    record.accel = Accel.TCG
    record.cpus = qemu.guest_cpus(settings.cpus, Accel.TCG, settings.cpus_explicit)
    if record.seed_hotplug:
        state.disk.unlink(missing_ok=True)  # the stalled guest's: a new one, or the template's
    return _start(settings, state, base, record, daemon, share_list)


def _start_processes(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    daemon: shares.Virtiofsd | None,
    share_list: list[qemu.Share],
) -> contextlib.ExitStack:
    """Start the virtiofsd helpers and QEMU; the returned stack stops them all, QEMU
    first. Each process is owned from the moment it exists, so an error or Ctrl-C at
    any point leaves nothing running."""
    marker = str(state.root)
    owned = contextlib.ExitStack()
    try:
        record.helpers = []
        if daemon:
            for share in share_list:
                log = state.root / f"virtiofsd-{share.tag}.log"
                pid = shares.start_virtiofsd(
                    daemon,
                    share,
                    log,
                    on_start=lambda p: owned.callback(process.terminate, p, marker),
                )
                (state.root / f"virtiofsd-{share.tag}.pid").write_text(f"{pid}\n")
                record.helpers.append(pid)
                record.write(state)
        start_qemu(settings, state, base, record, share_list)
        owned.callback(process.quit_now, record.pid, record.qmp_address(state), marker)
    except BaseException:
        owned.close()
        raise
    return owned


def _template_name(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
) -> str:
    spec = qemu_spec(settings, state, base, record, share_list)
    files = [p for p in (base.disk, base.kernel, base.initrd) if p]
    return templates.key(spec, qemu.version(settings.qemu_bin), settings.disk_gb, files)


def _template_cache(settings: VmSettings) -> Path:
    return settings.image_cache_dir / "templates"


def _start_from_template(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
) -> contextlib.ExitStack | None:
    """Start a new VM from its image's template, running on from the gate; the stack
    that stops its QEMU. None when there is no template or it failed (said why, and
    the template is deleted): the caller boots from power-on."""
    name = _template_name(settings, state, base, record, share_list)
    tpl = templates.find(_template_cache(settings), name)
    if tpl is None:
        return None
    marker = str(state.root)
    owned = contextlib.ExitStack()
    try:
        templates.copy_disk(tpl, state.disk)
        start_qemu(settings, state, base, record, share_list, extra=savedstate.RESUME_ARGS)
        qmp_address = record.qmp_address(state)
        owned.callback(process.quit_now, record.pid, qmp_address, marker)
        with spinner(f"starting {settings.name} from its image's template"):
            savedstate.restore(tpl.state, qmp_address, qemu.version(settings.qemu_bin))
            savedstate.run_guest(qmp_address)
    except (savedstate.RestoreFailed, OSError, ValueError) as e:
        owned.close()
        templates.discard(tpl)
        state.disk.unlink(missing_ok=True)
        warn(f"starting {settings.name} from its image's template failed ({e}); booting it")
        return None
    except BaseException:
        owned.close()
        raise
    record.from_template = True
    record.write(state)
    return owned


def _through_the_gate(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
    progress: Callable[[float, str], None],
) -> float:
    """The guest waits at the gate for its seed: save the template there when it booted
    from power-on, then hot-plug the seed; from then on it is a VM like any other.
    The seconds it took to reach the gate."""
    qmp_address = record.qmp_address(state)
    waited = 0.0
    if not record.from_template:
        pid = record.pid
        try:
            waited = templates.wait_for_gate(
                state.serial_log,
                alive=lambda: process.is_ours(pid, str(state.root)),
                timeout=settings.boot_timeout,
                on_progress=lambda w: progress(w, "booting to the gate"),
            )
        except (TimeoutError, ChildProcessError) as e:
            raise VmUnavailable(
                f"{e}. End of {state.serial_log}:\n{guest.serial_tail(state.serial_log)}"
            ) from None
        name = _template_name(settings, state, base, record, share_list)
        info = {"image": str(base.disk), "gate_seconds": round(waited, 1)}
        try:
            progress(waited, "saving the image's template")
            templates.save(
                _template_cache(settings),
                name,
                qmp_address,
                state.disk,
                qemu.version(settings.qemu_bin),
                info,
            )
        except savedstate.SaveFailed as e:
            warn(f"could not save a template of the image ({e}); new VMs boot in full")
    qmp.attach_seed(qmp_address, state.seed)
    record.seed_hotplug = False
    # What runs now, as a later save and resume start it: the seed on QEMU's command line.
    record.qemu_argv = qemu.build_argv(qemu_spec(settings, state, base, record, share_list))
    record.write(state)
    return waited


def _wait_and_provision(
    settings: VmSettings,
    state: StateDir,
    base: BaseImage,
    record: VmRecord,
    share_list: list[qemu.Share],
) -> Vm:
    conn = guest.connection(record.ssh_port, settings.ssh_user, state.key, state.known_hosts)
    with spinner("booting") as booting:

        def progress(waited: float, line: str) -> None:
            booting.update(f"waiting for the guest ({waited:.0f} s): {line}")

        left = settings.boot_timeout
        if record.seed_hotplug:
            left -= _through_the_gate(settings, state, base, record, share_list, progress)
        script = _guest_script(settings, record.fs_mode)
        qga = record.qga_address(state)
        # Our images have the guest agent, which starts with sshd: provisioning runs
        # through it while the first SSH login is made (each costs seconds under TCG).
        early = _AgentProvisioning(qga, script, left, record.from_template)
        if base.gated and qga:
            early.start()
        pid = record.pid
        waited = guest.wait_ready(
            conn,
            alive=lambda: process.is_ours(pid, str(state.root)),
            serial_log=state.serial_log,
            timeout=max(left, MIN_SSH_WAIT),
            on_progress=progress,
        )
        record.ssh_ready_seconds = round(waited, 1)
        booting.update("mounting shares and provisioning")
        if early.ident is not None:
            early.give_up.set()  # not connected yet: over SSH, now that it answers
            early.join()
        if early.error is not None:
            raise early.error
        if not early.done:
            guest.run_root_script(conn, script, "provisioning")
        record.guest_agent = early.done or _agent_answers(qga, set_time=record.from_template)
    record.write(state)
    return Vm(settings, record, conn, booted=True)


class _AgentProvisioning(threading.Thread):
    """The provisioning script run by the guest agent, once it answers. `done` when it
    ran and succeeded; `error` (VmUnavailable) when it ran and failed; neither when
    the agent never answered (then provisioning goes over SSH)."""

    def __init__(self, qga: qemu.Address | None, script: str, timeout: float, set_time: bool):
        super().__init__(name="provisioning", daemon=True)
        self.qga, self.script, self.set_time = qga, script, set_time
        self.deadline = time.monotonic() + max(timeout, MIN_SSH_WAIT)
        self.done = False
        self.error: VmUnavailable | None = None
        self.give_up = threading.Event()

    def run(self) -> None:
        while True:
            try:
                agent = qmp.guest_agent(self.qga)
                break
            except qmp.GuestAgentError:
                if time.monotonic() > self.deadline or self.give_up.wait(0.2):
                    return
        try:
            with agent:
                left = max(self.deadline - time.monotonic(), MIN_AGENT_PROVISIONING)
                code, output = agent.run_captured(["/bin/sh", "-euc", self.script], left)
                if code == 0 and self.set_time:
                    agent.set_time()
        except qmp.GuestAgentError:
            return  # over SSH instead
        if code != 0:
            self.error = VmUnavailable(
                f"provisioning failed in the guest (exit {code}):\n{output.strip()}"
            )
            return
        self.done = True


def _agent_answers(qga: qemu.Address, set_time: bool = False) -> bool:
    """Whether the guest agent answers. Asked once the guest is up over SSH: our image's
    agent started early in its boot; an image without one costs this one timeout.
    `set_time`: a guest from a template has its RTC's time, to the second; made exact."""
    try:
        with qmp.guest_agent(qga, timeout=AGENT_PING_TIMEOUT) as agent:
            agent.call("guest-ping")
            if set_time:
                agent.set_time()
            return True
    except qmp.GuestAgentError:
        return False


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
