"""The builtin runner as one file: a zipapp of `simcore` and `simrunner`.

The host writes it where the Rust runner goes (`<work>/.patchbay-bin/patchbay`), so the
guest command line is the same for both (SPEC 6.6). It runs on the guest's python3,
which must be 3.11 or newer (tomllib); the entry point checks that first, in syntax
any python3 can read, and says what to do.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

from . import __version__
from .files import executable_beside

PACKAGE = Path(__file__).resolve().parent
BUNDLED = ("simcore", "simrunner")
# Exit code of the entry point when the guest's python3 is too old: the runner is
# unavailable there, as with a pinned runner that cannot be had (SPEC 9.15).
EXIT_OLD_PYTHON = 69
MIN_PYTHON = (3, 11)

ENTRY = f'''\
import sys

if sys.version_info < {MIN_PYTHON!r}:
    sys.stderr.write(
        "error: the guest's python3 is %d.%d; the builtin patchbay runner needs "
        "{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer (tomllib). Use a newer guest image (the default, "
        "Debian 13, has 3.13) or the Rust runner (--patchbay-version latest or path:FILE).\\n"
        % sys.version_info[:2]
    )
    sys.exit({EXIT_OLD_PYTHON})

from patchbay_vm_tasks.simrunner.cli import main

sys.exit(main())
'''
# The real package __init__ pulls in nothing, but the zipapp must not depend on that.
PACKAGE_INIT = (
    f'"""patchbay_vm_tasks, as bundled in the builtin runner."""\n\n__version__ = "{__version__}"\n'
)


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

        add("__main__.py", ENTRY)
        add("patchbay_vm_tasks/__init__.py", PACKAGE_INIT)
        for sub in BUNDLED:
            for path in sorted((PACKAGE / sub).rglob("*.py")):
                rel = path.relative_to(PACKAGE).as_posix()
                add(f"patchbay_vm_tasks/{rel}", path.read_text(encoding="utf-8"))
    return buf.getvalue()


def write_zipapp(dest: Path) -> Path:
    """Write the runner to dest (mode 0755) through a temp file and a rename, so a runner
    already running from dest, or a second sim.run staging at the same time, never sees
    half a file."""
    data = zipapp_bytes()
    with executable_beside(dest) as tmp:
        tmp.write_bytes(data)
    return dest
