"""Finding runs in the work dir and resolving paths inside it without ever leaving it.

A "run" is one sim's folder (it holds events.jsonl), named by its path relative to the
work dir (`sim-YYMMDD-HHMMSS/<sim>`); an "invocation" is the `sim-...` folder above it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    def api(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "status": self.status,
            "invocation": self.invocation,
        }


def read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or half-written."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metadata(run_dir: Path) -> tuple[str | None, str | None]:
    state = read_json(run_dir / STATE)
    if not isinstance(state, dict):
        return None, None
    label, status = state.get("label"), state.get("status")
    return (label if isinstance(label, str) else None, status if isinstance(status, str) else None)


def discover_runs(base: Path) -> list[RunInfo]:
    """Every run under base, newest first (names start with the invocation's timestamp)."""
    if (base / EVENTS).is_file():  # the work dir is itself one run
        label, status = _metadata(base)
        return [RunInfo(base.name or ".", base, label, status, None)]
    runs: list[RunInfo] = []
    _scan(base, base, 1, runs)
    runs.sort(key=lambda r: r.name, reverse=True)
    return runs


def _scan(root: Path, folder: Path, depth: int, runs: list[RunInfo]) -> None:
    if depth > MAX_DEPTH:
        return
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        # Links are skipped: `latest` would list every run twice, others may lead out.
        if entry.is_symlink() or not entry.is_dir(follow_symlinks=False):
            continue
        path = Path(entry.path)
        if (path / EVENTS).is_file() and not (path / EVENTS).is_symlink():
            name = path.relative_to(root).as_posix()
            label, status = _metadata(path)
            first = name.split("/", 1)[0]
            runs.append(RunInfo(name, path, label, status, first if first != name else None))
        else:
            _scan(root, path, depth + 1, runs)


def find_run(base: Path, name: str) -> RunInfo | None:
    """The run of that exact name; nothing else (no `..`, no path the scan did not list)."""
    for run in discover_runs(base):
        if run.name == name:
            return run
    return None


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def safe_segment(segment: str) -> bool:
    """One decoded URL path segment that names a file or folder and nothing more."""
    bad = segment in ("", ".", "..") or any(c in segment for c in "/\\\x00")
    return not bad


def file_in(folder: Path, segments: list[str]) -> Path | None:
    """A regular file at folder/segments..., only when it resolves inside folder."""
    if not segments or not all(safe_segment(s) for s in segments):
        return None
    path = folder.joinpath(*segments)
    if not _inside(path, folder) or not path.is_file():
        return None
    return path.resolve()


def invocation_dir(base: Path, name: str) -> Path | None:
    """The invocation folder `base/name` (one segment, resolving inside base)."""
    if not safe_segment(name):
        return None
    path = base / name
    if not path.is_dir() or not _inside(path, base):
        return None
    return path.resolve()


def latest_invocation(base: Path) -> str | None:
    """The `latest` link's target when it stays inside base, else the newest sim-* folder."""
    link = base / "latest"
    if link.is_symlink() and _inside(link, base) and link.resolve().is_dir():
        return link.resolve().name
    names = sorted(
        (p.name for p in base.glob("sim-*") if p.is_dir() and not p.is_symlink()), reverse=True
    )
    return names[0] if names else None


def invocation_progress(folder: Path) -> dict | None:
    """progress.json while it runs, manifest.json (same simulations[]) when it only has that."""
    for name in ("progress.json", "manifest.json"):
        data = read_json(folder / name)
        if isinstance(data, dict):
            return data
    return None
