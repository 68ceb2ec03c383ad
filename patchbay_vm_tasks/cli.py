"""`patchbay-vm`: the Rust tool's command line, translated onto the same Invoke tasks.

patchbay-vm up [--recreate]        -> vm.up
patchbay-vm down|status|cleanup    -> vm.down|vm.status|vm.cleanup
patchbay-vm ssh [--] CMD...        -> vm.ssh -- CMD...
patchbay-vm ssh-config|list|destroy|cp ...  -> vm.ssh-config|vm.list|vm.destroy|vm.cp ...
patchbay-vm run SIM... [flags]     -> sim.run --file SIM... [flags]
patchbay-vm check SIM...           -> sim.check --file SIM... (host only, no VM)
patchbay-vm inspect SIM            -> sim.inspect --file SIM
patchbay-vm run-in NODE -- CMD...  -> sim.exec --node NODE -- CMD...
patchbay-vm serve [OUTDIR] [flags] -> sim.serve [--work-dir OUTDIR] [flags]
patchbay-vm push URL [flags]       -> sim.push URL [flags]
patchbay-vm merge DIR... -o DIR    -> sim.merge --from DIR... -o DIR
patchbay-vm report [flags]         -> sim.report [flags]
patchbay-vm compare [BASE] [HEAD] [flags]   -> sim.compare [--base BASE] [--head HEAD] [flags]
patchbay-vm test [FILTER] [flags] [-- ARGS]  -> test.run [FILTER] [flags] -- ARGS
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Iterator
from pathlib import Path

from invoke import Exit, Program
from invoke.parser import ParseError

from . import __version__
from .errors import EXIT_USAGE
from .tasks import namespace
from .tasks.common import set_remainder

# patchbay-vm's commands and the tasks they run (for `COMMAND --help`).
TASK_OF = {
    "up": "vm.up", "down": "vm.down", "status": "vm.status", "cleanup": "vm.cleanup",
    "ssh": "vm.ssh", "ssh-config": "vm.ssh-config", "cp": "vm.cp", "list": "vm.list",
    "destroy": "vm.destroy", "run": "sim.run", "check": "sim.check", "inspect": "sim.inspect",
    "run-in": "sim.exec", "serve": "sim.serve", "report": "sim.report", "test": "test.run",
    "compare": "sim.compare", "merge": "sim.merge", "push": "sim.push",
}  # fmt: skip
COMMAND_OF = {task: command for command, task in TASK_OF.items()}

SIMPLE = {
    "up": "vm.up",
    "down": "vm.down",
    "status": "vm.status",
    "cleanup": "vm.cleanup",
    # Ours, beyond the Rust tool's commands.
    "ssh-config": "vm.ssh-config",
    "cp": "vm.cp",
    "list": "vm.list",
    "destroy": "vm.destroy",
}
# Flags that take a value, per command: everything else without one is positional.
RUN_VALUE_FLAGS = {
    "--work-dir", "--binary", "--patchbay-version", "--timeout", "--bind", "--junit",
    "--repeat", "--jobs", "--shard",
}  # fmt: skip
SERVE_VALUE_FLAGS = {
    "--work-dir", "--bind", "--api-key", "--data-dir", "--retention", "--max-push",
}  # fmt: skip
PUSH_VALUE_FLAGS = {
    "--project", "--work-dir", "--invocation", "--run-dir", "--api-key", "--branch",
    "--commit", "--pr", "--pr-url", "--title", "--base-branch", "--threshold",
}  # fmt: skip
MERGE_VALUE_FLAGS = {"-o", "--output", "--junit", "--report"}
COMPARE_VALUE_FLAGS = {"--work-dir", "--threshold", "--base", "--head"}
TEST_VALUE_FLAGS = {
    "--target", "--package", "-p", "--test", "--jobs", "-j", "--features", "-F", "--timeout",
    "--junit", "--repeat",
}  # fmt: skip

USAGE = """usage: patchbay-vm <command> [args]   (patchbay-vm COMMAND --help: one command)

