"""The work dir's run folders (`sim-YYMMDD-HHMMSS[-N]`, RUNNER-FACTS 5): keep the newest."""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

RUN_DIR = re.compile(r"sim-(\d{6})-(\d{6})(?:-(\d+))?")


def run_dirs(work_dir: Path) -> list[Path]:
    """The run folders of `work_dir`, oldest first (their names are UTC timestamps,
    `-1`, `-2` for runs started in the same second)."""

    def order(path: Path) -> tuple[str, str, int]:
        m = RUN_DIR.fullmatch(path.name)
        assert m
        return (m[1], m[2], int(m[3] or 0))

    try:
        entries = list(work_dir.iterdir())
    except OSError:
        return []
    # Links are never run folders (a link the guest made may lead anywhere).
    runs = [p for p in entries if RUN_DIR.fullmatch(p.name) and _real_dir(p)]
    return sorted(runs, key=order)


def _real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return False


def latest_run(work_dir: Path) -> Path | None:
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
    try:
        is_dir = stat.S_ISDIR(path.lstat().st_mode)
    except OSError:
        return None
    return path.resolve() if is_dir else None


def prune_runs(work_dir: Path, keep: int) -> list[Path]:
    """Delete the oldest run folders so that `keep` remain; returns the deleted ones.

    `keep` 0 keeps everything. The folder `latest` points to is never deleted (it
    counts towards `keep`).
    """
    if keep <= 0:
        return []
    runs = run_dirs(work_dir)
    latest = latest_run(work_dir)
    removed = []
    for path in runs[: max(len(runs) - keep, 0)]:
        if latest is not None and path.resolve() == latest:
            continue
        # rmtree removes links inside, never what they point at (and refuses a top link).
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
