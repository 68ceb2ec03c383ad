"""What every task shares: `--help` that never acts, turning our errors into
`invoke.Exit`, the `--` remainder, the command given from Python."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import invoke
from invoke import Exit
from invoke.parser import Argument

from ..errors import TaskError, UsageError

# Set by the `patchbay-vm` command, which knows its argv exactly.
_remainder_override: list[str] | None = None
HELP_FLAGS = ("--help", "-h")


class _Positional(Argument):
    """A positional argument that counts as given when the task's `--help` is: so
    `vm.cp --help` shows the help instead of Invoke's "did not receive required positional
    arguments". (The parser copies the context whole, so the two stay linked.)"""

    help_flag: Argument | None = None

    @property
    def value(self) -> Any:
        value = Argument.value.fget(self)
        if value is None and self.help_flag is not None and self.help_flag.value:
            return ""
        return value

    @value.setter
    def value(self, arg: Any) -> None:
        self.set_value(arg, cast=True)


class Task(invoke.Task):
    """Our tasks: `--help` or `-h` anywhere shows the task's help and does nothing else.

    Each task has a `-h/--help` flag of its own, which Invoke's parser takes before it
    fills a positional argument (`vm.cp --help`); a `--help` that Invoke gives to a flag
    taking a value (`sim.report -o --help` would write a file named `--help`) is caught
    here too. `help_name` (the dotted name) is set when the collections are made."""

    help_name: str | None = None

    def get_arguments(self, ignore_unknown_help: bool | None = None) -> list[Argument]:
        args = super().get_arguments(ignore_unknown_help=ignore_unknown_help)
        flag = Argument(
            names=("help", "h"), kind=bool, default=False, help="Show this help; run nothing."
        )
        for i, arg in enumerate(args):
            if arg.positional:
                args[i] = _Positional(
                    names=arg.names, kind=arg.kind, default=arg.default, help=arg.help,
                    positional=True, optional=arg.optional, incrementable=arg.incrementable,
                    attr_name=arg.attr_name,
                )  # fmt: skip
                args[i].help_flag = flag
        return [*args, flag]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        asked = kwargs.pop("help", False)
        values = [*args[1:], *kwargs.values()]
        if asked or any(_is_help(v) for v in values):
            print_help(self.help_name or self.name)
            return None
        return super().__call__(*args, **kwargs)


def _is_help(value: Any) -> bool:
    if isinstance(value, str):
        return value in HELP_FLAGS
    if isinstance(value, list | tuple):
        return any(isinstance(v, str) and v in HELP_FLAGS for v in value)
    return False


def task(*args: Any, **kwargs: Any) -> Any:
    """`invoke.task` making our `Task`."""
    kwargs.setdefault("klass", Task)
    return invoke.task(*args, **kwargs)


def print_help(name: str) -> None:
    """The task's help as `invoke --help NAME` prints it. (`patchbay-vm` turns every
    `--help` into its own help before a task runs: cli.translate.)"""
    from . import namespace

    binary = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "invoke"
    binary = binary if binary in ("invoke", "inv") else "invoke"
    invoke.Program(namespace=namespace(), binary=binary).run([binary, "--help", name], exit=False)


def emit(text: str, end: str = "\n") -> None:
    """Print a task's answer on stdout; a reader that went away (`vm.status | head -1`)
    ends the output, not the task (no traceback; the task's exit code stands)."""
    try:
        print(text, end=end, flush=True)
    except BrokenPipeError:
        # Python's advice: point stdout at devnull, so the flush at exit fails no more.
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def remainder(given: Sequence[str] | None = None) -> list[str]:
    """The command for the guest: `given` when a Python caller passed one (a list, as
    `vm.ssh(c, cmd=["ip", "netns", "list"])`), else the arguments after `--`, exactly
    as given on the command line.

    Invoke hands tasks only a space-joined string of the latter, which loses quoting
    (`-- sh -c 'exit 7'`), so they are read from the process argv instead.
    """
    if given:
        if isinstance(given, str):
            raise UsageError("give the command as a list of arguments, e.g. ['ip', 'a']")
        return [str(a) for a in given]
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
