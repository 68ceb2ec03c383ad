"""The builtin runner as one file: a zipapp of `simcore` and `simrunner`.

The host writes it where the Rust runner goes (`<work>/.patchbay-bin/patchbay`), so the
guest command line is the same for both (SPEC 6.6). It runs on the guest's python3,
which must be 3.11 or newer (tomllib); the entry point checks that first, in syntax
any python3 can read, and says what to do.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from .. import __version__, packagedata
from ..files import executable_beside

PACKAGE = packagedata.path()
BUNDLED = packagedata.GUEST_PACKAGES
# Exit code of the entry point when the guest's python3 is too old: the runner is
# unavailable there, as with a pinned runner that cannot be had (SPEC 9.15).
EXIT_OLD_PYTHON = 69
MIN_PYTHON = (3, 11)

ENTRY = """\
import sys

if sys.version_info < %(min_python)r:
    sys.stderr.write(
        "error: the guest's python3 is %%d.%%d; the builtin patchbay runner needs "
        "%(min_text)s or newer (tomllib). Use a newer guest image (the default, Debian 13, "
        "has 3.13) or the Rust runner (--patchbay-version latest or path:FILE).\\n"
        %% sys.version_info[:2]
    )
    sys.exit(%(exit_code)d)

import os

# zipimport compiles every module on every start (seconds under TCG): unpack once per
# build into a cache folder, where Python keeps the compiled files.
BUILD = %(build)r


def _unpacked(archive):
    root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                        "patchbay-runner")
    dest = os.path.join(root, BUILD)
    if os.path.isdir(dest):
        return dest
    import zipfile  # only on the first start of a build: it costs 0.3 s under TCG

    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        tmp = "%%s.%%d.tmp" %% (dest, os.getpid())
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(tmp, [n for n in zf.namelist() if n.startswith("patchbay_vm_tasks/")])
        try:
            os.rename(tmp, dest)
        except OSError:  # another runner unpacked the same build first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
        return dest
    except OSError:
        return None  # no writable cache: run from the archive, only slower


_dest = _unpacked(sys.path[0])
if _dest:
    sys.path.insert(0, _dest)

from patchbay_vm_tasks.simrunner.cli import main

sys.exit(main())
"""
# The real package __init__ pulls in nothing, but the zipapp must not depend on that.
PACKAGE_INIT = (
    f'"""patchbay_vm_tasks, as bundled in the builtin runner."""\n\n__version__ = "{__version__}"\n'
)


def entry_source(build: str) -> str:
    """The zipapp's __main__.py for a build id (a digest of the bundled sources)."""
    return ENTRY % {
        "min_python": MIN_PYTHON,
        "min_text": f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}",
        "exit_code": EXIT_OLD_PYTHON,
        "build": build,
    }


def zipapp_bytes() -> bytes:
    """The runner zipapp: shebang, entry point, the two bundled packages' sources.

    Deterministic (fixed timestamps, sorted), so the same sources give the same bytes.
    """
    buf = io.BytesIO()
    buf.write(b"#!/usr/bin/env python3\n")
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:

        def add(name: str, text: str) -> None:
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, text)

        files = {"patchbay_vm_tasks/__init__.py": PACKAGE_INIT}
        for sub in BUNDLED:
            for path in sorted((PACKAGE / sub).rglob("*.py")):
                rel = path.relative_to(PACKAGE).as_posix()
                files[f"patchbay_vm_tasks/{rel}"] = path.read_text(encoding="utf-8")
        digest = hashlib.sha256()
        for name, text in sorted(files.items()):
            digest.update(f"{name}\0{text}\0".encode())
        add("__main__.py", entry_source(digest.hexdigest()[:16]))
        for name, text in sorted(files.items()):
            add(name, text)
    return buf.getvalue()


def write_zipapp(dest: Path) -> Path:
    """Write the runner to dest (mode 0755) through a temp file and a rename, so a runner
    already running from dest, or a second sim.run staging at the same time, never sees
    half a file. The same bytes already there are kept as they are (their mtime too), so
    copying to a guest without shares (QEMU_VM_FS=none) sees nothing new to send."""
    data = zipapp_bytes()
    try:
        if dest.read_bytes() == data and os.access(dest, os.X_OK):
            return dest
    except OSError:
        pass
    with executable_beside(dest) as tmp:
        tmp.write_bytes(data)
    return dest
