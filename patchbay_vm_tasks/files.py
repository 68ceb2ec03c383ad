"""Files in folders the guest can write, read and written safely; atomic writes.

Everything under the work dir is untrusted (SPEC 11): the guest writes /work through 9p
with `security_model=none`, so it can plant any file and any symbolic link there, and a
FIFO, a 1 GB log or JSON nested 100,000 deep as easily as a result. The host therefore

- reads a run file only by `open_in(root, parts)`: each folder below `root` is opened with
  O_NOFOLLOW|O_DIRECTORY relative to the one above (no `..`, no link followed, whatever the
  guest renames meanwhile), the file itself with O_NOFOLLOW|O_NONBLOCK, and only a regular
  file is kept (fstat), so a FIFO cannot block and a link cannot lead out;
- reads with limits: a window or a tail of a log, never all of it; JSON up to
  MAX_JSON_BYTES and MAX_JSON_DEPTH (a RecursionError becomes "not JSON");
- writes only to files it creates itself (O_EXCL|O_NOFOLLOW temp files renamed into
  place) in folders it made real (`real_dir` replaces a planted link by a folder and never
  writes into the link's target).

`root` itself is the user's choice (the work dir may be a link they made) and is trusted.

Atomic writes: a temp file beside the destination, renamed over it when whole. The temp
file is in the destination's folder, so os.replace is atomic: a reader (the guest, a later
run) never sees half a file, and a binary still running from an earlier run (ETXTBSY on
overwrite) keeps its old inode.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

# JSON run files (state.json, progress.json, combined-results.json, sim.json, ...): ours
# are kilobytes; a run with hundreds of sims stays far below.
MAX_JSON_BYTES = 16 * 1024 * 1024
# serde_json's recursion limit, which the Rust runner and server read with; ours nest 6
# deep (state.json: devices -> name -> interfaces -> ...).
MAX_JSON_DEPTH = 128
# Reads of a file are done in pieces of this size (streamed answers, copies).
CHUNK = 64 * 1024

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_BINARY = getattr(os, "O_BINARY", 0)
# Opening relative to a folder's descriptor (every POSIX host); Windows checks paths instead.
_WALK_FDS = bool(_NOFOLLOW and _DIRECTORY) and os.open in os.supports_dir_fd


class RefusedFile(OSError):
    """A run file that is not read: a link, not a regular file, a bad name, too big."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(errno.EPERM, f"{what}: {why}")
        self.why = why


def parts_of(rel: str | Sequence[str]) -> list[str]:
    """The path segments of a relative path (`a/b` or ["a", "b"]); RefusedFile for an
    empty, absolute or `..` one, or a segment holding a separator or NUL."""
    parts = rel.split("/") if isinstance(rel, str) else list(rel)
    if not parts or not all(safe_segment(p) for p in parts):
        raise RefusedFile(repr(rel), "not a plain relative path")
    return parts


def safe_segment(segment: str) -> bool:
    """One name of a file or folder and nothing more: no separator, `.`, `..` or NUL."""
    return (
        isinstance(segment, str)
        and segment not in ("", ".", "..")
        and not any(c in segment for c in "/\\\x00")
    )


