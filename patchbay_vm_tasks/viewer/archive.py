"""A pushed run's archive (tar.gz), taken apart as untrusted input.

The body of `POST /api/push/{project}` comes from a CI job, or from anyone who holds the
key: it is checked whole before a byte of it is written as a file, in three passes over
the uploaded file (each decompresses it again; a 5 MB push costs milliseconds a pass):

1. `scan`: the tar headers read as raw 512-byte blocks, by this module: checksums, types,
   sizes (pax `size` records included), the end marker. Links, devices, FIFOs, sparse
   files and every type other than files and folders are refused here, and so is a
   header longer than `max_header` (the standard library reads a pax header or a GNU
   long name whole into memory: a 1 MB upload could be a 1 GB header), more members
   than `max_members` and more file data than `max_unpacked` (a gzip bomb).
2. `members`: the same file through the standard library's `tarfile`, for the names as
   tar tools mean them (ustar prefix, GNU long names, pax paths). Each must be a plain
   relative path: `..`, an absolute name, a backslash, a control character, a name that
   is not UTF-8, one too long or too deep, two members of one name, or a file where a
   folder is needed are refused. The members must be the ones pass 1 counted, with the
   same sizes, so the two parsers cannot disagree about what is in the archive.
3. `unpack`: only then, into a new folder the caller made: folders 0755, files 0644 made
   with O_EXCL|O_NOFOLLOW and written to their size, each fsynced (what the server
   answers 200 for is on the disk).

`Refused` carries the HTTP status: 413 past a size or count limit, 400 for anything
broken or not allowed.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .. import files

BLOCK = 512
ZERO_BLOCK = bytes(BLOCK)
GZIP_MAGIC = b"\x1f\x8b"
CHUNK = 256 * 1024

# Tar type flags (POSIX ustar, GNU, pax).
REGULAR = (b"0", b"\x00", b"7")
DIRECTORY = b"5"
PAX_NEXT, PAX_GLOBAL = b"x", b"g"
GNU_LONGNAME, GNU_LONGLINK = b"L", b"K"
META = (PAX_NEXT, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK)
REFUSED_TYPES = {
    b"1": "a hard link",
    b"2": "a symbolic link",
    b"3": "a character device",
    b"4": "a block device",
    b"6": "a FIFO",
    b"S": "a sparse file",
    b"V": "a volume header",
    b"M": "a multi-volume continuation",
    b"N": "an old GNU long name",
    b"D": "a GNU dump folder",
}


@dataclass(frozen=True)
class Limits:
    """What one push may hold. Sizes in bytes."""

    max_body: int = 256 * 1000**2  # the upload as sent (compressed)
    max_unpacked: int = 2 * 1000**3  # the files' data, summed
    max_members: int = 20_000  # headers of every kind
    max_header: int = 64 * 1024  # one pax header or GNU long name
    max_name: int = 1024  # characters of one member's path
    max_depth: int = 32  # folders deep


class Refused(Exception):
    """A push that is not taken: status (400, 413) and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def broken(message: str) -> Refused:
    return Refused(400, message)


def too_big(message: str) -> Refused:
    return Refused(413, message)


def _shown(name: str | bytes) -> str:
    text = name.decode("utf-8", "backslashreplace") if isinstance(name, bytes) else name
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return repr(text[:200] + ("..." if len(text) > 200 else ""))


# --------------------------------------------------------------------------- pass 1


def _number(field: bytes) -> int:
    """A header's numeric field: octal digits (NUL or space padded), or GNU's base-256
    (first byte 0x80) for big values; a negative one (0xff) is refused."""
    if field[:1] == b"\x80":
        value = 0
        for byte in field[1:]:
            value = value * 256 + byte
        return value
    if field[:1] == b"\xff":
        raise broken("the archive holds a negative number in a header")
    text = field.split(b"\x00", 1)[0].strip(b" \x00")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]{1,12}", text):
        raise broken("the archive is not a tar archive (a header's number is not octal)")
    return int(text, 8)


