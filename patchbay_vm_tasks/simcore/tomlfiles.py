"""Reading TOML files, showing their paths, and where a file a sim names is looked for.

Sim files are untrusted (SPEC 11): a file is read only when it is a regular file (a FIFO
or `/dev/zero` would block or never end), at most `MAX_FILE_BYTES`, and its tables and
arrays at most `MAX_NESTING` deep; every failure is a `SimError`, never a traceback.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from . import model
from .limits import MAX_FILE_BYTES, MAX_NESTING, shorten

SimError = model.SimError

_TOML_POS_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END_RE = re.compile(r"\s*\(at end of document\)\s*$")


def show_path(path: Path | str) -> str:
    """A path as the user would type it: relative to the cwd when it lies below it."""
    path = Path(path)
    try:
        return shorten(str(path.resolve().relative_to(Path.cwd().resolve())), 200)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (3.11)
        return shorten(str(path), 200)


def resolve(path: Path, shown: str | None = None, key: str | None = None) -> Path:
    """`path` made absolute with links resolved; a symlink loop or an unusable name is a
    SimError naming `shown` (default: the path) (Path.resolve raises RuntimeError or
    OSError for them)."""
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:
        where = show_path(path) if shown is None else shown
        raise SimError(where, key, f"cannot resolve {shorten(str(path))}: {_why(exc)}") from None


def expand_user(path: Path, shown: str, key: str | None = None) -> Path:
    """`~` and `~user` expanded; an unknown user is a SimError, not a RuntimeError."""
    try:
        return path.expanduser()
    except (RuntimeError, KeyError, OSError):
        head = str(path).split("/", 1)[0]
        raise SimError(
            shown, key, f"cannot expand {shorten(head)}: no such user or no home directory"
        ) from None


def is_file(path: Path) -> bool:
    """Path.is_file, with False (not an exception) for a name the system refuses (too long,
    a NUL) or cannot look up."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def read_limited(path: Path, shown: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes. Opened without blocking (a
    FIFO would wait for a writer forever), refused unless regular (a FIFO, a device such
    as /dev/zero, a folder), read to at most limit + 1 bytes whatever its size says."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            raise SimError(shown, None, "cannot read it: the file name is too long") from None
        raise SimError(shown, None, f"cannot read it: {_why(exc)}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise SimError(shown, None, f"cannot read it: {what}; give a TOML file")
        if st.st_size > limit:
            raise SimError(shown, None, f"is {st.st_size} bytes; sim files are at most {limit}")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 16, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise SimError(shown, None, f"is over {limit} bytes; sim files are at most {limit}")
        return b"".join(chunks)
    except OSError as exc:
        raise SimError(shown, None, f"cannot read it: {_why(exc)}") from None
    finally:
        os.close(fd)


def nesting_depth(value: Any, stop: int) -> int:
    """How deep tables and arrays nest in `value` (a scalar is 0, `{}` is 1); counting
    stops past `stop`. Iterative: the value may be nested deeper than Python recurses."""
    deepest = 0
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop:
            return deepest
        todo.extend((child, depth + 1) for child in children)
    return deepest


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


def read_toml(path: Path | str, shown: str | None = None) -> dict[str, Any]:
    """Parse a TOML file; errors name the file (as `shown`, default show_path), line and
    column (`file:L:C: ...`)."""
    path = Path(path)
    shown = show_path(path) if shown is None else shown
    _record(path, shown)
    return _parse(path, shown)


def _record(path: Path, shown: str) -> None:
    reads = _reads.get()
    if reads is not None:
        real = resolve(path, shown)
        if real not in reads:
            reads.append(real)


def _parse(path: Path, shown: str) -> dict[str, Any]:
    """Read and parse one file: the only place a sim file's bytes become TOML."""
    try:
        text = read_limited(path, shown).decode("utf-8")
    except UnicodeDecodeError:
        raise SimError(shown, None, "not UTF-8 text; save it as UTF-8") from None
    too_deep = f"tables and arrays nest more than {MAX_NESTING} deep; flatten the file"
    try:
        data = tomllib.loads(text)
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise SimError(shown, None, too_deep) from None
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
    if nesting_depth(data, MAX_NESTING) > MAX_NESTING:
        raise SimError(shown, None, too_deep)
    return data


class TomlFiles:
    """The TOML files of one invocation, each parsed once: a later read of the same file
    (by its resolved path, as shown the same way) gets a copy of the first parse, or the
    same error. The host reads a sim for its binaries, for the builtin runner's checks
    and for what to copy to the guest; the files are parsed the first time only."""

    def __init__(self) -> None:
        self._parsed: dict[tuple[Path, str], dict[str, Any] | SimError] = {}

    def read(self, path: Path | str, shown: str | None = None) -> dict[str, Any]:
        """read_toml, from the first parse of the file when there was one."""
        path = Path(path)
        shown = show_path(path) if shown is None else shown
        try:
            real = path.resolve()
        except (OSError, RuntimeError):
            return read_toml(path, shown)  # its error says why the file cannot be read
        _record(path, shown)
        key = (real, shown)
        if key not in self._parsed:
            try:
                self._parsed[key] = _parse(path, shown)
            except SimError as err:
                self._parsed[key] = err
        found = self._parsed[key]
        if isinstance(found, SimError):
            raise found
        # A copy: what a reader does with its tables never reaches the next reader.
        return copy.deepcopy(found)


def places_near(folder: Path, rel: Path) -> list[Path]:
    """Where a relative name is looked for, in order: in `folder`, one folder up, the cwd."""
    return [folder / rel, folder.parent / rel, Path.cwd() / rel]