def _open_dir_fd(root: Path, folders: Sequence[str]) -> int:
    """A descriptor of root/folders..., no link followed below root."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for name in folders:
            sub = os.open(name, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
    except BaseException:
        os.close(fd)
        raise
    return fd


def _check_path(root: Path, parts: Sequence[str]) -> Path:
    """Without descriptors relative to a folder: no component below root is a link (or a
    junction) and the path resolves inside root."""
    path = root
    for name in parts:
        path = path / name
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode) or getattr(st, "st_reparse_tag", 0):
            raise RefusedFile(str(path), "is a link")
    if not path.resolve().is_relative_to(root.resolve()):
        raise RefusedFile(str(path), "leads out of its folder")
    return path


def open_in(root: Path, rel: str | Sequence[str]) -> tuple[int, os.stat_result]:
    """(descriptor, fstat) of the regular file root/rel, opened for reading without
    following any link below root; the caller closes it. OSError when missing or
    unreadable, RefusedFile when a link, a FIFO, a device or a folder is there."""
    parts = parts_of(rel)
    where = f"{root}/{'/'.join(parts)}"
    if _WALK_FDS:
        dir_fd = _open_dir_fd(root, parts[:-1])
        try:
            # Looked at before opening: opening a device can have effects of its own.
            st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise RefusedFile(where, _kind(st.st_mode))
            flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC
            fd = os.open(parts[-1], flags, dir_fd=dir_fd)
        finally:
            os.close(dir_fd)
    else:
        path = _check_path(root, parts)
        fd = os.open(path, os.O_RDONLY | _BINARY | _NOFOLLOW | _NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped between the look and the open
            raise RefusedFile(where, _kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "is a link"
    if stat.S_ISDIR(mode):
        return "is a folder"
    if stat.S_ISFIFO(mode):
        return "is a FIFO"
    return "is not a regular file"


@contextlib.contextmanager
def opened(root: Path, rel: str | Sequence[str]) -> Iterator[tuple[int, os.stat_result]]:
    fd, st = open_in(root, rel)
    try:
        yield fd, st
    finally:
        os.close(fd)


def is_regular(root: Path, rel: str | Sequence[str]) -> bool:
    """Whether root/rel is a regular file reached through no link (nothing is opened)."""
    try:
        parts = parts_of(rel)
        if _WALK_FDS:
            dir_fd = _open_dir_fd(root, parts[:-1])
            try:
                st = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(dir_fd)
        else:
            st = os.lstat(_check_path(root, parts))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode)


def _read_at(fd: int, offset: int, size: int) -> bytes:
    """Up to size bytes from offset (fewer at the end of the file)."""
    os.lseek(fd, offset, os.SEEK_SET)
    pieces, left = [], size
    while left > 0:
        piece = os.read(fd, min(left, 1 << 20))
        if not piece:
            break
        pieces.append(piece)
        left -= len(piece)
    return b"".join(pieces)


def read_limited(root: Path, rel: str | Sequence[str], limit: int) -> bytes:
    """The whole file when it holds at most limit bytes, else RefusedFile."""
    with opened(root, rel) as (fd, st):
        if st.st_size > limit:
            raise RefusedFile(str(rel), f"holds {st.st_size} bytes, more than {limit} are read")
        data = _read_at(fd, 0, limit + 1)
    if len(data) > limit:  # grew since fstat
        raise RefusedFile(str(rel), f"holds more than {limit} bytes")
    return data


def read_window(root: Path, rel: str | Sequence[str], offset: int, limit: int) -> tuple[bytes, int]:
    """(at most limit bytes from offset, the file's size): empty past the end."""
    with opened(root, rel) as (fd, st):
        if offset >= st.st_size or limit <= 0:
            return b"", st.st_size
        return _read_at(fd, offset, min(limit, st.st_size - offset)), st.st_size


def read_tail(root: Path, rel: str | Sequence[str], limit: int) -> tuple[bytes, int]:
    """(the last limit bytes, the file's size)."""
    with opened(root, rel) as (fd, st):
        start = max(0, st.st_size - limit)
        return _read_at(fd, start, st.st_size - start), st.st_size


class FileStream:
    """length bytes of an open file from offset, chunk by chunk (fewer when the file
    shrank meanwhile), for answers streamed with a Content-Length. It owns the
    descriptor: close() (also after a partial iteration, or none) closes it."""

    def __init__(self, fd: int, offset: int, length: int, chunk: int = CHUNK) -> None:
        self.fd: int | None = fd
        self.offset, self.length, self.chunk = offset, length, chunk

    def __iter__(self) -> Iterator[bytes]:
        try:
            if self.fd is None:
                return
            os.lseek(self.fd, self.offset, os.SEEK_SET)
            left = self.length
            while left > 0:
                piece = os.read(self.fd, min(self.chunk, left))
                if not piece:
                    return
                left -= len(piece)
                yield piece
        finally:
            self.close()

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)


