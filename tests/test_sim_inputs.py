"""sim.run refuses bad input with exit code 2 and a clear message, before anything
boots (no state dir is made) and without leaving files behind."""

from __future__ import annotations

from pathlib import Path

import pytest
from vmfixtures import VmEnv, make_project, vm_env

GOOD_SIM = '[sim]\nname = "ok"\n'


@pytest.fixture
def project(tmp_path: Path) -> VmEnv:
    root = make_project(tmp_path / "p")
    (root / "sims" / "ok.toml").write_text(GOOD_SIM)
    (root / "empty").mkdir()
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_text("#!/bin/sh\n")
    return VmEnv(root, vm_env(root, name="never-booted"))


def _write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


CASES = [
    (["--file", "sims/missing.toml"], "sims/missing.toml", None),
    (["--file", "/etc/hostname"], "outside the workspace", None),
    (["--file", "empty"], "no *.toml", None),
    (["--file", "sims/ok.toml", "--binary", "tool"], "NAME:MODE:VALUE", None),
    (["--file", "sims/ok.toml", "--binary", "tool:copy:bin/tool"], "unknown mode 'copy'", None),
    (["--file", "sims/ok.toml", "--binary", ":path:bin/tool"], "empty name", None),
    (["--file", "sims/ok.toml", "--binary", "tool:path:bin"], "is a directory", None),
    (["--file", "sims/ok.toml", "--binary", "tool:path:bin/nope"], "bin/nope", None),
    (["--file", "sims/bad.toml"], "line 2", ("sims/bad.toml", '[sim]\nname = "x\n')),
    (["--file", "sims/ok.toml", "--patchbay-version", "path:bin"], "is a directory", None),
    (["--file", "sims/ok.toml", "--patchbay-version", "v1.x"], "v1.x", None),
    ([], "give at least one sim", None),
    (["--file", "sims/ok.toml", "--timeout", "5x"], "--timeout: expected a duration", None),
    (["--file", "sims/ok.toml", "--timeout", "0"], "--timeout: must be more than zero", None),
    (["--file", "sims/ok.toml", "--timeout", ""], "--timeout: expected a duration", None),
]


@pytest.mark.parametrize(("args", "message", "extra"), CASES)
def test_bad_input(project: VmEnv, args, message, extra) -> None:
    if extra:
        _write(project.project, *extra)
    out = project.invoke("sim.run", *args)
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert out.stderr.startswith("error: ")
    assert not (project.project / ".qemu-vm").exists()
    assert not (project.project / ".patchbay-work" / ".patchbay-bin").exists()


def test_same_binary_declared_differently_by_two_sims(project: VmEnv) -> None:
    _write(project.project, "sims/a.toml", GOOD_SIM + '[[binary]]\nname = "t"\npath = "bin/tool"\n')
    _write(
        project.project, "sims/b.toml", GOOD_SIM + '[[binary]]\nname = "t"\nurl = "http://x/t"\n'
    )
    out = project.invoke("sim.run", "--file", "sims/a.toml", "--file", "sims/b.toml")
    assert out.returncode == 2
    assert "sims/a.toml" in out.stderr and "sims/b.toml" in out.stderr
    assert not (project.project / ".qemu-vm").exists()


def test_the_rust_spelling_reports_the_same(project: VmEnv) -> None:
    out = project.cli("run", "sims/missing.toml")
    assert out.returncode == 2 and "sims/missing.toml" in out.stderr


def test_test_run_with_a_missing_target_says_how_to_install_it(project: VmEnv) -> None:
    out = project.invoke("test.run", "--target", "riscv64gc-unknown-linux-musl")
    assert out.returncode == 2
    assert "rustup target add riscv64gc-unknown-linux-musl" in out.stderr
    assert "--target riscv64gc-unknown-linux-gnu" in out.stderr
    assert not (project.project / ".qemu-vm").exists()


def test_test_run_with_bad_jobs(project: VmEnv) -> None:
    out = project.invoke("test.run", "--target", "x86_64-unknown-linux-gnu", "-j", "many")
    assert out.returncode == 2
    assert "--jobs: expected a positive number, got 'many'" in out.stderr
    assert not (project.project / ".qemu-vm").exists()


def test_a_pinned_runner_that_cannot_be_had_is_69_before_anything_boots(project: VmEnv) -> None:
    dead = "http://127.0.0.1:9/releases"  # nothing listens on the discard port
    out = project.invoke(
        "sim.run", "--file", "sims/ok.toml", "--patchbay-version", "v0.1.0",
        PATCHBAY_RELEASE_URL=dead,
    )  # fmt: skip
    assert out.returncode == 69, out.stderr
    assert "cannot download patchbay v0.1.0" in out.stderr
    assert not (project.project / ".qemu-vm").exists()


def test_runner_choice_from_the_environment_is_checked(project: VmEnv) -> None:
    out = project.invoke("sim.run", "--file", "sims/ok.toml", PATCHBAY_VERSION="newest")
    assert out.returncode == 2
    assert "unknown --patchbay-version 'newest'" in out.stderr
    assert not (project.project / ".qemu-vm").exists()