commands:
  up [--recreate] [--refresh]
                           boot the VM, or reuse the running one
  down [--poweroff]        stop the VM, saving it (the next up resumes it in seconds);
                           --poweroff shuts it down instead
  status [--json]          show the VM's state (exit 3 when not running)
  cleanup                  remove stale files and helpers of a dead VM
  ssh [-- CMD ARGS...]     run a command in the guest; no command: a shell
  ssh-config               print an OpenSSH Host block for the running VM
  cp SRC DST               copy a file to or from guest:PATH
  list [--json]            the VMs of this project and their state
  destroy [--name NAME]    stop a VM and delete its state dir
  run SIM... [flags]       run sims in the guest (see `patchbay-vm run --help`)
  check SIM...             read sims on the host and print their expanded plans
  inspect SIM              build a sim's lab in the guest and keep it up (Ctrl-C ends it)
  run-in NODE -- CMD...    run a command in a node of the inspected lab
  serve [OUTDIR] [--testdir] [--bind HOST:PORT] [--open]
                           a results viewer over the work dir (--testdir: the labs that
                           Rust tests wrote, <work dir>/binaries/tests/testdir-current)
  serve --accept-push [--api-key KEY] [--data-dir DIR] [--retention SIZE]
                           a results server for a team: CI pushes runs to it
                           (PATCHBAY_API_KEY holds the key; --data-dir alone: read only)
  push URL --project P [--testdir] [--run-dir DIR]
                           push the latest run to a results server, print its URL
  merge DIR... -o DIR [--junit FILE] [--report FILE]
                           the runs of sim shards (run --shard K/N) as one run
  report -o FILE.html      one self-contained HTML report of the latest run
  compare [BASE] [HEAD] [--threshold METRIC=-N%]... [--json]
                           compare two runs per sim and step (default: latest against
                           the newest earlier run of the same sims)
  test [FILTER] [flags] [-- ARGS]
                           build Rust tests and run them in the guest

Settings come from QEMU_VM_* variables and the `vm:` section of invoke.yaml.
`patchbay-vm --version` says which version this is.
"""


def synopsis(command: str) -> str:
    """The command's line of USAGE (`up [--recreate] [--refresh]`), for its help."""
    lines = USAGE.split("commands:\n", 1)[1].splitlines()
    for line in lines:
        words = line.split()
        if words and words[0] == command:
            text = line.strip()
            # The synopsis ends where the description starts (two spaces or more).
            return text.split("  ", 1)[0]
    return command


def split_positionals(args: list[str], value_flags: set[str]) -> tuple[list[str], list[str]]:
    """(positional args, flag args) of `args`, knowing which flags take a value."""
    positionals, flags = [], []
    it = iter(args)
    for arg in it:
        if arg.startswith("-") and arg != "-":
            flags.append(arg)
            if arg in value_flags:
                flags.append(next(it, ""))
        else:
            positionals.append(arg)
    return positionals, flags


