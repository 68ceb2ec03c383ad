"""The README's CI recipes: the GitHub Actions workflow passes actionlint, the Makefile
drives the tasks, and the script the workflow calls runs sims in the shared guest."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from vmfixtures import REPO, VmEnv, make_project, vm_env

RECIPES = REPO / "recipes"
INVOKE = f"{sys.executable} -m invoke"


def test_workflow_passes_actionlint() -> None:
    actionlint = Path(sys.executable).parent / "actionlint"
    out = subprocess.run([str(actionlint), str(RECIPES / "github-actions.yml")],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    # The workflow's sim step is the script the VM test below runs.
    assert "bash recipes/ci-sims.sh sims/" in (RECIPES / "github-actions.yml").read_text()


def _make(project: Path, *targets: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "-f", str(RECIPES / "Makefile"), *targets, f"INVOKE={INVOKE}"],
        cwd=project,
        env={**vm_env(project, name="never-booted"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_makefile_targets_call_the_tasks(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    out = _make(project, "check", "SIMS=sims/iperf-baseline.toml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sim.check --file sims/iperf-baseline.toml" in out.stdout  # make echoes it
    assert "steps (3):" in out.stdout
    # A failing task fails the target (vm.status exits 3 when the VM is not running).
    status = _make(project, "status")
    assert status.returncode != 0 and "not running" in status.stdout
    assert not (project / ".qemu-vm").exists()


def test_ci_script_refuses_no_sims(tmp_path: Path) -> None:
    out = subprocess.run(["bash", str(RECIPES / "ci-sims.sh")], capture_output=True, text=True)
    assert out.returncode == 2 and "usage:" in out.stderr


@pytest.mark.vm
def test_ci_script_runs_sims_with_junit_and_report(vm: VmEnv) -> None:
    shutil.copytree(RECIPES, vm.project / "recipes", dirs_exist_ok=True)
    env = {"INVOKE": INVOKE, "PATCHBAY_VERSION": "builtin", "PATCHBAY_CI_KEEP_VM": "1"}
    out = vm._run(["bash", "recipes/ci-sims.sh", "sims/iperf-baseline.toml"], 900, env)
    assert out.returncode == 0, out.stdout + out.stderr
    results = vm.project / "ci-results"
    assert "<testsuite" in (results / "sims.xml").read_text()
    assert (results / "report.html").stat().st_size > 10_000
    assert (results / "run" / "iperf-baseline" / "results.json").is_file()
    # A failing sim is the script's exit code 1, and the results are still there.
    failing = vm.project / "sims" / "failing.toml"
    failing.write_text(
        '[sim]\nname = "failing"\n[[router]]\nname = "dc"\n[device.a.eth0]\ngateway = "dc"\n'
        '[[step]]\naction = "run"\ndevice = "a"\ncmd = ["false"]\n'
    )
    out = vm._run(["bash", "recipes/ci-sims.sh", "sims/failing.toml"], 900, env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "failing" in (results / "sims.xml").read_text()


@pytest.mark.vm
def test_readme_main_command_on_a_fresh_copy(tmp_path: Path) -> None:
    # The README's first command, as written, in a copy of this checkout: the user's
    # set-up script (its packages are installed here, so it only checks them; the
    # package goes into a new .venv from PyPI's dependencies), then a real sim with the
    # default settings: the cloud image cannot be downloaded here, so the guest is the
    # cached debian:trixie build, as a user without it would get after a build.
    clone = tmp_path / "clone"
    shutil.copytree(
        REPO,
        clone,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", ".qemu-vm", ".patchbay-work",
            "__pycache__", "target", "results",
        ),
    )  # fmt: skip
    clone.chmod(0o755)
    env = {k: v for k, v in vm_env(clone).items() if not k.startswith("QEMU_VM_")}
    readme = (REPO / "README.md").read_text()
    command = (
        "bash recipes/setup-debian.sh && .venv/bin/invoke sim.run --file sims/iperf-baseline.toml"
    )
    assert command in readme
    out = subprocess.run(
        ["bash", "-c", command], cwd=clone, env=env, capture_output=True, text=True, timeout=1500
    )
    try:
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert "ready: .venv/bin/invoke --list" in out.stdout
        assert "VM patchbay-vm is up after" in out.stderr
        latest = clone / ".patchbay-work" / "latest"
        assert (latest / "iperf-baseline" / "results.json").is_file()
        assert "iperf-baseline" in out.stdout  # the results table
    finally:
        subprocess.run(
            [str(clone / ".venv/bin/invoke"), "vm.destroy"], cwd=clone, env=env, timeout=300,
            capture_output=True,
        )  # fmt: skip
    assert not (clone / ".qemu-vm" / "patchbay-vm").exists()
