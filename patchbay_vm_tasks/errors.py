"""Errors that tasks turn into `invoke.Exit` with a message and an exit code."""

from __future__ import annotations

# sysexits.h: EX_USAGE is 64, but the contract (SPEC 9.15) asks for 2 on bad input,
# like argparse and invoke, and 69 (EX_UNAVAILABLE) when the VM cannot be had.
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 69


class TaskError(Exception):
    """A failure with a message meant for the user and the exit code to end with."""

    exit_code = 1


class UsageError(TaskError):
    """Bad input: a flag, a path, a file the user gave us. Nothing was started."""

    exit_code = EXIT_USAGE


class VmUnavailable(TaskError):
    """The VM could not be booted, reached or kept alive."""

    exit_code = EXIT_UNAVAILABLE
