"""Our QEMU as a host process (vm/process.py): a PID is ours only when its command line
names our state dir. Starting QEMU per host OS is in test_platforms.py."""

from __future__ import annotations

import os

from patchbay_vm_tasks.vm import process


def test_is_ours_checks_the_command_line(tmp_path) -> None:
    assert process.is_ours(os.getpid(), "pytest") or process.is_ours(os.getpid(), "python")
    assert not process.is_ours(os.getpid(), str(tmp_path / "never-in-a-cmdline"))
    assert not process.is_ours(None, "x")
    assert not process.is_ours(2**22 + 12345, "x")  # no such process
