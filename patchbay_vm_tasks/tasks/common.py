"""What every task shares: turning our errors into `invoke.Exit`, the `--` remainder."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from invoke import Exit

from ..errors import TaskError, UsageError

# Set by the `patchbay-vm` command, which knows its argv exactly.
_remainder_override: list[str] | None = None


def remainder() -> list[str]:
    """The arguments after `--`, exactly as given.

    Invoke hands tasks only a space-joined string of them, which loses quoting
    (`-- sh -c 'exit 7'`), so read them from the process argv instead.
    """
    if _remainder_override is not None:
        return list(_remainder_override)
    argv = sys.argv
    return argv[argv.index("--") + 1 :] if "--" in argv else []


def set_remainder(args: list[str] | None) -> None:
    global _remainder_override
    _remainder_override = args


def check_output_path(value: str | None, flag: str) -> None:
    """Refuse at once (before anything boots) an output file that names a folder."""
    if value is not None and (not value or Path(value).is_dir()):
        raise UsageError(f"{flag} {value!r}: give a file name, not a folder")


def write_junit_file(write: Callable[..., Path], data: Any, out: Path) -> Path:
    """write(data, out), a failure to write said in one line. Exit 1, not 2: the run
    it reports on did happen (a folder named as the file is refused before, exit 2)."""
    try:
        return write(data, out)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise TaskError(f"cannot write the JUnit file {out}: {reason}") from None


@contextlib.contextmanager
def task_errors() -> Iterator[None]:
    """Our exceptions become a one-line (or short) message and the documented exit code."""
    try:
        yield
    except TaskError as e:
        raise Exit(f"error: {e}", code=e.exit_code) from None