def _checksum_ok(block: bytes) -> bool:
    try:
        stored = _number(block[148:156])
    except Refused:
        return False
    blanked = block[:148] + b" " * 8 + block[156:]
    unsigned = sum(blanked)
    signed = sum(b - 256 if b > 127 else b for b in blanked)
    return stored in (unsigned, signed)


def _pax_records(data: bytes) -> dict[bytes, bytes]:
    """The records of a pax header (`LEN KEY=VALUE\\n` each); Refused when malformed."""
    records: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        m = re.match(rb"([0-9]{1,9}) ", data[pos:])
        if not m:
            raise broken("the archive holds a malformed pax header")
        length = int(m[1])
        record = data[pos : pos + length]
        if length < 5 or len(record) != length or not record.endswith(b"\n"):
            raise broken("the archive holds a malformed pax header")
        key, eq, value = record[m.end() : -1].partition(b"=")
        if not key or not eq:
            raise broken("the archive holds a malformed pax header")
        records[key] = value
        pos += length
    return records


class _Reader:
    """The decompressed archive, read in exact pieces; gzip's errors become Refused."""

    def __init__(self, path: Path) -> None:
        self.file = gzip.open(path, "rb")  # noqa: SIM115 (closed by close())
        self.offset = 0

    def read(self, size: int) -> bytes:
        try:
            data = self.file.read(size)
        except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as e:
            raise broken(f"the archive is not a whole gzip stream ({e})") from None
        self.offset += len(data)
        return data

    def skip(self, size: int) -> None:
        while size > 0:
            got = self.read(min(size, CHUNK))
            if not got:
                raise broken("the archive ends inside a file's data (cut short?)")
            size -= len(got)

    def close(self) -> None:
        self.file.close()


@dataclass(frozen=True)
class Scanned:
    members: list[tuple[bytes, int]]  # (type, size) of each file and folder, in order
    headers: int
    unpacked: int


def scan(path: Path, limits: Limits) -> Scanned:
    """Pass 1: the archive's headers as raw blocks (see the module's docstring)."""
    with open(path, "rb") as f:
        if f.read(2) != GZIP_MAGIC:
            raise broken("the body is not gzip data (send a tar.gz, Content-Type application/gzip)")
    reader = _Reader(path)
    try:
        return _scan(reader, limits)
    finally:
        reader.close()


def _scan(reader: _Reader, limits: Limits) -> Scanned:
    members: list[tuple[bytes, int]] = []
    headers = unpacked = 0
    pending: set[bytes] = set()  # meta headers waiting for their member
    pax_size: int | None = None
    while True:
        block = reader.read(BLOCK)
        if len(block) < BLOCK:
            if not block and headers == 0:
                raise broken("the archive is empty (no tar data in the gzip stream)")
            raise broken("the archive has no end marker (cut short, or not a tar archive)")
        if block == ZERO_BLOCK:
            if pending:
                raise broken("the archive ends after a header that names no member")
            if headers == 0:
                raise broken("the archive holds no member at all")
            _read_to_the_end(reader)
            return Scanned(members, headers, unpacked)
        if not _checksum_ok(block):
            raise broken(
                "the archive is not a tar archive (a header's checksum does not match)"
                if headers == 0
                else "the archive is broken (a header's checksum does not match)"
            )
        headers += 1
        if headers > limits.max_members:
            raise too_big(f"the archive holds more than {limits.max_members} members")
        kind = block[156:157]
        size = _number(block[124:136])
        raw_name = block[0:100].split(b"\x00", 1)[0]
        if kind in REFUSED_TYPES:
            what = REFUSED_TYPES[kind]
            raise broken(f"member {_shown(raw_name)} is {what}: only files and folders")
        if kind in META:
            if kind in pending or (kind == PAX_GLOBAL and pending):
                raise broken("the archive holds two extended headers for one member")
            if size > limits.max_header:
                raise broken(f"the archive holds an extended header of {size} bytes")
            data = reader.read(_blocks(size))
            if len(data) < size:
                raise broken("the archive ends inside an extended header")
            if kind in (PAX_NEXT, PAX_GLOBAL):
                records = _pax_records(data[:size])
                if any(k.startswith(b"GNU.sparse.") for k in records):
                    raise broken("the archive holds a sparse file: only files and folders")
                if kind == PAX_GLOBAL and {b"size", b"path", b"linkpath"} & set(records):
                    raise broken("the archive's global header sets a size or a path")
                if b"size" in records:
                    if not re.fullmatch(rb"[0-9]{1,20}", records[b"size"]):
                        raise broken("the archive holds a malformed pax size")
                    pax_size = int(records[b"size"])
            if kind != PAX_GLOBAL:
                pending.add(kind)
            continue
        if pax_size is not None:
            size = pax_size
        pending.clear()
        pax_size = None
        is_dir = kind == DIRECTORY or (kind == b"\x00" and raw_name.endswith(b"/"))
        if not is_dir and kind not in REGULAR:
            shown = kind.decode("latin-1") if kind.isascii() and kind.isprintable() else kind.hex()
            raise broken(
                f"member {_shown(raw_name)} is of tar type {shown!r}: only files and folders"
            )
        if is_dir:
            members.append((DIRECTORY, 0))
            continue
        unpacked += size
        if unpacked > limits.max_unpacked:
            raise too_big(f"the archive unpacks to more than {limits.max_unpacked} bytes")
        members.append((b"0", size))
        reader.skip(_blocks(size))