def loads_json(data: bytes | str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads with a nesting limit: ValueError for broken JSON, NaN/Infinity (which
    serde_json, the Rust runner's reader, refuses too) and nesting over max_depth."""

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        value = json.loads(data, parse_constant=no_constant)
    except RecursionError:
        raise ValueError(f"JSON nested deeper than {max_depth}") from None
    if json_depth(value, max_depth) > max_depth:
        raise ValueError(f"JSON nested deeper than {max_depth}")
    return value


def json_depth(value: Any, stop: int = MAX_JSON_DEPTH) -> int:
    """How deep lists and objects nest in value (a scalar: 0), counted up to stop + 1."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            if deepest > stop:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


def read_json(root: Path, rel: str | Sequence[str], limit: int = MAX_JSON_BYTES) -> Any:
    """The parsed run file, or None when it is missing, half-written, not a regular file
    reached without links, bigger than limit or nested too deep."""
    try:
        return loads_json(read_limited(root, rel, limit).decode("utf-8"))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return None


# --------------------------------------------------------------------------- writes


def real_dir(root: Path, rel: str | Sequence[str]) -> Path:
    """root/rel as real folders, made where missing. A link (or a file) found where one of
    them belongs was not made by us: it is removed, never followed, and a folder made in
    its place; its target is left as it was. root itself is taken as it is."""
    path = root
    root.mkdir(parents=True, exist_ok=True)
    for name in parts_of(rel):
        path = path / name
        for _attempt in range(3):  # the guest may race us; it cannot win every time
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path)
                continue
            if stat.S_ISDIR(st.st_mode) and not getattr(st, "st_reparse_tag", 0):
                break
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        else:
            raise RefusedFile(str(path), "keeps changing under us; cannot make it a folder")
    return path


def set_dir_mode(path: Path, mode: int) -> None:
    """chmod of the folder at path through a descriptor opened without following a link
    (a chmod by name follows one the guest swapped in meanwhile)."""
    if not (_NOFOLLOW and _DIRECTORY and hasattr(os, "fchmod")):
        os.chmod(path, mode)  # Windows: only the read-only bit, on a path checked real
        return
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    try:
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def drop_link(path: Path) -> None:
    """Remove a link at path (only the link; its target stays)."""
    with contextlib.suppress(FileNotFoundError):
        if path.is_symlink():
            path.unlink()


def _temp_fd(folder: Path, name: str) -> tuple[int, Path]:
    """A new file (mode 0600, created exclusively, never through a link) in folder."""
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
    return fd, Path(temp)


@contextlib.contextmanager
def atomic_file(
    path: Path, mode: int = 0o644, times_ns: tuple[int, int] | None = None
) -> Iterator[BinaryIO]:
    """A new file to write, which becomes path when the block ends without an error.

    It is a temp file beside path created exclusively with mode 0600 (a secret is never
    readable by others, not even for a moment; no leftover or planted file of that name
    is written through), given `mode` (and times) through its descriptor, then renamed
    onto path: a link at path is replaced, not written through. On any error it is
    removed and path is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_fd(path.parent, path.name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            _set_mode(f.fileno(), tmp, mode)
            if times_ns is not None:
                os.utime(f.fileno() if os.utime in os.supports_fd else tmp, ns=times_ns)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_chunks(
    path: Path,
    chunks: Iterable[bytes],
    mode: int = 0o644,
    times_ns: tuple[int, int] | None = None,
) -> Path:
    """Write chunks to path through atomic_file."""
    with atomic_file(path, mode, times_ns) as f:
        for chunk in chunks:
            f.write(chunk)
    return path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> Path:
    """write_chunks of one piece of data."""
    return write_chunks(path, [data], mode)


def _set_mode(fd: int, path: Path, mode: int) -> None:
    if hasattr(os, "fchmod"):
        os.fchmod(fd, mode)
    else:  # Windows: chmod knows only read-only there
        os.chmod(path, mode)


@contextlib.contextmanager
def temp_beside(dest: Path) -> Iterator[Path]:
    """A temp file in dest's folder (created, with dest's folder, if missing).

    The temp file is created exclusively (mkstemp: O_EXCL|O_NOFOLLOW, mode 0600), so no
    leftover or planted file of that name is written through. The caller fills it and
    os.replace()s it onto dest. It is removed on any failure, so an interrupted write
    leaves nothing half-written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_fd(dest.parent, dest.name)
    os.close(fd)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def executable_beside(dest: Path) -> Iterator[Path]:
    """A temp file for the caller to fill; when the block ends without an error it
    becomes dest with mode 0755."""
    with temp_beside(dest) as tmp:
        yield tmp
        # Through a descriptor opened without following a link: the name is in a folder
        # the guest can write, and chmod by name would follow one put there meanwhile.
        fd = os.open(tmp, os.O_RDONLY | _NOFOLLOW | _BINARY)
        try:
            _set_mode(fd, tmp, 0o755)
        finally:
            os.close(fd)
        os.replace(tmp, dest)


def copy_executable(src: Path, dest: Path, *, keep_times: bool = False) -> Path:
    """Copy src (a file the caller trusts) to dest with mode 0755 through a temp file and
    a rename.

    keep_times: give dest src's access and modification times, so that a later
    size-and-mtime comparison can tell the copy is current.
    """
    with open(src, "rb") as f:
        st = os.fstat(f.fileno())
        pieces = iter(lambda: f.read(1 << 20), b"")
        times = (st.st_atime_ns, st.st_mtime_ns) if keep_times else None
        write_chunks(dest, pieces, 0o755, times)
    return dest


def copy_fd_executable(fd: int, st: os.stat_result, dest: Path) -> Path:
    """copy_executable from an open descriptor (a file opened with open_in), keeping its
    times; the descriptor is left open."""
    stream = FileStream(os.dup(fd), 0, st.st_size)
    try:
        return write_chunks(dest, stream, 0o755, (st.st_atime_ns, st.st_mtime_ns))
    finally:
        stream.close()
