"""The work dir's run folders (`sim-YYMMDD-HHMMSS[-N]`, RUNNER-FACTS 5): which is the
latest, their order, which to prune. The one rule for the host's work dir, the viewer,
the report and the guest's copy of the runs (QEMU_VM_FS=none)."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

RUN_DIR = re.compile(r"sim-(\d{6})-(\d{6})(?:-(\d+))?")


def run_order(name: str) -> tuple[str, str, int]:
    """Sort key of a run folder's name: its UTC timestamp, then `-1`, `-2`, ... `-10` for
    runs started in the same second (as numbers: `-10` after `-9`)."""
    m = RUN_DIR.fullmatch(name)
    assert m, name
    return (m[1], m[2], int(m[3] or 0))


def run_dirs(work_dir: Path) -> list[Path]:
    """The run folders of `work_dir`, oldest first."""
    try:
        entries = list(work_dir.iterdir())
    except OSError:
        return []
    # Links are never run folders (a link the guest made may lead anywhere).
    runs = [p for p in entries if RUN_DIR.fullmatch(p.name) and _real_dir(p)]
    return sorted(runs, key=lambda p: run_order(p.name))


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def linked_run(work_dir: Path) -> Path | None:
    """The run folder the `latest` symlink names, if it names one of work_dir's.

    The link is read, never followed: the guest writes the work dir, and a `latest`
    leading anywhere else (`/`, `../..`) names no run of ours."""
    try:
        target = os.readlink(work_dir / "latest")
    except OSError:
        return None
    name = target.rstrip("/").removeprefix("./")
    if not RUN_DIR.fullmatch(name):
        return None
    path = work_dir / name
    return path if _real_dir(path) else None


def latest_run(work_dir: Path) -> Path | None:
    """The latest run folder: the one `latest` names, else the newest; None when none."""
    runs = run_dirs(work_dir)
    return linked_run(work_dir) or (runs[-1] if runs else None)


def runs_to_prune(names: list[str], keep: int, latest: str | None) -> list[str]:
    """Which of the run folders `names` go so that `keep` remain, oldest first; `keep` 0
    keeps everything, and `latest` is never one (it counts towards `keep`)."""
    if keep <= 0:
        return []
    ordered = sorted((n for n in names if RUN_DIR.fullmatch(n)), key=run_order)
    return [n for n in ordered[: max(len(ordered) - keep, 0)] if n != latest]


def prune_runs(work_dir: Path, keep: int) -> list[Path]:
    """Delete the oldest run folders so that `keep` remain; returns the deleted ones.

    `keep` 0 keeps everything. The folder `latest` points to is never deleted (it
    counts towards `keep`).
    """
    linked = linked_run(work_dir)
    names = [p.name for p in run_dirs(work_dir)]
    removed = []
    for name in runs_to_prune(names, keep, linked.name if linked else None):
        # rmtree removes links inside, never what they point at (and refuses a top link).
        shutil.rmtree(work_dir / name, ignore_errors=True)
        removed.append(work_dir / name)
    return removed