# After the end marker: the padding tar tools add (GNU tar fills a 10 kB record).
MAX_TRAILER = 1024 * 1024


def _read_to_the_end(reader: _Reader) -> None:
    """The rest of the gzip stream, read so that gzip checks its length and CRC (a body
    damaged in transit is refused, not unpacked wrong); at most MAX_TRAILER bytes."""
    left = MAX_TRAILER
    while True:
        piece = reader.read(min(CHUNK, left + 1))
        if not piece:
            return
        left -= len(piece)
        if left < 0:
            raise broken("the archive holds more than padding after its end marker")


def _blocks(size: int) -> int:
    return (size + BLOCK - 1) // BLOCK * BLOCK


# --------------------------------------------------------------------------- pass 2


@dataclass(frozen=True)
class Member:
    parts: tuple[str, ...]  # () is the archive's top folder (`./`)
    is_dir: bool
    size: int
    info: tarfile.TarInfo


def _bad_char(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF for c in text)


def member_parts(name: str, limits: Limits) -> tuple[str, ...]:
    """A member's name as path segments below the archive's top ("" and `./` are the top
    itself: ()); Refused unless it is a plain relative path."""
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        raise broken(f"member {_shown(name)} has an absolute name")
    if len(name) > limits.max_name:
        raise broken(f"member {_shown(name)} has a name longer than {limits.max_name} characters")
    if _bad_char(name):
        raise broken(f"member {_shown(name)} has a control character or bytes that are not UTF-8")
    text = name
    while text.startswith("./"):
        text = text[2:]
    text = text.rstrip("/")
    if text in ("", "."):
        return ()
    parts = tuple(text.split("/"))
    if ".." in parts:
        raise broken(f"member {_shown(name)} has '..' in its name")
    if not all(files.safe_segment(p) for p in parts):
        raise broken(f"member {_shown(name)} is not a plain relative path")
    if len(parts) > limits.max_depth:
        raise broken(f"member {_shown(name)} is more than {limits.max_depth} folders deep")
    return parts


def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:gz", errorlevel=2)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise broken(f"the archive cannot be read ({e})") from None


