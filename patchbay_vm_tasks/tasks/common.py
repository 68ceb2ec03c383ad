"""What every task shares: turning our errors into `invoke.Exit`, the `--` remainder."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from invoke import Exit

from ..errors import TaskError

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


@contextlib.contextmanager
def task_errors() -> Iterator[None]:
    """Our exceptions become a one-line (or short) message and the documented exit code."""
    try:
        yield
    except TaskError as e:
        raise Exit(f"error: {e}", code=e.exit_code) from None
