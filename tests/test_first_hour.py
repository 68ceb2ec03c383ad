"""A newcomer's first hour (issue 22): tasks called from Python, picked collections
that see `c.config.vm`, honest status numbers, `vm.destroy` of nothing, output into a
closed pipe. The VM-backed ones use the shared VM."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from vmfixtures import VmEnv, vm_env

from patchbay_vm_tasks.vm import lifecycle

REPO = Path(__file__).resolve().parents[1]

PICKED = """
from invoke import Collection, task

from patchbay_vm_tasks.tasks import configure, sim, vm


@task
def mine(c):
    print("mine sees", c.config.vm.name, c.config.vm.mem_mb)


ns = configure(Collection(vm, sim, mine))
"""


def _invoke(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # No QEMU_VM_* but the name: the defaults and the project's invoke.yaml decide.
    base = {k: v for k, v in vm_env(project).items() if not k.startswith("QEMU_VM_")}
    return subprocess.run(
        [sys.executable, "-m", "invoke", *args],
        cwd=project,
        env={**base, "QEMU_VM_NAME": "firsthour", **env},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def test_picked_collections_see_the_vm_settings(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text(PICKED)
    (tmp_path / "invoke.yaml").write_text("vm:\n  mem_mb: 1234\n")
    out = _invoke(tmp_path, "mine")
    assert out.returncode == 0, out.stderr
    # The config as Invoke holds it: defaults and invoke.yaml (QEMU_VM_* are the settings'
    # own layer, resolved by the tasks).
    assert out.stdout == "mine sees patchbay-vm 1234\n"
    status = _invoke(tmp_path, "vm.status", "--json")
    assert status.returncode == 3 and json.loads(status.stdout)["settings"]["mem_mb"] == 1234


def test_status_says_what_a_boot_would_give(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text((REPO / "tasks.py").read_text())
    text = _invoke(tmp_path, "vm.status").stdout
    cores = os.cpu_count() or 1
    # The default 4 is capped to the host's cores under software emulation (at boot).
    line = next(x for x in text.splitlines() if x.startswith("would use:"))
    if cores < 4:
        assert f"4 CPUs ({cores} under software emulation on this {cores}-core host)" in line
    else:
        assert line.startswith("would use: 4 CPUs,"), line
    explicit = _invoke(tmp_path, "vm.status", QEMU_VM_CPUS="4").stdout
    assert "would use: 4 CPUs, " in explicit  # asked for: kept
    assert "version:   patchbay-vm-tasks " in text
    one = lifecycle.format_status(
        {"name": "x", "version": "0", "running": False, "pid": None, "state_dir": "/s",
         "mounts": [], "settings": {"cpus": 1, "cpus_explicit": True, "mem_mb": 512,
                                    "arch": "amd64", "ssh_port": 2222,
                                    "ssh_port_explicit": False, "image_url": "u"}}
    )  # fmt: skip
    assert "would use: 1 CPU, 512 MB" in one


def test_destroying_a_vm_never_booted_says_so_and_leaves_no_empty_folder(tmp_path: Path):
    (tmp_path / "tasks.py").write_text((REPO / "tasks.py").read_text())
    (tmp_path / ".qemu-vm" / "firsthour").mkdir(parents=True)  # as a lock left it
    out = _invoke(tmp_path, "vm.destroy")
    assert out.returncode == 0, out.stderr
    assert "was never booted here" in out.stdout and "0 files" not in out.stdout
    assert not (tmp_path / ".qemu-vm").exists()
    again = _invoke(tmp_path, "vm.destroy")
    assert again.returncode == 0 and "nothing to destroy" in again.stdout


def test_a_closed_pipe_ends_the_output_not_the_task(tmp_path: Path) -> None:
    (tmp_path / "tasks.py").write_text((REPO / "tasks.py").read_text())
    out = subprocess.run(
        f"{sys.executable} -m invoke vm.status --json | head -c 1; exit ${{PIPESTATUS[0]}}",
        shell=True, executable="/bin/bash", cwd=tmp_path, env=vm_env(tmp_path, name="pipe"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.stdout == "{"
    assert "Traceback" not in out.stderr and "BrokenPipe" not in out.stderr, out.stderr
    assert out.returncode == 3  # the task's own code: not running


MINE = """
from invoke import task

from patchbay_vm_tasks.tasks.vm import ssh


@task
def mine(c, code=0):
    ssh(c, cmd=["sh", "-c", f"echo from-guest-$((6 * 7)); exit {code}"])
    print("my task goes on")
"""


@pytest.mark.vm
def test_a_task_of_yours_calls_vm_ssh_with_a_command(vm: VmEnv) -> None:
    (vm.project / "mytasks.py").write_text(MINE)
    out = vm.invoke("-c", "mytasks", "mine")
    assert out.returncode == 0, out.stderr
    assert out.stdout == "from-guest-42\nmy task goes on\n"
    failing = vm.invoke("-c", "mytasks", "mine", "--code", "5")
    assert failing.returncode == 5
    assert "from-guest-42" in failing.stdout and "my task goes on" not in failing.stdout