def translate(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """(Invoke argv after the program name, the `--` remainder) for a patchbay-vm argv."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        return [], None
    command, rest = argv[0], argv[1:]
    after: list[str] | None = None
    if "--" in rest:
        i = rest.index("--")
        rest, after = rest[:i], rest[i + 1 :]
    task = TASK_OF.get(command)
    if task and ("--help" in rest or "-h" in rest):
        return ["--help", task], None  # help wherever it stands, and nothing else
    if command in SIMPLE:
        return [SIMPLE[command], *rest], None
    if command == "ssh":
        # `ssh -- CMD` as the guide writes it; `ssh CMD` works too.
        return ["vm.ssh"], (after if after is not None else rest)
    if command == "run":
        sims, flags = split_positionals(rest, RUN_VALUE_FLAGS)
        return ["sim.run", *[x for sim in sims for x in ("--file", sim)], *flags], None
    if command == "check":
        sims, flags = split_positionals(rest, set())
        return ["sim.check", *[x for sim in sims for x in ("--file", sim)], *flags], None
    if command == "inspect":
        if not rest:
            raise SystemExit("patchbay-vm inspect: give the SIM whose lab to build")
        if len(rest) != 1:
            raise SystemExit(f"patchbay-vm inspect: one SIM, got {rest}")
        return ["sim.inspect", "--file", rest[0]], None
    if command == "run-in":
        if not rest:
            raise SystemExit("patchbay-vm run-in: give the NODE: run-in NODE -- CMD ARGS")
        if len(rest) != 1:
            raise SystemExit(f"patchbay-vm run-in: one NODE, got {rest}")
        if not after:
            raise SystemExit(
                f"patchbay-vm run-in: give the command after --: run-in {rest[0]} -- CMD ARGS"
            )
        return ["sim.exec", "--node", rest[0]], after
    if command == "serve":
        dirs, flags = split_positionals(rest, SERVE_VALUE_FLAGS)
        if len(dirs) > 1:
            raise SystemExit(f"patchbay-vm serve: one OUTDIR at most, got {dirs}")
        return ["sim.serve", *[x for d in dirs for x in ("--work-dir", d)], *flags], None
    if command == "report":
        return ["sim.report", *rest], None
    if command == "push":
        urls, flags = split_positionals(rest, PUSH_VALUE_FLAGS)
        if len(urls) != 1:
            raise SystemExit(f"patchbay-vm push: give the server's URL once, got {urls}")
        return ["sim.push", *urls, *flags], None
    if command == "merge":
        dirs, flags = split_positionals(rest, MERGE_VALUE_FLAGS)
        return ["sim.merge", *[x for d in dirs for x in ("--from", d)], *flags], None
    if command == "compare":
        dirs, flags = split_positionals(rest, COMPARE_VALUE_FLAGS)
        if len(dirs) > 2:
            raise SystemExit(f"patchbay-vm compare: BASE and HEAD at most, got {dirs}")
        flags_of = ("--base", "--head")[: len(dirs)]
        named = [x for flag, d in zip(flags_of, dirs, strict=True) for x in (flag, d)]
        return ["sim.compare", *named, *flags], None
    if command == "test":
        positionals, flags = split_positionals(rest, TEST_VALUE_FLAGS)
        if len(positionals) > 1:
            raise SystemExit(f"patchbay-vm test: one FILTER at most, got {positionals}")
        return ["test.run", *[x for f in positionals for x in ("--filter", f)], *flags], after or []
    raise SystemExit(f"patchbay-vm: unknown command {command!r}\n\n{USAGE}")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["--version"], ["-V"], ["version"]):
        print(f"patchbay-vm {__version__} (patchbay-vm-tasks)")
        return
    try:
        invoke_argv, remainder = translate(argv)
    except SystemExit as e:
        print(e.code, file=sys.stderr)
        sys.exit(EXIT_USAGE)
    if not invoke_argv:
        print(USAGE)
        return
    set_remainder(remainder)
    program = _Program(namespace=namespace(), name="patchbay-vm", binary="patchbay-vm")
    program.run(["patchbay-vm", *invoke_argv])


PROJECT_MARKERS = ("invoke.yaml", "invoke.yml", "invoke.json", "tasks.py")


@contextlib.contextmanager
def _usage_exit() -> Iterator[None]:
    try:
        yield
    except ParseError as e:
        raise Exit(f"patchbay-vm: {e}", code=EXIT_USAGE) from None


def project_root(start: Path) -> Path | None:
    """The nearest folder from `start` upwards with an invoke.yaml or a tasks.py: where
    `invoke` would find the project, so both commands agree on config and state."""
    for folder in (start, *start.parents):
        if any((folder / name).is_file() for name in PROJECT_MARKERS):
            return folder
    return None


class _Program(Program):
    """Invoke's Program with a namespace given loads no project config by itself; load the
    project's invoke.yaml as `invoke` would, and keep the VM's state in that project.

    A command line Invoke cannot parse (a flag without its value, an unknown flag) ends
    with its one-line message and exit 2, as every other usage error (Invoke says 1)."""

    def parse_core(self, argv: list[str] | None) -> None:
        with _usage_exit():
            super().parse_core(argv)

    def parse_tasks(self) -> None:
        with _usage_exit():
            super().parse_tasks()

    def print_task_help(self, name: str) -> None:
        """A command's help in this command's spelling: its usage line from USAGE, then
        Invoke's docstring and options of the task it runs."""
        command = COMMAND_OF.get(name, name)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            super().print_task_help(name)
        _usage, _, rest = out.getvalue().partition("\n")
        print(f"Usage: patchbay-vm {synopsis(command)}    (runs `invoke {name}`)")
        print(rest, end="")

    def update_config(self, merge: bool = True) -> None:
        super().update_config(merge=False)
        project = project_root(Path.cwd())
        if project is not None:
            self.config.set_project_location(str(project))
            self.config.load_project(merge=False)
        self.config.merge()
        # The collection's `vm` defaults arrive later; a modification merges over them.
        if project is not None and not (self.config.get("vm") or {}).get("project_dir"):
            self.config["vm"] = {"project_dir": str(project)}
