"""`--help` never acts (issue 22): every task and every `patchbay-vm` command shows its
help for `--help`/`-h` wherever it stands, exits 0, writes nothing and touches no VM;
each task's line in `invoke --list` is a whole sentence."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from patchbay_vm_tasks import cli
from patchbay_vm_tasks.tasks import namespace

REPO = Path(__file__).resolve().parents[1]
TASKS = sorted(namespace().task_names)
# Where Invoke would hand `--help` to something else: a positional argument (vm.cp,
# sim.exec, sim.inspect), a flag that takes a value (sim.report -w, sim.run --file).
TRICKY = [
    ["vm.cp", "--help"],
    ["vm.cp", "a.txt", "-h"],
    ["sim.exec", "--help"],
    ["sim.exec", "client", "--help", "--", "ping"],
    ["sim.inspect", "-h"],
    ["sim.report", "-w", "WORK", "--help"],
    ["sim.run", "--file", "--help"],
    ["vm.ssh", "--help", "--", "true"],
]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    project = tmp_path / "p"
    project.mkdir()
    (project / "tasks.py").write_text((REPO / "tasks.py").read_text())
    return project


def _run(project: Path, argv: list[str]) -> subprocess.CompletedProcess:
    env = {"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "NO_COLOR": "1",
           "COLUMNS": "100", "QEMU_VM_NAME": "helptest"}  # fmt: skip
    return subprocess.run(
        argv, cwd=project, env=env, capture_output=True, text=True, timeout=60,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _nothing_done(project: Path) -> None:
    assert sorted(p.name for p in project.iterdir()) == ["tasks.py"], list(project.iterdir())


@pytest.mark.parametrize(
    "argv",
    [[t, "--help"] for t in TASKS] + [[t, "-h"] for t in TASKS] + TRICKY,
    ids=" ".join,
)
def test_every_task_shows_help_and_does_nothing(project: Path, argv: list[str]) -> None:
    out = _run(project, [sys.executable, "-m", "invoke", *argv])
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("Usage: ") and f" {argv[0]} " in out.stdout.splitlines()[0]
    assert "Options:" in out.stdout and "-h, --help" in out.stdout
    _nothing_done(project)


@pytest.mark.parametrize(
    "argv",
    [[c, "--help"] for c in cli.TASK_OF]
    + [["report", "-o", "x.html", "-h"], ["cp", "a", "guest:b", "--help"], ["run-in", "n", "-h"]],
    ids=" ".join,
)
def test_every_patchbay_vm_command_shows_its_help(project: Path, argv: list[str]) -> None:
    out = _run(project, [sys.executable, "-m", "patchbay_vm_tasks", *argv])
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith(f"Usage: patchbay-vm {argv[0]}"), first
    assert f"(runs `invoke {cli.TASK_OF[argv[0]]}`)" in first
    _nothing_done(project)


def test_help_where_a_value_belongs_is_refused_by_invoke_and_does_nothing(project: Path):
    # Invoke's parser takes `--help` for the task's flag and finds -o without its value:
    # its own usage error (exit 1, Invoke's code for every command line it cannot
    # parse; README says so); no file named --help, no report.
    out = _run(project, [sys.executable, "-m", "invoke", "sim.report", "-o", "--help"])
    assert out.returncode == 1 and "needed value" in out.stderr
    _nothing_done(project)


def test_version_and_usage(project: Path) -> None:
    from patchbay_vm_tasks import __version__

    out = _run(project, [sys.executable, "-m", "patchbay_vm_tasks", "--version"])
    assert out.returncode == 0 and out.stdout == f"patchbay-vm {__version__} (patchbay-vm-tasks)\n"
    usage = _run(project, [sys.executable, "-m", "patchbay_vm_tasks", "--help"]).stdout
    assert "down [--poweroff]" in usage and "report -o FILE.html" in usage
    for command in cli.TASK_OF:
        assert f"\n  {command}" in usage, command
    _nothing_done(project)


def test_each_task_line_in_the_list_is_a_whole_sentence() -> None:
    ns = namespace()
    for name in TASKS:
        first = (ns[name].__doc__ or "").strip().splitlines()[0]
        assert first.endswith("."), (name, first)
        assert len(first) <= 100, (name, first)
