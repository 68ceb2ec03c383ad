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
