"""Atomic file writes: a temp file beside the destination, renamed over it when whole.

The temp file is in the destination's folder, so os.replace is atomic: a reader (the
guest, a later run) never sees half a file, and a binary still running from an earlier
run (ETXTBSY on overwrite) keeps its old inode.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def temp_beside(dest: Path) -> Iterator[Path]:
    """A temp file in dest's folder (created, with dest's folder, if missing).

    The caller fills it and os.replace()s it onto dest. It is removed on any failure, so
    an interrupted write leaves nothing half-written.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    os.close(fd)
    tmp = Path(name)
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
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)


def copy_executable(src: Path, dest: Path, *, keep_times: bool = False) -> Path:
    """Copy src to dest with mode 0755 through a temp file and a rename.

    keep_times: give dest src's access and modification times, so that a later
    size-and-mtime comparison can tell the copy is current.
    """
    with executable_beside(dest) as tmp:
        shutil.copyfile(src, tmp)
        if keep_times:
            st = os.stat(src)
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
    return dest
