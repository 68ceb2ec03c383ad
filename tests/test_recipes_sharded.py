"""The sharded CI recipe (recipes/github-actions-sharded.yml): actionlint passes, and its
two shell steps do what the jobs need when run here as written: a shard's run copied out
for the artifact (a shard with no sims needs no VM), the artifacts merged into one run
with a JUnit file, a report and the summary, and the merge's exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from test_viewer_fixture import write_invocation
from vmfixtures import REPO, make_project, vm_env

WORKFLOW = REPO / "recipes" / "github-actions-sharded.yml"


def test_workflow_passes_actionlint() -> None:
    actionlint = Path(sys.executable).parent / "actionlint"
    out = subprocess.run([str(actionlint), str(WORKFLOW)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def _script(job: str, name: str, **values: str) -> str:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    (step,) = [s for s in jobs[job]["steps"] if s.get("name") == name]
    text = step["run"]
    for key, value in values.items():
        text = text.replace("${{ " + key + " }}", value)
    assert "${{" not in text, text
    return text


def _bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def _env(project: Path, bin_dir: Path) -> dict[str, str]:
    # `patchbay-vm` as the installed package's command, here from this checkout.
    bin_dir.mkdir(exist_ok=True)
    wrapper = bin_dir / "patchbay-vm"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m patchbay_vm_tasks "$@"\n')
    wrapper.chmod(0o755)
    env = vm_env(project, name="never-booted")
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def test_the_matrix_is_the_shard_count() -> None:
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert jobs["shard"]["strategy"]["matrix"]["shard"] == [1, 2, 3]
    assert jobs["merge"]["needs"] == "shard" and jobs["merge"]["if"] == "always()"
    run = _script("shard", "Run this shard's sims", **{"matrix.shard": "2",
                                                         "strategy.job-total": "3"})  # fmt: skip
    assert 'patchbay-vm run sims/ --shard "2/3"' in run


def test_shard_and_merge_steps(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")  # sims/: one sim, so shard 2 of 2 has none
    env = _env(project, tmp_path / "bin")
    # A merged run restored from the cache: its `latest` is not this shard's run.
    write_invocation(project / ".patchbay-work", "sim-260101-000000", [("old", "ping")])
    os.symlink("sim-260101-000000", project / ".patchbay-work" / "latest")
    script = _script("shard", "Run this shard's sims",
                     **{"matrix.shard": "2", "strategy.job-total": "2"})  # fmt: skip
    out = _bash(script, project, env)
    assert out.returncode == 0, out.stdout + out.stderr
    (copied,) = (project / "shard-out").iterdir()
    manifest = json.loads((copied / "manifest.json").read_text())
    assert manifest["shard"] == {"index": 2, "total": 2, "basis": "name", "sims": [],
                                 "plan": ["iperf-baseline"]}  # fmt: skip
    # No VM was booted (the step's `patchbay-vm down` leaves only a lock file behind).
    assert not list(project.glob(".qemu-vm/*/disk.qcow2"))

    # The merge job: the artifacts as download-artifact lays them out, shard 1 (which ran
    # the sim) written here as the runner and the host would have.
    merge_dir = tmp_path / "m"
    shards = merge_dir / "shards"
    (shards / "sims-shard-2").mkdir(parents=True)
    os.rename(copied, shards / "sims-shard-2" / copied.name)
    one = write_invocation(shards / "sims-shard-1", "sim-260102-000000", [("iperf-baseline",
                                                                           "iperf")])  # fmt: skip
    data = json.loads((one / "manifest.json").read_text())
    data["shard"] = {**manifest["shard"], "index": 1, "sims": ["iperf-baseline"]}
    (one / "manifest.json").write_text(json.dumps(data))
    out = _bash(_script("merge", "Merge them into one run"), merge_dir, env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert 'tests="1"' in (merge_dir / "ci-results" / "sims.xml").read_text()
    assert (merge_dir / "ci-results" / "report.html").stat().st_size > 10_000
    merged = json.loads((merge_dir / ".patchbay-work" / "latest" / "manifest.json").read_text())
    assert [s["sim"] for s in merged["simulations"]] == ["iperf-baseline"]
    assert (merge_dir / ".patchbay-work" / "latest" / "combined-results.md").is_file()
    # A missing shard fails the merge job, and the results are written all the same.
    (shards / "sims-shard-2" / copied.name / "manifest.json").unlink()
    (shards / "sims-shard-2" / copied.name / "progress.json").unlink()
    os.rename(shards / "sims-shard-2", tmp_path / "gone")
    out = _bash(_script("merge", "Merge them into one run"), merge_dir, env)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "shard(s) 2 missing" in out.stderr
