"""`vm.*`: the VM lifecycle."""

from __future__ import annotations

import json
import subprocess

from invoke import Collection, Context, Exit

from .. import settings
from ..errors import UsageError
from ..settings import FsMode
from ..vm import guest, guestcopy, lifecycle, openssh
from ..vm.state import state_of
from .common import emit, remainder, task, task_errors

# `vm.status` exit code when the VM is not running (as LSB's "program is not running").
NOT_RUNNING = 3


@task(
    help={
        "recreate": "Stop the VM if it runs, throw its disk away and boot a fresh one.",
        "refresh": "Look for a newer base image now (otherwise at most once a day), and "
        "test again a hardware accelerator that could not run a guest here.",
    }
)
def up(c: Context, recreate: bool = False, refresh: bool = False) -> None:
    """Boot the VM, or reuse the running one; make sure /app, /target, /work are mounted."""
    with task_errors():
        vm = lifecycle.up(settings.from_context(c), recreate=recreate, refresh=refresh)
        vm.close()
        if not vm.booted:
            emit(f"VM {vm.record.name} is running (ssh port {vm.record.ssh_port})")


@task(
    help={
        "poweroff": "Shut the guest down instead of saving it; the next vm.up boots it "
        "(a cold boot, as after a kernel update in the guest).",
    }
)
def down(c: Context, poweroff: bool = False) -> None:
    """Stop the VM, saving the guest so the next vm.up resumes it in seconds.

    A guest that cannot be saved (virtiofs shares, an image without the guest agent), or
    --poweroff: ACPI powerdown, then QMP quit. Its helper processes stop either way."""
    with task_errors():
        emit(lifecycle.down(settings.from_context(c), poweroff=poweroff))


# `json_` because `json` would shadow the module; Invoke spells it --json.
@task(help={"json_": "Print one JSON object instead of text."})
def status(c: Context, json_: bool = False) -> None:
    """Show the VM's state, SSH port, accel, fs mode, mounts and resolved settings.

    Exits 3 when it is not running."""
    with task_errors():
        info = lifecycle.status(settings.from_context(c))
    text = lifecycle.format_status(info)
    if info.get("fs_mode") == FsMode.NONE:
        text += "\n  (not shared: tasks copy files into these guest folders and results back)"
    emit(json.dumps(info, indent=2) if json_ else text)
    if not info["running"]:
        raise Exit(code=NOT_RUNNING)


@task
def cleanup(c: Context) -> None:
    """Remove stale sockets, PID files and helper processes left by a VM that died."""
    with task_errors():
        emit(lifecycle.cleanup(settings.from_context(c)))


@task(
    iterable=["cmd"],
    help={
        "cmd": "The command as a list, for a task of yours that calls this one "
        '(vm.ssh(c, cmd=["ip", "netns", "list"])); on the command line it goes after --.',
    },
)
def ssh(c: Context, cmd: list[str] | None = None) -> None:
    """Run `-- CMD ARGS...` in the guest (exit code passed through); no command: a shell.

    With the OpenSSH client, one connection is kept for later calls (about 0.15 s each)."""
    with task_errors():
        s = settings.from_context(c)
        argv = remainder(cmd)
        ssh_bin = openssh.client()
        if ssh_bin:
            record = lifecycle.running_record(s)
            ssh = openssh.argv(ssh_bin, state_of(s), record.ssh_port, record.ssh_user, argv or None)
            if cmd:
                # Called from a task of yours: ssh as a child, and your task goes on
                # (a failing command ends it with its exit code, as c.run would).
                code = subprocess.run(ssh, check=False).returncode
                if code:
                    raise Exit(code=code)
                return
            code = openssh.hand_over(ssh)
            raise Exit(code=code)  # Windows only: elsewhere this process became ssh
        vm = lifecycle.require_running(s)
        try:
            if not argv:
                vm.conn.shell()
                raise Exit(code=0)
            result = guest.run_argv(vm.conn, argv)
        finally:
            vm.close()
    if result.exited:
        raise Exit(code=result.exited)


@task
def ssh_config(c: Context) -> None:
    """Print an OpenSSH Host block for the running VM (use with ssh/scp/rsync -F FILE NAME)."""
    with task_errors():
        emit(guestcopy.ssh_config(settings.from_context(c)), end="")


@task(
    positional=["src", "dst"],
    help={
        "src": "File to copy: a host path, or guest:PATH (relative to the guest user's home).",
        "dst": "Where to: guest:PATH (an existing folder keeps the name), or a host path.",
    },
)
def cp(c: Context, src: str, dst: str) -> None:
    """Copy one file between host and guest over SFTP: `vm.cp a.txt guest:/tmp/`."""
    with task_errors():
        if not (src and dst):
            raise UsageError("give SRC and DST: vm.cp a.txt guest:/tmp/ (or guest:PATH .)")
        s = settings.from_context(c)
        plan = guestcopy.plan_copy(src, dst)
        vm = lifecycle.require_running(s)
        try:
            emit(guestcopy.copy(vm.conn, plan))
        finally:
            vm.close()


@task(name="list", help={"json_": "Print a JSON list instead of a table."})
def list_(c: Context, json_: bool = False) -> None:
    """List this project's VMs (the folders of .qemu-vm/) with state and SSH port."""
    with task_errors():
        vms = lifecycle.list_vms(settings.from_context(c).project_dir)
    emit(json.dumps(vms, indent=2) if json_ else lifecycle.format_list(vms))


@task(help={"name": "The VM to destroy (default: QEMU_VM_NAME or the config's)."})
def destroy(c: Context, name: str | None = None) -> None:
    """Stop the VM if it runs, then delete its state dir (disk, keys, logs)."""
    with task_errors():
        emit(lifecycle.destroy(settings.from_context(c, name=name)))


vm = Collection("vm", up, down, status, cleanup, ssh, ssh_config, cp, list_, destroy)
