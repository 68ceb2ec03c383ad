"""`patchbay-vm`: the Rust tool's command line, mapped onto the Invoke tasks."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from patchbay_vm_tasks import cli


@pytest.mark.parametrize(
    ("argv", "invoke_argv", "remainder"),
    [
        (["up"], ["vm.up"], None),
        (["up", "--recreate"], ["vm.up", "--recreate"], None),
        (["down"], ["vm.down"], None),
        (["status", "--json"], ["vm.status", "--json"], None),
        (["cleanup"], ["vm.cleanup"], None),
        (["ssh", "--", "ip", "netns", "list"], ["vm.ssh"], ["ip", "netns", "list"]),
        (["ssh", "nft", "list", "ruleset"], ["vm.ssh"], ["nft", "list", "ruleset"]),
        (["ssh"], ["vm.ssh"], []),
        (["run", "a.toml"], ["sim.run", "--file", "a.toml"], None),
        (
            ["run", "a.toml", "--binary", "x:path:./x", "dir", "--verbose", "--work-dir", "w"],
            ["sim.run", "--file", "a.toml", "--file", "dir",
             "--binary", "x:path:./x", "--verbose", "--work-dir", "w"],
            None,
        ),
        (
            ["run", "s.toml", "--patchbay-version", "v0.10.0"],
            ["sim.run", "--file", "s.toml", "--patchbay-version", "v0.10.0"],
            None,
        ),
        (
            ["run", "s.toml", "--timeout", "90s", "--junit", "r.xml", "--open"],
            ["sim.run", "--file", "s.toml", "--timeout", "90s", "--junit", "r.xml", "--open"],
            None,
        ),
        (["inspect", "s.toml"], ["sim.inspect", "--file", "s.toml"], None),
        (["run-in", "client", "--", "ping", "-c1", "x"], ["sim.exec", "--node", "client"],
         ["ping", "-c1", "x"]),
        (["serve"], ["sim.serve"], None),
        (["serve", "out", "--bind", "127.0.0.1:9000", "--open"],
         ["sim.serve", "--work-dir", "out", "--bind", "127.0.0.1:9000", "--open"], None),
        (["report", "-o", "r.html"], ["sim.report", "-o", "r.html"], None),
        (["test"], ["test.run"], []),
        (
            ["test", "netns", "-p", "patchbay", "--release", "--", "--test-threads=4"],
            ["test.run", "--filter", "netns", "-p", "patchbay", "--release"],
            ["--test-threads=4"],
        ),
        (["run", "--help"], ["--help", "sim.run"], None),
        # --help wherever it stands, for every command: its help and nothing else.
        *[
            ([command, *before, flag], ["--help", task], None)
            for command, task in cli.TASK_OF.items()
            for before, flag in (([], "--help"), (["x"], "-h"), (["-o", "y"], "--help"))
        ],
        (["ssh", "--", "ls", "--help"], ["vm.ssh"], ["ls", "--help"]),  # the guest's, after --
        ([], [], None),
        (["--help"], [], None),
    ],
)  # fmt: skip
def test_translate(argv, invoke_argv, remainder) -> None:
    assert cli.translate(argv) == (invoke_argv, remainder)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["frobnicate"], "unknown command 'frobnicate'"),
        (["test", "a", "b"], "one FILTER at most"),
        (["inspect", "a.toml", "b.toml"], "patchbay-vm inspect: one SIM"),
        (["run-in", "client"], "give the command after --: run-in client -- CMD ARGS"),
        (["run-in"], "patchbay-vm run-in: give the NODE"),
        (["inspect"], "patchbay-vm inspect: give the SIM"),
        (["run-in", "a", "b", "--", "true"], "patchbay-vm run-in: one NODE"),
    ],
)
def test_bad_command_lines_exit_2(argv, message) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "patchbay_vm_tasks", *argv], capture_output=True, text=True
    )
    assert out.returncode == 2
    assert message in out.stderr


def test_help_lists_the_commands() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "patchbay_vm_tasks", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for command in ("up", "down", "status", "cleanup", "ssh", "run", "test"):
        assert f"\n  {command} " in out.stdout


def test_every_task_and_flag_has_help() -> None:
    from patchbay_vm_tasks.tasks import namespace

    ns = namespace()
    for name in ns.task_names:
        task = ns[name]
        assert (task.__doc__ or "").strip(), f"{name} has no docstring"
        params = list(inspect.signature(task.body).parameters)[1:]  # after the context
        for param in params:
            assert param in task.help, f"{name}: --{param} has no help"


def test_project_root_is_where_invoke_would_look(tmp_path) -> None:
    (tmp_path / "invoke.yaml").write_text("vm: {name: x}\n")
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert cli.project_root(deep) == tmp_path
    (tmp_path / "a" / "tasks.py").write_text("")
    assert cli.project_root(deep) == tmp_path / "a"
