"""Test binaries in the work dir: staged into `binaries/tests/` (guest
`/work/binaries/tests/`) where they run and write their output, and, without shared
folders (QEMU_VM_FS=none), that output brought home."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from .. import files
from ..errors import TaskError
from ..files import copy_executable
from ..settings import GUEST_WORK
from ..ui import say
from ..vm.sync import SyncError, claim, pull, quietly
from .cargo import TestExecutable

# Where the work dir is mounted in the guest (SPEC 5) and where test binaries land in it.
GUEST_WORK_DIR = PurePosixPath(GUEST_WORK)
TESTS_SUBDIR = ("binaries", "tests")
GUEST_TESTS_DIR = GUEST_WORK_DIR.joinpath(*TESTS_SUBDIR)
# Beside the tests folder: the names staged last time, so stale ones can be removed.
STAGED_MANIFEST = ".tests-staged"


def _unique_name(name: str, taken: set[str]) -> str:
    if name not in taken:
        return name
    n = 2
    while f"{name}-{n}" in taken:
        n += 1
    return f"{name}-{n}"


def _stage_executable(src: Path, dest: Path) -> None:
    st = src.stat()
    try:
        dst = dest.lstat()  # the guest may have put a link there: it is replaced, not read
    except FileNotFoundError:
        dst = None
    if dst is not None and (dst.st_size, dst.st_mtime_ns) == (st.st_size, st.st_mtime_ns):
        return  # unchanged since the last run; test binaries can be hundreds of MB
    # Through a temp file and a rename (see files.py); src's mtime makes the check above work.
    copy_executable(src, dest, keep_times=True)


def stage_test_binaries(exes: Sequence[TestExecutable], work_dir: Path) -> list[str]:
    """Copy the test binaries to `<work_dir>/binaries/tests/`; return their guest paths.

    The folder is made world-writable (0o777) because tests write output next to
    themselves and run as the guest user or as root. Two executables with the same file
    name get distinct ones (`name`, `name-2`, ...). Paths come back in `exes` order.
    Binaries staged by an earlier build and not by this one are removed (each build's
    names carry a new hash, and test binaries can be hundreds of MB); anything else in
    the folder, such as the tests' own output, is left alone.
    """
    # Real folders (the guest writes there: a link in their place is removed, not
    # followed), made world-writable explicitly: mkdir's mode is cut down by the umask.
    dest_dir = files.real_dir(Path(work_dir), TESTS_SUBDIR)
    files.set_dir_mode(dest_dir, 0o777)
    manifest = dest_dir.parent / STAGED_MANIFEST
    taken: set[str] = set()
    guest_paths: list[str] = []
    for exe in exes:
        name = _unique_name(exe.path.name, taken)
        taken.add(name)
        _stage_executable(exe.path, dest_dir / name)
        guest_paths.append(str(GUEST_TESTS_DIR / name))
    try:  # ours, but in a folder the guest writes: read as untrusted, written anew
        previous = files.read_limited(dest_dir.parent, [STAGED_MANIFEST], 1 << 20).decode()
    except (OSError, UnicodeDecodeError):
        previous = ""
    for name in set(previous.split("\n")) - taken:
        if files.safe_segment(name):  # a name, never a path
            (dest_dir / name).unlink(missing_ok=True)
    files.write_atomic(manifest, "".join(f"{name}\n" for name in sorted(taken)).encode())
    return guest_paths


def bring_tests_home_after(conn: Any, settings: Any, as_root: bool) -> TaskError | None:
    """Pull what the test binaries wrote next to themselves into the host work dir's
    binaries/tests (the binaries themselves are unchanged, so they stay)."""

    def action() -> None:
        if as_root:
            claim(conn, settings.ssh_user, [str(GUEST_TESTS_DIR)])
        home = settings.work_dir.joinpath(*TESTS_SUBDIR)
        done = pull(conn, str(GUEST_TESTS_DIR), home, root=settings.work_dir)
        if done.files:
            say(f"copied from the guest: {done.describe()}")
        if done.failed:
            raise SyncError("cannot read " + "; ".join(done.failed[:10]))

    return quietly("test output did not all come back from the guest", action)
