"""Reading TOML files, showing their paths, and where a file a sim names is looked for."""

from __future__ import annotations

import contextlib
import re
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from . import model

SimError = model.SimError

_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


def show_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the cwd when it lies below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


# The files read_toml reads while `recording_reads` is on: what a sim needs in the guest.
_reads: ContextVar[list[Path] | None] = ContextVar("sim_file_reads", default=None)


@contextlib.contextmanager
def recording_reads() -> Iterator[list[Path]]:
    """Collect (resolved) every file read_toml reads inside the block."""
    reads: list[Path] = []
    token = _reads.set(reads)
    try:
        yield reads
    finally:
        _reads.reset(token)


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file; errors name the file, line and column (`file:L:C: ...`)."""
    path = Path(path)
    reads = _reads.get()
    if reads is not None and path.resolve() not in reads:
        reads.append(path.resolve())
    shown = show_path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise SimError(shown, None, "not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise SimError(shown, None, f"cannot read it: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # Python 3.11's TOMLDecodeError only carries the position inside its message.
        msg = str(exc)
        m = _TOML_POS_RE.search(msg)
        if m:
            where, at = f"{shown}:{m[1]}:{m[2]}", f" (line {m[1]}, column {m[2]})"
        else:
            where, at = shown, " (at the end of the file)"
        reason = _TOML_END_RE.sub("", _TOML_POS_RE.sub("", msg))
        raise SimError(where, None, f"invalid TOML{at}: {reason}; fix the file") from None


def places_near(folder: Path, rel: Path) -> list[Path]:
    """Where a relative name is looked for, in order: in `folder`, one folder up, the cwd."""
    return [folder / rel, folder.parent / rel, Path.cwd() / rel]
