"""`sim.serve --testdir`: the labs Rust tests wrote beside their binaries.

A Rust test written with patchbay's library gets its folder from the `testdir` crate
(`testdir!()`) and has its lab write there (`OutDir::Exact`). The crate makes a numbered
generation per test run beside the test binary, and a link to the newest:

    <work>/binaries/tests/testdir-3/<crate or test binary>/<module>/.../<test>/
        events.jsonl state.json device.<name>.tracing.jsonl device.<name>.events.jsonl ...
    <work>/binaries/tests/testdir-current -> /work/binaries/tests/testdir-3

In the guest that link is made absolute (the binary's folder is /work/binaries/tests), so
on the host it leads nowhere (or, as any link the guest makes, anywhere): it is read,
never followed. Its last name, when it is a `testdir-N` folder beside it, is the current
generation; else the highest-numbered `testdir-N` is (QEMU_VM_FS=none brings no link
home at all). A `testdir-current` that is a real folder is taken as it is.

The generation is looked up again at every request, so a page left open shows the next
`test.run`'s labs. Labs are found at any depth below the generation (one per test, as
deep as the test's module path), within MAX_DEPTH levels and MAX_FOLDERS folders.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path, PurePath

TESTS = ("binaries", "tests")
CURRENT = "testdir-current"
_GENERATION = re.compile(r"testdir-([0-9]{1,5})")
# A test's folder is <crate>/<module path>/<test>: deep module trees stay well inside.
MAX_DEPTH = 16
# Folders looked at per listing (a generation of thousands of tests stays inside).
MAX_FOLDERS = 20_000


def _real_dir(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and not getattr(st, "st_reparse_tag", 0)


def tests_dir(work_dir: Path) -> Path:
    """Where test.run stages the test binaries (and they write their testdirs)."""
    return work_dir.joinpath(*TESTS)


def generations(work_dir: Path) -> list[str]:
    """The `testdir-N` folders beside the binaries (real folders only), oldest first."""
    folder = tests_dir(work_dir)
    if not (_real_dir(work_dir / TESTS[0]) and _real_dir(folder)):
        return []
    try:
        names = [e.name for e in os.scandir(folder) if _GENERATION.fullmatch(e.name)]
    except OSError:
        return []
    found = [n for n in names if _real_dir(folder / n)]
    return sorted(found, key=lambda n: int(n.split("-", 1)[1]))


def current(work_dir: Path) -> str | None:
    """The name of the current generation's folder in tests_dir(work_dir), or None."""
    folder = tests_dir(work_dir)
    if not (_real_dir(work_dir / TESTS[0]) and _real_dir(folder)):
        return None
    link = folder / CURRENT
    try:
        target = os.readlink(link)
    except OSError:
        if _real_dir(link):
            return CURRENT
    else:
        name = PurePath(target.rstrip("/\\")).name
        if _GENERATION.fullmatch(name) and _real_dir(folder / name):
            return name
    found = generations(work_dir)
    return found[-1] if found else None


def parts(work_dir: Path) -> tuple[str, ...] | None:
    """The current generation's segments below the work dir, or None when there is none."""
    name = current(work_dir)
    return None if name is None else (*TESTS, name)


def describe(work_dir: Path) -> str:
    """One line for `sim.serve --testdir` to say what it serves."""
    folder = tests_dir(work_dir)
    name = current(work_dir)
    if name is None:
        return (
            f"no test output in {folder} yet: labs appear here once `test.run` runs tests "
            "that write them (patchbay's testdir!() with OutDir::Exact)"
        )
    if name == CURRENT:
        return f"serving the labs in {folder / CURRENT}"
    return f"serving the labs in {folder / CURRENT} (now {name})"
