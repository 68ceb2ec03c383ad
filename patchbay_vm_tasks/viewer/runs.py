"""Finding runs in the work dir and reading their files without ever leaving it.

A "run" is one sim's folder (it holds events.jsonl), named by its path relative to the
work dir (`sim-YYMMDD-HHMMSS/<sim>`); an "invocation" is the `sim-...` folder above it.

Everything here is written by the guest (files.py): runs are found by a scan that skips
links, and every file is read through `files` (no link followed below the work dir,
regular files only, size and nesting limits). A run whose state.json cannot be read is
still listed, with no label and no status.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import files
from ..sim import workdir

EVENTS = "events.jsonl"
STATE = "state.json"
MAX_DEPTH = 3


@dataclass(frozen=True)
class RunInfo:
    name: str
    path: Path
    label: str | None
    status: str | None
    invocation: str | None
    # The run folder's segments below the work dir (empty: the work dir is the run).
    parts: tuple[str, ...] = field(default=(), compare=False)

    def api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "invocation": self.invocation,
        }

    def rel(self, *names: str) -> list[str]:
        """The segments of a file of this run below the work dir."""
        return [*self.parts, *names]


def read_json(base: Path, rel: str | Sequence[str]) -> Any:
    """The parsed run file base/rel, or None when it is missing, half-written, a link, not
    a regular file, too big or nested too deep."""
    return files.read_json(base, rel)


def _metadata(base: Path, parts: Sequence[str]) -> tuple[str | None, str | None]:
    state = read_json(base, [*parts, STATE])
    if not isinstance(state, dict):
        return None, None
    label, status = state.get("label"), state.get("status")
    return (label if isinstance(label, str) else None, status if isinstance(status, str) else None)


def discover_runs(
    base: Path,
    prefix: tuple[str, ...] = (),
    max_depth: int = MAX_DEPTH,
    max_folders: int | None = None,
) -> list[RunInfo]:
    """Every run under base, newest first (names start with the invocation's timestamp).

    prefix: the runs are those below base/prefix (`sim.serve --testdir`: a generation of
    test output), named relative to it; their files are still read from base, so no link
    on the way below base is followed. max_depth: how deep runs are looked for;
    max_folders: at most this many folders are looked into."""
    top = base.joinpath(*prefix)
    if files.is_regular(base, [*prefix, EVENTS]):  # the folder is itself one run
        label, status = _metadata(base, prefix)
        return [RunInfo(top.name or ".", top, label, status, None, prefix)]
    runs: list[RunInfo] = []
    budget = [max_folders if max_folders is not None else -1]
    _scan(base, prefix, (), 1, runs, max_depth, budget)
    runs.sort(key=lambda r: r.name, reverse=True)
    return runs


def _scan(
    base: Path,
    prefix: tuple[str, ...],
    parts: tuple[str, ...],
    depth: int,
    runs: list[RunInfo],
    max_depth: int = MAX_DEPTH,
    budget: list[int] | None = None,
) -> None:
    if depth > max_depth:
        return
    if budget is not None and budget[0] >= 0:
        if budget[0] == 0:
            return
        budget[0] -= 1
    try:
        entries = sorted(os.scandir(base.joinpath(*prefix, *parts)), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        # Links are skipped: `latest` would list every run twice, others may lead out.
        try:
            if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
                continue
        except OSError:
            continue
        if not files.safe_segment(entry.name):
            continue
        sub = (*parts, entry.name)
        if files.is_regular(base, [*prefix, *sub, EVENTS]):
            name = "/".join(sub)
            label, status = _metadata(base, (*prefix, *sub))
            runs.append(
                RunInfo(
                    name,
                    base.joinpath(*prefix, *sub),
                    label,
                    status,
                    sub[0] if depth > 1 else None,
                    (*prefix, *sub),
                )
            )
        else:
            _scan(base, prefix, sub, depth + 1, runs, max_depth, budget)


def find_run(base: Path, name: str, **scan: Any) -> RunInfo | None:
    """The run of that exact name; nothing else (no `..`, no path the scan did not list).
    scan: discover_runs' prefix, max_depth, max_folders."""
    for run in discover_runs(base, **scan):
        if run.name == name:
            return run
    return None


def safe_segment(segment: str) -> bool:
    """One decoded URL path segment that names a file or folder and nothing more."""
    return files.safe_segment(segment)


def file_parts(run: RunInfo, segments: list[str]) -> list[str] | None:
    """The segments of a run's file below the work dir, when each names one file or
    folder; whether it is a regular file reached without links is up to the read."""
    if not segments or not all(safe_segment(s) for s in segments):
        return None
    return run.rel(*segments)


def invocation_dir(base: Path, name: str) -> Path | None:
    """The invocation folder `base/name`: one segment naming a real folder (not a link)."""
    if not safe_segment(name):
        return None
    path = base / name
    try:
        if path.is_symlink() or not path.is_dir():
            return None
    except OSError:
        return None
    return path


def latest_invocation(base: Path) -> str | None:
    """The latest invocation's name (workdir.latest_run: the `latest` link, only read,
    else the newest run folder)."""
    run = workdir.latest_run(base)
    return run.name if run else None


def invocation_progress(base: Path, name: str) -> dict | None:
    """progress.json while it runs, manifest.json (same simulations[]) when it only has that."""
    for file in ("progress.json", "manifest.json"):
        data = read_json(base, [name, file])
        if isinstance(data, dict):
            return data
    return None
