"""Guest side of the host's Ctrl-C: SIGINT to the runner started with a given run id.

Runs in the guest as root, on its python3 alone, for either runner: the host sends this
file's text as `python3 -I -S -c TEXT ENTRY`. The host starts the runner as
`env PATCHBAY_HOST_RUN_ID=<id> RUNNER ...`, so the runner and everything it starts carry
that exact environment entry, while the wrappers above it (sudo, sh -c) and this very
script carry the id only inside a longer string (SUDO_COMMAND, their command lines). A
substring search took those for the runner and could SIGINT itself before it got there.
Signalled: each carrier whose parent is not one, i.e. the runner, which stops its own
children in order and tears its lab down.

Prints one line per process signalled, `PID ARGV` (its command line as read just before the
signal, as a JSON list), so that what was signalled can be told after it has exited; exit 0,
or 1 when no process carries the entry (the runner had already ended).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys


def carriers(entry: bytes, proc: str = "/proc") -> dict[int, int]:
    """pid -> parent pid of each process whose environment holds `entry` as one entry."""
    found: dict[int, int] = {}
    for name in os.listdir(proc):
        if not name.isdigit():
            continue
        try:
            with open(f"{proc}/{name}/environ", "rb") as f:
                if entry not in f.read().split(b"\0"):
                    continue
            with open(f"{proc}/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:  # ended meanwhile, or a kernel thread
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        found[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return found


def topmost(found: dict[int, int]) -> list[int]:
    """The carriers whose parent carries nothing: the processes started with the entry."""
    return sorted(pid for pid, ppid in found.items() if ppid not in found)


def command_line(pid: int, proc: str = "/proc") -> list[str]:
    """The process's argv, or [] once it has ended (or for a kernel thread)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    if not raw:
        return []
    return [arg.decode(errors="backslashreplace") for arg in raw.removesuffix(b"\0").split(b"\0")]


def main(argv: list[str]) -> int:
    pids = topmost(carriers(argv[1].encode()))
    for pid in pids:
        args = command_line(pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        print(pid, json.dumps(args))
    return 0 if pids else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