def _iterate(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    try:
        yield from tar
    except (tarfile.TarError, EOFError, OSError, zlib.error, UnicodeError) as e:
        raise broken(f"the archive cannot be read ({e})") from None


def _kind_of(info: tarfile.TarInfo) -> str | None:
    if info.issym() or info.islnk():
        return "a link"
    if info.ischr() or info.isblk():
        return "a device"
    if info.isfifo():
        return "a FIFO"
    if info.issparse():
        return "a sparse file"
    if not (info.isreg() or info.isdir()):
        return "of an unsupported type"
    return None


def members(path: Path, scanned: Scanned, limits: Limits) -> list[Member]:
    """Pass 2: every member by name, checked (see the module's docstring)."""
    out: list[Member] = []
    dirs: set[tuple[str, ...]] = {()}
    filenames: set[tuple[str, ...]] = set()
    with _open_tar(path) as tar:
        for info in _iterate(tar):
            kind = _kind_of(info)
            if kind is not None:
                raise broken(f"member {_shown(info.name)} is {kind}: only files and folders")
            parts = member_parts(info.name, limits)
            n = len(out)
            expected = scanned.members[n] if n < len(scanned.members) else None
            is_dir = info.isdir()
            if (
                expected is None
                or (expected[0] == DIRECTORY) != is_dir
                or (not is_dir and expected[1] != info.size)
            ):
                raise broken("the archive's headers do not agree with each other")
            for i in range(1, len(parts)):
                if parts[:i] in filenames:
                    raise broken(f"member {_shown(info.name)} lies below a file of the archive")
                dirs.add(parts[:i])  # a folder, given or not
            if is_dir:
                if parts in filenames:
                    raise broken(f"member {_shown(info.name)} is both a file and a folder")
                dirs.add(parts)
            else:
                if parts == ():
                    raise broken("a member that is a file names the archive's top folder")
                if parts in filenames or parts in dirs:
                    raise broken(f"member {_shown(info.name)} is in the archive twice")
                filenames.add(parts)
            out.append(Member(parts, is_dir, 0 if is_dir else info.size, info))
    if len(out) != len(scanned.members):
        raise broken("the archive's headers do not agree with each other")
    return out


# --------------------------------------------------------------------------- pass 3

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _make_dirs(dest: Path, parts: tuple[str, ...], made: set[tuple[str, ...]]) -> None:
    for i in range(1, len(parts) + 1):
        if parts[:i] in made:
            continue
        with contextlib.suppress(FileExistsError):
            os.mkdir(dest.joinpath(*parts[:i]), 0o755)
        made.add(parts[:i])


def unpack(path: Path, checked: list[Member], dest: Path, limits: Limits) -> tuple[int, int]:
    """Pass 3: the checked members into the empty folder dest; (files, bytes) written.
    Nothing but files and folders is made, each file created anew (never through a link)
    and fsynced, and so are the folders."""
    by_offset = {m.info.offset: m for m in checked}
    made: set[tuple[str, ...]] = {()}
    count = written = 0
    with _open_tar(path) as tar:
        for info in _iterate(tar):
            member = by_offset.get(info.offset)
            if member is None or member.parts != member_parts(info.name, limits):
                raise broken("the archive changed between two reads")
            if member.is_dir:
                _make_dirs(dest, member.parts, made)
                continue
            _make_dirs(dest, member.parts[:-1], made)
            target = dest.joinpath(*member.parts)
            fd = os.open(
                target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o644
            )
            try:
                source = tar.extractfile(info)
                left = member.size
                if source is not None:
                    while left > 0:
                        try:
                            chunk = source.read(min(CHUNK, left))
                        except (tarfile.TarError, EOFError, zlib.error) as e:
                            raise broken(f"the archive cannot be read ({e})") from None
                        if not chunk:
                            break
                        _write_all(fd, chunk)
                        left -= len(chunk)
                if left:
                    raise broken(f"member {_shown(info.name)} is cut short")
                os.fsync(fd)
            finally:
                os.close(fd)
            count += 1
            written += member.size
    for parts in sorted(made, key=len, reverse=True):
        _fsync_dir(dest.joinpath(*parts))
    return count, written


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def take_apart(path: Path, dest: Path, limits: Limits) -> tuple[int, int]:
    """All three passes: the archive at path checked whole, then unpacked into dest (an
    empty folder). Refused before anything is written into dest when it is not taken."""
    scanned = scan(path, limits)
    checked = members(path, scanned, limits)
    return unpack(path, checked, dest, limits)
