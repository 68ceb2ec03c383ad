"""Output to the user: one stderr console, progress bars, spinners.

stdout is kept for what a task is asked for (status JSON, command output);
everything about progress goes to stderr.
"""

from __future__ import annotations

import functools
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress
    from rich.status import Status


# Made on first use: importing rich costs about 0.07 s, which a warm `vm.up` that prints
# one line to stdout does not need to pay.
@functools.cache
def console() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# soft_wrap: a message stays one line in logs, whatever the terminal width.
def say(message: str) -> None:
    console().print(message, markup=False, soft_wrap=True)


def warn(message: str) -> None:
    try:
        console().print(f"WARNING: {message}", style="bold yellow", markup=False, soft_wrap=True)
    except Exception:  # a broken terminal must not hide the warning
        print(f"WARNING: {message}", file=sys.stderr)


def spinner(message: str) -> Status:
    """A spinner with `message` on stderr while the `with` block runs."""
    return console().status(message)


def download_progress() -> Progress:
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )


def count(n: int, noun: str) -> str:
    """`1 CPU`, `2 CPUs`: a number and its noun, in agreement."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
